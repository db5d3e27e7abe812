"""Pooled keep-alive connections to backends.

One ``UpstreamPool`` per process (STYLE 6). An ``UpstreamConnection`` is an asyncio Protocol
with an httptools response parser; while it serves a request it hands every parsed event to
the ``Exchange`` it is attached to (``router.proxy``), and when the response is complete and
both sides allow it, it goes back to the pool's idle list for its backend address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable, cast

import httptools

if TYPE_CHECKING:
    from .proxy import ClientConnection, Exchange

log = logging.getLogger("router.error")

# Why a client connection's reading is paused (bit flags; reading resumes when none is left).
UPSTREAM_FULL = 1   # the backend's socket buffer is full
BODY_BUFFERED = 2   # body bytes wait for a backend connection
QUEUED = 4          # a pipelined request waits for the one before it

# Idle connections kept per backend address. nginx's `keepalive 64` style cap: enough for a
# busy worker, small enough that a removed backend does not keep thousands of sockets.
MAX_IDLE_PER_BACKEND = 256
# Close pooled connections idle this long: below the common backend keep-alive timeouts
# (nginx 75 s, Node.js 5 s is the awkward one, so reuse also tolerates a closed connection).
IDLE_TIMEOUT = 30.0


class UpstreamConnection:
    """The asyncio protocol of one backend socket (duck-typed: see ClientConnection)."""

    __slots__ = ("pool", "key", "transport", "parser", "exchange", "reused", "idle_since",
                 "closed", "tunnel", "_paused", "body_left")

    def __init__(self, pool: "UpstreamPool", key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.exchange: Exchange | None = None
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        self.tunnel: ClientConnection | None = None  # the client, once upgraded (WebSocket)
        self.body_left = 0  # bytes of a Content-Length body still to forward past the parser
        self._paused = False

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)  # type: ignore[union-attr]
            return
        ex = self.exchange
        if ex is None:
            # Bytes from an idle backend connection: it is not speaking HTTP to us any
            # more. Never hand it to a request.
            self.close()
            return
        if self.body_left:
            self.raw_body(ex, data)
            return
        if self.parser is None:
            if ex.fast_response(self, data):
                return
            self.parser = httptools.HttpResponseParser(ex)
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as e:
            if self.exchange is ex:
                ex.upstream_upgraded(data[e.args[0]:])
        except httptools.HttpParserError as e:
            if self.exchange is ex:
                ex.upstream_failed(self, "protocol", str(e))
        ex.flush()
        if ex.resp_length > ex.body_seen and self.exchange is ex and not ex.done and not ex.rechunk:
            # The head is through and the body's length is known: the rest needs no parsing
            # (and no copy by a body callback), only counting.
            self.body_left = ex.resp_length - ex.body_seen

    def raw_body(self, ex: "Exchange", data: bytes) -> None:
        """Bytes of a Content-Length body, forwarded as read."""
        left = self.body_left
        n = len(data)
        if n < left:
            self.body_left = left - n
            ex.out.append(data)
            ex.flush()
            return
        self.body_left = 0
        keep = ex.keep_up
        if n > left:  # bytes past the announced body: framing is broken, do not reuse
            data = data[:left]
            keep = False
        ex.out.append(data)
        ex.finish(keep)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self, exc)
        elif self.tunnel is not None:
            self.tunnel.tunnel_closed()
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        client = self.tunnel or (self.exchange.conn if self.exchange is not None else None)
        if client is not None:
            client.pause(UPSTREAM_FULL)

    def resume_writing(self) -> None:
        client = self.tunnel or (self.exchange.conn if self.exchange is not None else None)
        if client is not None:
            client.unpause(UPSTREAM_FULL)

    # -- control from the exchange -------------------------------------------------------
    def attach(self, ex: "Exchange") -> None:
        self.exchange = ex
        self.body_left = 0
        self.parser = None  # made for the response only if fast_response declines its head

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def release(self, keep: bool) -> None:
        """Detach from the exchange; back to the pool if ``keep``, else close."""
        self.exchange = None
        self.parser = None
        if keep and not self.closed:
            if self._paused:
                self.resume_reading()
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per backend address, most recently used first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    def get(self, key: str) -> UpstreamConnection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
                conn.reused = True
                return conn
        return None

    async def connect(self, key: str, host: str, port: int) -> UpstreamConnection:
        """A new connection; raises OSError or TimeoutError."""
        async with asyncio.timeout(self.connect_timeout):
            _, proto = await self.loop.create_connection(
                cast("Callable[[], asyncio.Protocol]", lambda: UpstreamConnection(self, key)),
                host, port)
        return cast(UpstreamConnection, proto)

    def put(self, conn: UpstreamConnection) -> None:
        if self.closed:
            conn.close()
            return
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn.idle_since = self.loop.time()
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

    def idle_count(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

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
