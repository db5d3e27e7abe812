"""Idle keep-alive connections to backends, per backend address, and the buffer they read into.

One ``UpstreamPool`` per process: ``get`` lends an idle connection to a backend address,
``connect`` opens a new one, ``put`` takes one back when it may serve another request, and
idle connections are closed after ``IDLE_TIMEOUT``. router.dataplane.upstream reads responses.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Final, cast

from .upstream import UpstreamConnection, UpstreamRequest

# Idle connections kept per backend address. nginx's `keepalive 64` style cap: enough for a
# busy worker, small enough that a removed backend does not keep thousands of sockets.
MAX_IDLE_PER_BACKEND: Final = 256
# Close pooled connections idle this long: below the common backend keep-alive timeouts
# (nginx 75 s, Node.js 5 s is the awkward one, so reuse also tolerates a closed connection).
IDLE_TIMEOUT: Final = 30.0
# The buffer backend connections read long bodies into (upstream.BUFFERED_BODY), of the size
# uvloop reads with.
READ_BUFFER: Final = 262144


# Opens a backend connection for (pool, key, host, port); the pool's default dials TCP.
Opener = Callable[["UpstreamPool", str, str, int], Awaitable[UpstreamConnection]]


class UpstreamPool:
    """Idle keep-alive connections per backend address, most recently used first.

    ``opener`` replaces the TCP dial (the tests open connections in memory this way)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float,
                 opener: Opener | None = None) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.opener = opener
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False
        self.read_buf = bytearray(READ_BUFFER)  # what backend connections read into
        self.read_view = memoryview(self.read_buf)

    def lend(self, req: UpstreamRequest) -> None:
        """Views of the read buffer were written to ``req``'s client: if its transport keeps
        some unsent, the next reads go to a new buffer (the transport keeps the old alive)."""
        if req.unsent():
            self.read_buf = bytearray(READ_BUFFER)
            self.read_view = memoryview(self.read_buf)

    def get(self, key: str) -> UpstreamConnection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def connect(self, key: str, host: str, port: int) -> UpstreamConnection:
        """A new connection; raises OSError or TimeoutError."""
        if self.opener is not None:
            return await self.opener(self, key, host, port)
        async with asyncio.timeout(self.connect_timeout):
            _, proto = await self.loop.create_connection(
                cast("Callable[[], asyncio.Protocol]", lambda: UpstreamConnection(self, key)),
                host, port)
        return cast(UpstreamConnection, proto)

    def put(self, conn: UpstreamConnection, now: float) -> None:
        if self.closed:
            conn.close()
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn.idle_since = now
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(IDLE_TIMEOUT / 2, self._sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        conns = self._idle.get(conn.key)
        if conns:
            try:
                conns.remove(conn)
            except ValueError:
                pass

    def close_idle(self, keep: set[str] | None = None) -> None:
        """Close idle connections to every address not in ``keep`` (all with None)."""
        for key in list(self._idle):
            if keep is None or key not in keep:
                for conn in self._idle.pop(key):
                    conn.close()

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - IDLE_TIMEOUT
        for key, conns in list(self._idle.items()):
            keep = []
            for c in conns:
                if c.idle_since < cutoff:
                    c.close()
                else:
                    keep.append(c)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle and not self.closed:
            self._sweeper = self.loop.call_later(IDLE_TIMEOUT / 2, self._sweep)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.close_idle()
