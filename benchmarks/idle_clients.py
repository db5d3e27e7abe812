"""Hold many idle keep-alive client connections open: a helper process of benchmarks/memory.py.

    python3 -m benchmarks.idle_clients --port 8080 --count 10000 [--host bench.local]

Opens ``--count`` connections to 127.0.0.1:PORT one after the other; on each it sends one
complete ``GET`` and reads the whole response (so the proxy holds it as a real keep-alive client
connection that has served a request, not a half-open one), then leaves it idle. It prints

    OPEN <connections held> <failed> <seconds taken> [<the first failure>]

and then waits until a line arrives on stdin, stdin closes, or ``--hold`` seconds pass; closes
every connection, prints ``CLOSED`` and exits. Its soft open-file limit is raised to the hard
limit first. Standard library only; loopback only.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time

from .common import raise_nofile

CONNECT_TIMEOUT_S = 5.0
MAX_FAILED = 100  # stop early after this many failures: the proxy refuses, more tries won't help


def one(port: int, request: bytes) -> socket.socket:
    """Connect, send one request, read its whole response; return the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
    try:
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("response head over 64 KiB")
        head, _, body = buf.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        if not status_line.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"answered {status_line[:60]!r}")
        length = None
        for line in lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() == b"connection" and b"close" in value.lower():
                raise ConnectionError("the proxy closes the connection after the response")
        if length is None:
            raise ConnectionError("no Content-Length in the response")
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the response body")
            body += chunk
        return sock
    except BaseException:
        sock.close()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.idle_clients")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--host", default="bench.local")
    parser.add_argument("--path", default="/small")
    parser.add_argument("--hold", type=float, default=600.0,
                        help="close everything after this many seconds at the latest")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="stop opening connections after this many seconds")
    args = parser.parse_args(argv)
    soft, hard = raise_nofile(args.count + 100)
    if soft < args.count + 20:
        print(f"ERROR open-file limit {soft} (hard {hard}) is too low for {args.count} "
              "connections", flush=True)
        return 2
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n"
               "User-Agent: idle-clients\r\n\r\n").encode()
    held: list[socket.socket] = []
    failed = 0
    first_error = ""
    start = time.monotonic()
    for _ in range(args.count):
        if time.monotonic() - start > args.deadline or failed >= MAX_FAILED:
            break
        try:
            held.append(one(args.port, request))
        except (OSError, ValueError) as exc:
            failed += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    took = time.monotonic() - start
    # One line: the harness reads it with a deadline (select), a second one could sit unseen
    # in its reader's buffer.
    print(f"OPEN {len(held)} {failed} {took:.2f} {first_error}".rstrip(), flush=True)
    hold_then_close(held, args.hold)
    return 0


def hold_then_close(socks: list[socket.socket], hold: float) -> None:
    """Keep ``socks`` open until told (a line or EOF on stdin) or ``hold`` seconds pass;
    close them and say so."""
    ready, _, _ = select.select([sys.stdin], [], [], hold)
    if ready:
        sys.stdin.readline()
    for sock in socks:
        sock.close()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    sys.exit(main())
