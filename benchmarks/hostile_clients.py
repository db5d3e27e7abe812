"""Clients that try to make a proxy hold memory: a helper process of benchmarks/memory.py.

    python3 -m benchmarks.hostile_clients --port 8080 --attack pipeline --count 200

Opens ``--count`` connections to 127.0.0.1:PORT and on each sends ``--bytes`` bytes without
ever reading:

``pipeline``  small pipelined ``GET`` requests, back to back;
``fields``    one request head that never ends: ``a:b`` header fields, five bytes each;
``unread``    pipelined ``GET /64k``: responses it never reads (a slow reader at its worst).

Sending stops on a connection when all is sent, when the proxy closes it, or when the proxy
stops reading it (nothing more accepted for ``--stall`` seconds: its buffers are full). It
prints

    SENT <connections> <bytes sent> <connections the proxy closed> <seconds taken>

and then waits until a line arrives on stdin, stdin closes, or ``--hold`` seconds pass; closes
every connection, prints ``CLOSED`` and exits. Standard library only; loopback only.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time

from .common import raise_nofile
from .idle_clients import hold_then_close


def payload(attack: str, size: int, host: str) -> bytes:
    if attack in ("pipeline", "unread"):
        path = "/small" if attack == "pipeline" else "/64k"
        one = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        return one * (size // len(one) + 1)
    head = f"GET /small HTTP/1.1\r\nHost: {host}\r\n".encode()
    return head + b"a:b\r\n" * ((size - len(head)) // 5 + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.hostile_clients")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--attack", choices=("pipeline", "fields", "unread"), required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--bytes", type=int, default=256 * 1024)
    parser.add_argument("--host", default="bench.local")
    parser.add_argument("--stall", type=float, default=2.0,
                        help="stop sending on a connection that accepted nothing this long")
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--hold", type=float, default=600.0)
    args = parser.parse_args(argv)
    raise_nofile(args.count + 100)
    data = payload(args.attack, args.bytes, args.host)[:args.bytes]
    socks: list[socket.socket] = []
    for _ in range(args.count):
        s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    sent = {s.fileno(): 0 for s in socks}
    last = {s.fileno(): time.monotonic() for s in socks}
    closed = 0
    start = time.monotonic()
    pending = list(socks)
    while pending and time.monotonic() - start < args.deadline:
        _, writable, _ = select.select([], pending, [], 0.2)
        now = time.monotonic()
        for s in writable:
            fd = s.fileno()
            try:
                n = s.send(data[sent[fd]:sent[fd] + 65536])
            except BlockingIOError:
                continue
            except OSError:  # the proxy closed it (reset, broken pipe)
                closed += 1
                pending.remove(s)
                continue
            sent[fd] += n
            last[fd] = now
            if sent[fd] >= len(data):
                pending.remove(s)
        for s in list(pending):
            if now - last[s.fileno()] > args.stall:
                pending.remove(s)  # the proxy stopped reading it
    took = time.monotonic() - start
    print(f"SENT {len(socks)} {sum(sent.values())} {closed} {took:.2f}", flush=True)
    hold_then_close(socks, args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
