"""A fault-injecting HTTP/1.1 backend for the reliability scenarios.

It speaks just enough HTTP/1.1 (httptools request parser, keep-alive, Content-Length and
chunked request bodies) to be a real backend, records every request it reads, and misbehaves
on demand. Faults are chosen in two ways:

* by path: ``/fault/<kind>[/<arg>]`` applies ``kind`` to that request (used by the hostile
  corpus and by single-request tests);
* by queue: ``server.inject(kind, n)`` applies ``kind`` to the next ``n`` requests whatever
  their path (used under load, so the number injected is exact).

Kinds:

=============  =====================================================================================
``ok``         ``200``, body ``<name>\\n``
``delay``      sleep ``arg`` seconds (default 0.5), then ``ok``
``silence``    read the request, never answer, keep the connection open
``malformed``  answer with a malformed status line (``HTTP/1.1 2OO OK``)
``reset``      read the request, then reset the connection (RST, SO_LINGER 0) before any byte
``midbody``    headers announcing 1000 bytes, 100 of them, then a reset
``drop``       read the request and close (FIN) without answering, as a backend whose idle
               keep-alive timer fires just as the request arrives: it never handled it
=============  =====================================================================================

``close_after=N`` makes every connection close silently (no ``Connection: close``) right after
its N-th response, as backends with a keep-alive request cap or a short idle timeout do.

A request counts in ``handled`` when the backend acted on it (answered, or at least began to);
``drop`` requests count only in ``dropped``. ``ids`` collects the ``X-Test-Id`` header of every
handled request, so a test can prove that no request reached a backend twice.
"""

from __future__ import annotations

import asyncio
import argparse
import collections
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import httptools

KINDS = ("ok", "delay", "silence", "malformed", "reset", "midbody", "drop")


@dataclass
class Seen:
    """One request as the backend read it."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    fault: str

    def header(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]


@dataclass
class FaultServer:
    name: str = "fault"
    close_after: int = 0  # 0: keep connections open
    delay: float = 0.0  # every "ok" answer waits this long
    log_fd: int | None = None  # "METHOD X-Test-Id" per handled request, written unbuffered
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    dropped: int = 0
    dropped_seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    _queue: collections.deque[str] = field(default_factory=collections.deque)
    _server: asyncio.base_events.Server | None = None
    _conns: set[Any] = field(default_factory=set)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def handled(self) -> int:
        return len(self.seen)

    def ids(self) -> list[bytes]:
        return [i for s in self.seen for i in s.header("x-test-id")]

    def inject(self, kind: str, n: int = 1) -> None:
        if kind.split("/")[0] not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {KINDS}")
        self._queue.extend([kind] * n)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def start(self, port: int = 0) -> "FaultServer":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in list(self._conns):
                c.abort()
            await self._server.wait_closed()
            self._server = None

    def kill(self) -> None:
        """As SIGKILL would: every connection reset, the port closed."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in list(self._conns):
            c.abort(rst=True)


class _Conn(asyncio.Protocol):
    def __init__(self, srv: FaultServer) -> None:
        self.srv = srv
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.answered = 0
        self.busy = False
        self.pending: collections.deque[Seen] = collections.deque()
        self.closed = False

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.srv.connections += 1
        self.srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()  # type: ignore[union-attr]

    # httptools
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.decode("latin-1")
        queue = self.srv._queue
        kind = ""
        # A drop models a backend closing an idle keep-alive connection as the request
        # arrives: only a connection that has served before can be idle.
        if queue and (queue[0] != "drop" or self.answered):
            kind = queue.popleft()
        if not kind and path.startswith("/fault/"):
            kind = path[len("/fault/"):].split("?")[0]
        kind = kind or "ok"
        method = self.parser.get_method().decode()
        seen = Seen(method, path, self.headers, b"".join(self.body), kind)
        self.pending.append(seen)
        if not self.busy:
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        self.busy = True
        try:
            while self.pending and not self.closed:
                seen = self.pending.popleft()
                if not await self._answer(seen):
                    return
        finally:
            self.busy = False

    async def _answer(self, seen: Seen) -> bool:
        srv = self.srv
        kind, _, arg = seen.fault.partition("/")
        if kind not in KINDS:
            kind = "ok"
        if kind == "drop":
            srv.dropped += 1
            srv.dropped_seen.append(seen)
            srv.faults[kind] += 1
            self.transport.close()  # type: ignore[union-attr]
            return False
        srv.seen.append(seen)
        if srv.log_fd is not None:
            tid = b",".join(seen.header("x-test-id")) or b"-"
            os.write(srv.log_fd, seen.method.encode() + b" " + tid + b"\n")
        if kind != "ok":
            srv.faults[kind] += 1
        if kind == "delay":
            await asyncio.sleep(float(arg or 0.5))
        elif kind == "silence":
            return False
        elif kind == "malformed":
            self._write(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")
            return False
        elif kind == "reset":
            self.abort(rst=True)
            return False
        elif kind == "midbody":
            self._write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await asyncio.sleep(0.05)  # the part of the body sent reaches the router first
            self.abort(rst=True)
            return False
        if srv.delay:
            await asyncio.sleep(srv.delay)
            if self.closed:
                return False
        body = srv.name.encode() + b"\n"
        self.answered += 1
        last = srv.close_after and self.answered >= srv.close_after
        self._write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %b\r\n\r\n%b"
                    % (len(body), srv.name.encode(), body))
        if last or not self.parser.should_keep_alive():
            self.transport.close()  # type: ignore[union-attr]
            return False
        return True

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self, rst: bool = False) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        if rst:
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        t.abort()


def main() -> None:
    """Run one as its own process (to be killed with SIGKILL): prints its port, then serves."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="fault")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--log")
    args = ap.parse_args()

    async def run() -> None:
        srv = FaultServer(args.name, delay=args.delay)
        if args.log:
            srv.log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        await srv.start(args.port)
        print(srv.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
