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

    python3 -m benchmarks.idle_trace --rss [--count 10000] [--clients 4]

does not trace: it opens the connections from ``--clients`` processes at once (a burst: the
faster they come, the more are open with their transports before the first are parked) and
prints, once all are parked and again after they closed, the RSS growth of this process per
connection and where it is: glibc's heap, other anonymous memory, and CPython's small-object
allocator (``sys._debugmallocstats()``: its arenas, empty pools, free blocks in pools in use).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import socket
import subprocess
import sys
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from typing import Any

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


async def _plane(count: int) -> tuple[subprocess.Popen[str], Any, socket.socket]:
    """A backend process and a data plane in this process serving it on a listening socket,
    warmed up by ``count`` idle connections (at most 500) opened and closed."""
    from router.dataplane.health import Health
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
        sock.listen(4096)
        await plane.serve([sock])
        # Warm-up: the backend connection, the connection set's table, the loop's free lists.
        await _close(await _open_idle(sock.getsockname()[1], min(count, 500)))
        while plane.ctx.connections:
            await asyncio.sleep(0.01)
    except BaseException:
        backend.kill()
        backend.wait()
        raise
    return backend, plane, sock


async def _all_parked(plane: Any, rest_s: float) -> None:
    """Until every connection is parked (``rest_s`` at most), and the transports of the last
    ones closed (a later loop turn)."""
    from router.dataplane.parking import ParkedConnection

    loop = asyncio.get_running_loop()
    waited = loop.time() + rest_s
    while any(not isinstance(c, ParkedConnection) for c in plane.ctx.connections) \
            and loop.time() < waited:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)


async def measure(count: int, frames: int = 6, rest_s: float = 30.0) -> Trace:
    """Open ``count`` idle connections to a data plane in this process; what they hold once
    each has rested and been parked (``router.dataplane.client.REST_AFTER``,
    ``router.dataplane.parking``: waited for, ``rest_s`` at most)."""
    backend, plane, sock = await _plane(count)
    port = sock.getsockname()[1]
    try:
        tracemalloc.start(frames)
        gc.collect()
        before = tracemalloc.take_snapshot()
        size0, _ = tracemalloc.get_traced_memory()
        helper = await _open_idle(port, count)
        await _all_parked(plane, rest_s)
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


def _anon_kib() -> tuple[int, int]:
    """(KiB resident in glibc's heap, KiB resident in other anonymous mappings: CPython's arenas,
    glibc's large blocks) of this process."""
    kib = {"[heap]": 0, "": 0}
    name = None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts[0].endswith(":"):  # a mapping's first line: its name, if any, last
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:" and name in kib:
                kib[name] += int(parts[1])
    return kib["[heap]"], kib[""]


def _pymalloc() -> dict[str, int]:
    """Bytes of CPython's small-object allocator: its arenas, its empty pools, the free blocks
    of its pools in use (``sys._debugmallocstats()``, which writes to the C stderr: a pipe
    here, its few KiB fit)."""
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    os.close(w)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    text = os.read(r, 1 << 20).decode()
    os.close(r)
    found = {}
    for key, pattern in (("arenas", r"(\d+) arenas \* (\d+) bytes/arena"),
                         ("empty pools", r"(\d+) unused pools \* (\d+) bytes"),
                         ("free blocks", r"# bytes in available blocks\s*=\s*([\d,]+)")):
        m = re.search(pattern, text)
        if m:
            nums = [int(g.replace(",", "")) for g in m.groups()]
            found[key] = nums[0] * (nums[1] if len(nums) > 1 else 1)
    return found


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def measure_rss(count: int, clients: int, settle_s: float = 2.0) -> list[str]:
    """Open ``count`` idle connections from ``clients`` processes at once to a data plane in
    this process; the RSS growth per connection once all are parked and after they closed,
    and where it is."""
    backend, plane, sock = await _plane(count)
    port = sock.getsockname()[1]
    lines: list[str] = []

    def reading(what: str) -> None:
        heap, anon = _anon_kib()
        pools = _pymalloc()
        grown = _rss_kib() - rss0
        lines.append(
            f"{what}: RSS +{grown:,} KiB, {grown * 1024 / count:,.0f} bytes a connection "
            f"(glibc's heap {heap - heap0:+,} KiB, other anonymous {anon - anon0:+,} KiB); "
            f"pymalloc: " + ", ".join(f"{k} {v / 2**20:.1f} MiB ({v - pools0.get(k, 0):+,})"
                                      for k, v in pools.items()))

    try:
        gc.collect()
        rss0, (heap0, anon0), pools0 = _rss_kib(), _anon_kib(), _pymalloc()
        loop = asyncio.get_running_loop()
        started = loop.time()
        helpers = await asyncio.gather(*(_open_idle(port, count // clients)
                                         for _ in range(clients)))
        count = count // clients * clients
        lines.append(f"{count:,} connections opened in {loop.time() - started:.1f} s by "
                     f"{clients} clients at once")
        await _all_parked(plane, 30.0)
        await asyncio.sleep(settle_s)
        reading("all parked")
        for helper in helpers:
            await _close(helper)
        await asyncio.sleep(settle_s)
        reading("closed")
        plane.stop_accepting()
        sock.close()
        return lines
    finally:
        backend.kill()
        backend.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.idle_trace")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rss", action="store_true",
                        help="no tracing: the RSS growth of a burst of connections, and where")
    parser.add_argument("--clients", type=int, default=4,
                        help="--rss: processes opening the connections at once")
    args = parser.parse_args(argv)
    import uvloop

    import router

    if args.rss:
        from .common import raise_nofile

        raise_nofile(args.count + 1000)
        for line in uvloop.run(measure_rss(args.count, args.clients)):
            print(line)
        return 0

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
