"""What an idle keep-alive client connection holds in the router, allocation by allocation.

    python3 -m benchmarks.idle_trace [--count 2000] [--frames 6] [--top 25]

The router's data plane (``router.process.dataplane.DataPlane``, uvloop, the real
``ClientConnection`` over loopback) runs in this process under ``tracemalloc``; a backend and
the clients (``benchmarks/idle_clients.py``: one request each, then idle) run in processes of
their own, so that what is traced between two snapshots is what the router allocated for the
connections. Prints the bytes per connection, in all and grouped by traceback (the frames are
Python's only: run it on plain Python sources, ``make clean``-style, to see the router's own
lines; compiled, the router's allocations show as the uvloop or httptools call that made them).

What tracemalloc does not see (libuv's and glibc's own ``malloc``, the kernel's socket
buffers) is in the RSS growth that benchmarks/memory.py measures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import subprocess
import sys
import tracemalloc
from collections import Counter
from dataclasses import dataclass

# A backend that answers every request head with a two-byte body (keep-alive).
BACKEND = r"""
import asyncio, sys
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while b"\r\n\r\n" in self.buf:
            _, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    print(s.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@dataclass
class Trace:
    count: int
    traced: int  # bytes traced in all, growth over the connections
    blocks: int  # blocks (allocations) alive, growth
    groups: list[tuple[int, int, str]]  # (bytes, blocks, where), largest first
    sizes: list[tuple[int, int]]  # (size of a block, how many more of that size), most first

    @property
    def per_conn(self) -> float:
        return self.traced / self.count


def _config(backend_port: int) -> object:
    from router.config import config_from_dict

    return config_from_dict({
        "listen": "127.0.0.1:0",
        "limits": {"max_connections": 20000},
        "timeouts": {"client_idle": "300s"},
        "apps": {"bench": {"routes": ["bench.local"], "services": {
            "blue": {"weight": 100, "backends": [f"127.0.0.1:{backend_port}"]}}}},
    })


async def _helper_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 300)).decode().strip()


async def _open_idle(port: int, count: int) -> asyncio.subprocess.Process:
    """The helper holding ``count`` idle connections (each served one request)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.idle_clients", "--port", str(port), "--count",
        str(count), "--hold", "300", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = await _helper_line(proc)
    if not line.startswith("OPEN ") or int(line.split()[1]) != count:
        raise RuntimeError(f"idle_clients: {line}")
    return proc


async def _close(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"close\n")
    await proc.stdin.drain()
    await proc.wait()


async def measure(count: int, frames: int = 6, rest_s: float = 30.0) -> Trace:
    """Open ``count`` idle connections to a data plane in this process; what they hold once
    each has rested and been parked (``router.dataplane.client.REST_AFTER``,
    ``router.dataplane.parking``: waited for, ``rest_s`` at most)."""
    from router.dataplane.health import Health
    from router.dataplane.parking import ParkedConnection
    from router.process.dataplane import DataPlane

    backend = subprocess.Popen([sys.executable, "-c", BACKEND], stdout=subprocess.PIPE, text=True)
    try:
        assert backend.stdout is not None
        config = _config(int(backend.stdout.readline()))
        loop = asyncio.get_running_loop()
        health = Health(lambda: None, config.passive_health, loop)  # type: ignore[attr-defined]
        plane = DataPlane(config, b"k" * 32, config.apps, 1, health)  # type: ignore[attr-defined]
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        port = sock.getsockname()[1]
        await plane.serve([sock])
        # Warm-up: the backend connection, the connection set's table, the loop's free lists.
        await _close(await _open_idle(port, min(count, 500)))
        while plane.ctx.connections:
            await asyncio.sleep(0.01)
        tracemalloc.start(frames)
        gc.collect()
        before = tracemalloc.take_snapshot()
        size0, _ = tracemalloc.get_traced_memory()
        helper = await _open_idle(port, count)
        waited = loop.time() + rest_s
        while any(not isinstance(c, ParkedConnection) for c in plane.ctx.connections) \
                and loop.time() < waited:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # the transports of the last parked, closed on later turns
        gc.collect()
        after = tracemalloc.take_snapshot()
        size1, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await _close(helper)
        plane.stop_accepting()
        sock.close()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__),
                   tracemalloc.Filter(False, asyncio.subprocess.__file__)]
        stats = after.filter_traces(filters).compare_to(before.filter_traces(filters),
                                                        "traceback")
        groups = []
        for st in stats:
            if st.size_diff <= 0:
                continue
            where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno}"
                               for f in reversed(st.traceback))
            groups.append((st.size_diff, st.count_diff, where))
        groups.sort(reverse=True)
        sizes = Counter(t.size for t in after.traces)
        sizes.subtract(Counter(t.size for t in before.traces))
        return Trace(count, size1 - size0, sum(s.count_diff for s in stats), groups,
                     [(size, n) for size, n in sizes.most_common() if n >= count // 2])
    finally:
        backend.kill()
        backend.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.idle_trace")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    import uvloop

    import router

    trace = uvloop.run(measure(args.count, args.frames))
    print(f"{'compiled' if router.compiled() else 'plain Python'}: {trace.count} idle "
          f"connections, {trace.per_conn:.0f} bytes traced each, "
          f"{trace.blocks / trace.count:.1f} blocks each")
    for size, blocks, where in trace.groups[:args.top]:
        print(f"{size / trace.count:8.1f} B {blocks / trace.count:5.2f} blk  {where}")
    print("blocks by size (per connection): " + ", ".join(
        f"{n / trace.count:.2f} x {size} B" for size, n in trace.sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
