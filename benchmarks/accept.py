"""How worker processes should share one port: measured, not guessed.

    python3 -m benchmarks.accept                 # both models, 2 workers, no load run
    python3 -m benchmarks.accept --load 5        # also 5 s of wrk -c50 per model

Two ways for N processes to accept on one port:

``reuseport``  each worker opens its own socket with SO_REUSEPORT; the kernel hashes every new
               connection to one of the sockets' accept queues.
``shared``     the master opens one listening socket and every worker inherits it; a
               connection waits in the one queue until whichever worker calls accept() first
               (what the router does).

The workers here are minimal uvloop HTTP responders (one small response per request, keep-alive),
so that only the accept model differs. Three measurements:

1. **spread**: 200 connections, opened one after another, one request each: how many each
   worker answered.
2. **hung worker**: worker 0 is stopped with SIGSTOP (a hung process: its sockets stay open),
   then 100 fresh connections each send one request and wait up to 1 s: how many got no
   answer. Then worker 0 is killed (SIGKILL, as a watchdog would): what became of those.
3. **load** (``--load S``): ``wrk -t1 -c50 -dS`` against the port, keep-alive and with a new
   connection per request: requests/s.

A third model is measured beside them, ``shared-one``: one shared socket, each worker accepting
one connection per wake-up (the others, woken too, take the next ones): it balances bursts of
new connections, at the cost of a task per accepted connection. docs/workers.md has the numbers
and the choice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

RESPONDER = r"""
import asyncio, os, socket, sys
import uvloop

index, fd, mode, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
body = b"%d" % index
answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

class Responder(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(answer * data.count(b"\r\n\r\n"))

async def main():
    loop = asyncio.get_running_loop()
    if mode.startswith("shared"):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    if mode == "shared-one":
        # One accept per wake-up: the other workers, woken too, take the next ones.
        def ready():
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return
            loop.create_task(loop.connect_accepted_socket(Responder, conn))
        loop.add_reader(sock.fileno(), ready)
    else:
        await loop.create_server(Responder, sock=sock, backlog=2048)
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


class Workers:
    """N responder processes on one port, in one of the two models."""

    def __init__(self, mode: str, n: int) -> None:
        self.mode = mode
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if mode == "reuseport":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind(("127.0.0.1", 0))  # held, never listening: names the port
        else:
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> "Workers":
        fd = self.sock.fileno()
        for i in range(self.n):
            p = subprocess.Popen([sys.executable, "-c", RESPONDER, str(i), str(fd), self.mode,
                                  str(self.port)], pass_fds=[fd], stdout=subprocess.PIPE)
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
            self.procs.append(p)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.sock.close()


async def one_request(port: int, timeout: float) -> str:
    """The answering worker's index, "none" (no answer within ``timeout``), "reset"."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return "refused"
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        return (await reader.readexactly(length)).decode()
    except asyncio.TimeoutError:
        return "none"
    except (OSError, asyncio.IncompleteReadError):
        return "reset"
    finally:
        writer.close()


async def spread(mode: str, n: int) -> Counter[str]:
    with Workers(mode, n) as w:
        return Counter([await one_request(w.port, 2.0) for _ in range(200)])


async def hung(mode: str, n: int) -> tuple[Counter[str], Counter[str]]:
    """(outcomes within 1 s with worker 0 stopped, outcomes of those after it was killed)."""
    with Workers(mode, n) as w:
        w.procs[0].send_signal(signal.SIGSTOP)
        tasks = [asyncio.ensure_future(one_request(w.port, 1.0)) for _ in range(100)]
        # The same requests, watched past the kill: do the stranded ones end, and how.
        later = [asyncio.ensure_future(one_request(w.port, 5.0)) for _ in range(100)]
        first = Counter(await asyncio.gather(*tasks))
        await asyncio.sleep(0.2)
        w.procs[0].kill()
        w.procs[0].wait()
        after = Counter(await asyncio.gather(*later))
        return first, after


def load(mode: str, n: int, seconds: int, close: bool = False) -> float | None:
    """Requests/s of ``wrk -t1 -c50`` (None without wrk); ``close``: a new connection per
    request."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with Workers(mode, n) as w:
        extra = ["-H", "Connection: close"] if close else []
        out = subprocess.run([wrk, "-t1", "-c50", f"-d{seconds}s", *extra,
                              f"http://127.0.0.1:{w.port}/"],
                             capture_output=True, text=True, timeout=seconds + 30).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


async def burst(mode: str, n: int, conns: int = 50) -> Counter[str]:
    """``conns`` connections opened at once (as wrk does at its start), one request each."""
    with Workers(mode, n) as w:
        return Counter(await asyncio.gather(*(one_request(w.port, 2.0) for _ in range(conns))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--load", type=int, default=0, metavar="S", help="seconds of wrk per model")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.workers} workers, Linux {os.uname().release}")
    for mode in ("reuseport", "shared", "shared-one"):
        seq = asyncio.run(spread(mode, args.workers))
        at_once = asyncio.run(burst(mode, args.workers))
        t0 = time.monotonic()
        first, after = asyncio.run(hung(mode, args.workers))
        took = time.monotonic() - t0
        print(f"\n{mode}:")
        print(f"  spread, 200 sequential connections: {dict(sorted(seq.items()))}")
        print(f"  spread, 50 connections at once:     {dict(sorted(at_once.items()))}")
        print(f"  worker 0 stopped, 100 new connections, answered within 1 s: "
              f"{dict(sorted(first.items()))}")
        print(f"  the same, watched past SIGKILL of worker 0 (5 s): {dict(sorted(after.items()))}"
              f"  [{took:.1f} s]")
        if args.load:
            for close, what in ((False, f"wrk -t1 -c50 -d{args.load}s"),
                                (True, "the same, a new connection per request")):
                rps = load(mode, args.workers, args.load, close)
                print(f"  {what}: " + ("wrk not installed" if rps is None else f"{rps:,.0f} requests/s"))


if __name__ == "__main__":
    main()
