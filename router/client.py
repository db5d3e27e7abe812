"""One client connection: its parser, its requests in order, its timers, its shutdown.

``ClientConnection`` is the protocol of a client socket. Its httptools (llhttp) request parser
turns bytes into one ``Exchange`` per request; exchanges are answered strictly in order
(pipelined requests wait, reading paused, until the one before them is done). The connection's
phase (``router.phases``) says what its reading side is doing, and decides:

- which timer runs: idle between requests, the request head, the request body;
- that nothing more is read or forwarded once a closing answer is decided (``CLOSING``): a
  request pipelined behind a refused or closing one never reaches a backend;
- that bytes after an upgrade request are held, unparsed, until the backend answers: a tunnel's
  first bytes (after a 101) or dropped with the connection (any other answer);
- that a request whose body llhttp does not frame (one with an ``Upgrade`` field: llhttp stops
  at its head) has that body read by ``router.http.framing``, as a body.

docs/request-path.md draws the phases and walks through each case.
"""

from __future__ import annotations

import asyncio
import fcntl
import heapq
import ipaddress
import logging
import os
import sys
import termios
from collections import deque
from typing import Final, cast

import httptools

from . import phases as P
from .context import ProxyContext
from .exchange import ClientSide, Exchange
from .http import framing
from .http.request_head import Refused, forwarded_tail, read_request_head
from .upstream import QUEUED, UPSTREAM_FULL, UpstreamConnection

log = logging.getLogger("router.error")

# Idle connections closed at once when the connection cap is reached and a new client comes
# (nginx's ngx_drain_connections closes up to 32 reusable connections the same way).
DRAIN_AT_CAP: Final = 32
# Head of a request to a parser that must go on reading the body of an upgrade request the
# router serves as a plain request (h2c): llhttp stopped at its head (see _upgrade_request).
_RESUME_LENGTH: Final = b"PUT / HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n"
_RESUME_CHUNKED: Final = b"PUT / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Stop(Exception):
    """Raised from a parser callback: read nothing more (the connection is closing)."""


class ClientConnection(ClientSide):
    """The protocol of one client socket (duck-typed, no asyncio.Protocol base: mypyc then
    compiles it as a native class)."""

    __slots__ = ("ctx", "loop", "transport", "parser", "phase", "parsing", "active", "queue",
                 "_paused", "write_paused", "peer", "peer_b", "tail", "trusted", "_timer",
                 "_deadline", "tunnel", "early", "decoder", "resume", "eof", "idle_at",
                 "head_bytes")

    transport: asyncio.Transport

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.parser = httptools.HttpRequestParser(self)
        self.phase = P.IDLE
        self.parsing: Exchange | None = None  # the request whose head or body is being read
        self.active: Exchange | None = None  # the request being answered
        self.queue: deque[Exchange] | None = None  # requests read, waiting for their turn
        self._paused = 0  # why reading is paused (upstream.UPSTREAM_FULL | BODY_BUFFERED | QUEUED)
        self.write_paused = False
        self.peer = "-"
        self.peer_b = b"-"
        self.tail = forwarded_tail(b"")
        self.trusted = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # when the phase's timer ends; 0: none runs
        self.tunnel: UpstreamConnection | None = None
        self.early: list[bytes] = []  # bytes after an upgrade request, for the tunnel
        self.decoder: framing.BodyDecoder | None = None  # an upgrade request's body
        self.resume: Exchange | None = None  # whose body the parser reads after an ignored upgrade
        self.eof = False
        self.idle_at = 0.0  # loop time it became idle (meaningful in IDLE with no request)
        self.head_bytes = 0  # bytes read for a head that spans reads

    def _move(self, to: int) -> None:
        self.phase = P.connection_move(self.phase, to)

    def _closing(self) -> None:
        """Nothing more is read or forwarded (from any phase but CLOSING and CLOSED)."""
        if self.phase < P.CLOSING:
            self._move(P.CLOSING)
        self._deadline = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        # A stopping router still serves a connection accepted during timeouts.drain_delay: its
        # answer says Connection: close (ctx.accepting).
        if len(ctx.connections) >= ctx.max_connections and not self._make_room():
            ctx.refused += 1
            ctx.throttled.warning("cap", "connection refused: limits.max_connections (%d) "
                                  "reached and no idle connection to close",
                                  ctx.max_connections)
            self.transport.abort()
            self.phase = P.CLOSED
            return
        ctx.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
            self.peer_b = self.peer.encode()
            self.tail = forwarded_tail(self.peer_b)
            if ctx.trusted:
                ip = ipaddress.ip_address(self.peer)
                self.trusted = any(ip in net for net in ctx.trusted)
        self._idle()

    def _make_room(self) -> bool:
        """At the connection cap: close the connections idle the longest; False if none is."""
        ctx = self.ctx
        now = self.loop.time()
        if now < ctx.no_idle_until:
            return False  # a scan just found none: do not rescan for every refused client
        idle = [(since, id(c), c) for c in ctx.connections if (since := c.idle_since()) >= 0]
        if not idle:
            ctx.no_idle_until = now + 0.1
            return False
        for _, _, c in heapq.nsmallest(DRAIN_AT_CAP, idle):
            c.shutdown()
        return True

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == P.TUNNELLING:
            tunnel = self.tunnel
            if tunnel is not None:
                tunnel.transport.write(data)
            return
        if phase >= P.CLOSING:
            return  # a closing answer is decided: nothing more is read
        if phase == P.UPGRADE_WAIT:
            self.early.append(data)  # read before the pause took effect
            return
        if self.decoder is not None:
            self._upgrade_body(data)
            return
        if phase == P.READING_HEAD:
            # More of a head split over reads: the bytes read for it are capped (an upper
            # bound of the sizes read_request_head checks exactly, so no legal head reaches it).
            self.head_bytes += len(data)
            if self.head_bytes > self.ctx.max_head_read:
                self._reject(431, b"request header block too large\n")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgrade_request(data[e.args[0]:])
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, Refused):
                self._reject(cause.status, str(cause).encode() + b"\n")
            elif isinstance(cause, _Stop):
                pass
            elif isinstance(cause, P.PhaseError):
                log.error("client %s: %s; connection dropped", self.peer, cause)
                self.abort()
            else:
                self._reject(400, b"malformed request: " + str(e).encode() + b"\n")
            return
        phase = self.phase
        if phase == P.READING_BODY:
            self._set_deadline(self.ctx.client_body_timeout)
        elif phase == P.READING_HEAD and not self._deadline:
            # A head split over reads: from its first read on, client_header.
            self._set_deadline(self.ctx.client_header_timeout)

    def eof_received(self) -> bool | None:
        self.eof = True
        ex = self.active
        if ex is None:
            return None
        if ex.phase < P.HEAD:
            # Gone before its answer began: abandoned (nginx's 499). Counted, the backend
            # connection closed, its in-flight count released; a client that only half-closed
            # cannot be told from one that gave up, as in nginx.
            ex.abort(499)
            return None
        return True  # the answer has begun: it is sent whole, then the close

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = P.CLOSED
        self.ctx.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel = None
            tunnel.close()
        ex = self.active
        self.active = None
        self.queue = None
        if ex is not None:
            ex.abort(499)

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()
        elif self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()
        elif self.tunnel is not None:
            self.tunnel.resume_reading()

    # -- what exchanges, the tunnel and the data plane ask -----------------------------------
    def is_open(self) -> bool:
        return self.phase != P.CLOSED

    def write(self, data: bytes | memoryview) -> None:
        if self.phase != P.CLOSED:
            self.transport.write(data)

    def writelines(self, data: list[bytes | memoryview]) -> None:
        if self.phase != P.CLOSED:
            self.transport.writelines(data)

    def pause(self, why: int) -> None:
        if not self._paused and self.phase != P.CLOSED:
            self.transport.pause_reading()
        self._paused |= why

    def unpause(self, why: int) -> None:
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.phase != P.CLOSED:
                self.transport.resume_reading()

    def idle_since(self) -> float:
        if self.phase == P.IDLE and self.active is None and self.parsing is None:
            return self.idle_at
        return -1.0

    def shutdown(self) -> bool:
        if self.idle_since() >= 0:
            self._closing()
            self.ctx.connections.discard(self)
            self.transport.close()
            return False
        # Busy: its response says Connection: close (the context no longer accepts).
        return self.phase != P.CLOSED

    def abort(self) -> None:
        if self.phase != P.CLOSED:
            self._closing()
            self.transport.abort()

    def unread(self) -> int:
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.phase == P.CLOSED:
            return 0
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"),
                              sys.byteorder)

    def detach(self) -> int:
        # Between requests nothing of a connection lives here but its socket: what the client
        # sends next waits in the kernel and goes with the descriptor (router.handoff).
        if self.idle_since() < 0 or self.eof or self.transport.get_write_buffer_size():
            return -1
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return -1
        fd = os.dup(sock.fileno())
        self._closing()
        self.ctx.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport.abort()  # closes this descriptor only: the duplicate keeps it open
        return fd

    def drop(self, ex: Exchange) -> None:
        if self.active is ex:
            self.active = None
        self.abort()

    def exchange_done(self, ex: Exchange) -> None:
        if self.active is ex:
            self.active = None
        phase = self.phase
        if phase == P.CLOSED:
            return
        if ex.close_after or (self.eof and not self.queue):
            self._closing()
            self.transport.close()
            return
        q = self.queue
        if q:
            nxt = q.popleft()
            self.active = nxt
            nxt.route()
            return
        if phase == P.CLOSING:
            self.transport.close()  # nothing more will come: a refused request ended it
            return
        if self._paused:
            self.unpause(QUEUED)
        if phase == P.IDLE:
            if self.parsing is None:
                self._idle(ex.ended)
        elif phase == P.READING_HEAD:
            self._set_deadline(self.ctx.client_header_timeout)

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        self._move(P.TUNNELLING)
        self.active = None
        self.tunnel = up
        up.start_tunnel(self)
        self._deadline = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if rest:
            self.transport.write(rest)
        early = self.early
        self.early = []
        if early:
            up.transport.write(b"".join(early))
        self._paused = 0
        self.transport.resume_reading()
        if self.write_paused:
            up.pause_reading()

    # upstream.Tunnel: the backend's side of the tunnel
    def tunnel_data(self, data: bytes) -> None:
        self.write(data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        if self.phase != P.CLOSED:
            self.transport.close()

    def tunnel_backpressure(self, full: bool) -> None:
        if full:
            self.pause(UPSTREAM_FULL)
        else:
            self.unpause(UPSTREAM_FULL)

    # -- timers: one handle per connection; which timer runs follows from the phase -----------
    def _idle(self, now: float = 0.0) -> None:
        self.idle_at = now or self.loop.time()
        self._set_deadline(self.ctx.client_idle_timeout, self.idle_at)

    def _set_deadline(self, timeout: float, now: float = 0.0) -> None:
        self._deadline = (now or self.loop.time()) + timeout
        timer = self._timer
        if timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        elif timer.when() > self._deadline:
            timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.phase >= P.TUNNELLING or not self._deadline:
            return
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        phase = self.phase
        if phase == P.READING_HEAD:
            self._reject(408, b"request head not received in time\n")
        elif phase == P.READING_BODY:
            if self._paused:
                # We are not reading (a backend is slow to take the body): not the client's fault.
                self._set_deadline(self.ctx.client_body_timeout)
            else:
                self._reject(408, b"request body not received in time\n")
        elif phase == P.IDLE and self.active is None and self.parsing is None:
            handoff = self.ctx.handoff
            if handoff is not None:
                handoff(self)  # a successor takes it (router.dataplane: idle timeout 0 meanwhile)
                return
            self._closing()
            self.transport.close()

    # -- request parser callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.resume is not None:
            return  # the stand-in head of an ignored upgrade's body
        if self.phase == P.CLOSING:
            raise _Stop()
        self._move(P.READING_HEAD)
        self.parsing = Exchange(self)
        self.head_bytes = 0
        if self.active is None:
            # Set only if the head is still incomplete at the end of this read
            # (data_received): most heads arrive whole, and then no clock or timer is touched.
            self._deadline = 0.0

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        if ex is None or self.resume is not None:
            return
        ex.url += url
        if len(ex.url) > self.ctx.max_request_line:
            raise Refused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        if ex is not None and self.resume is None:
            ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.resume is not None:
            return
        ex = self.parsing
        if ex is None or self.phase != P.READING_HEAD:
            return
        parser = self.parser
        ctx = self.ctx
        upgrade = parser.should_upgrade()
        read_request_head(ex, parser.get_method(), ex.url, parser.get_http_version(), ex.headers,
                          upgrade, ctx.max_header, ctx.max_headers, self.trusted, self.peer_b,
                          self.tail, ctx.ids)
        ex.llhttp_upgrade = upgrade
        if ex.framing == framing.NONE:
            ex.body_done = True  # known now: an answer given before the message ends may keep it
        self._move(P.READING_BODY)
        # Until the body is complete, each read must come within client_body (set at the end
        # of the read, if the body is still incomplete then).
        self._deadline = 0.0
        if self.active is None:
            self.active = ex
            ex.route()
        else:
            q = self.queue
            if q is None:
                q = self.queue = deque()
            q.append(ex)
            self.pause(QUEUED)

    def on_body(self, data: bytes) -> None:
        ex = self.resume if self.resume is not None else self.parsing
        if ex is not None:
            ex.body(data)

    def on_message_complete(self) -> None:
        ex = self.resume
        if ex is not None:
            self.resume = None
        else:
            ex = self.parsing
            if ex is None or ex.llhttp_upgrade:
                return  # llhttp stops after an upgrade request's head: see _upgrade_request
        self._request_read(ex)

    def _request_read(self, ex: Exchange) -> None:
        """``ex`` has been read whole."""
        self.parsing = None
        if self.phase == P.READING_BODY:
            if not ex.keep_alive:
                self._closing()  # the client said this is its last request: read no more
            else:
                self._move(P.IDLE)
                if self.active is None:
                    self._idle()
                else:
                    self._deadline = 0.0  # the exchange has its own timers now
        ex.body_end()

    # -- requests with an Upgrade field ----------------------------------------------------
    def _upgrade_request(self, rest: bytes) -> None:
        """llhttp has stopped after the head of an upgrade request: ``rest`` is what followed."""
        ex = self.parsing
        if ex is None or self.phase != P.READING_BODY:
            return  # answered and closing already
        # llhttp's parser is spent after an upgrade; a fresh one reads what comes next.
        self.parser = httptools.HttpRequestParser(self)
        if not ex.upgrade:
            # An upgrade the router does not tunnel (h2c): a plain request, whose body (if
            # any) and later requests follow. A stand-in head with the same framing lets
            # llhttp read that body for it.
            if ex.framing == framing.NONE:
                self._request_read(ex)
            else:
                self.resume = ex
                stand_in = (_RESUME_CHUNKED if ex.framing == framing.CHUNKED
                            else _RESUME_LENGTH % ex.length)
                self.parser.feed_data(stand_in)
            if rest:
                self.data_received(rest)
            return
        if ex.framing == framing.NONE:
            self._upgrade_ready(ex, rest)
            return
        # The body is a body: read to its end before anything can be tunnelled.
        self.decoder = (framing.ChunkedDecoder() if ex.framing == framing.CHUNKED
                        else framing.LengthDecoder(ex.length))
        if rest:
            self._upgrade_body(rest)

    def _upgrade_body(self, data: bytes) -> None:
        ex = self.parsing
        decoder = self.decoder
        if ex is None or decoder is None:
            return
        try:
            pieces = decoder.feed(data)
        except framing.FramingError as e:
            self.decoder = None
            self._reject(400, b"malformed request: " + str(e).encode() + b"\n")
            return
        for piece in pieces:
            ex.body(piece)
        if decoder.done:
            self.decoder = None
            self._upgrade_ready(ex, decoder.rest)
        else:
            self._set_deadline(self.ctx.client_body_timeout)

    def _upgrade_ready(self, ex: Exchange, rest: bytes) -> None:
        """An upgrade request is read whole: wait for the backend's answer, reading paused."""
        self.parsing = None
        ex.body_end()
        if self.phase != P.READING_BODY:
            return  # answered already, closing
        self._move(P.UPGRADE_WAIT)
        self._deadline = 0.0
        if rest:
            self.early.append(rest)
        self.pause(QUEUED)

    # -- refusals -------------------------------------------------------------------------
    def _reject(self, status: int, body: bytes) -> None:
        """A request that cannot be read on: answered in its turn; nothing after it is read."""
        ex = self.parsing
        self.parsing = None
        self.resume = None
        self.decoder = None
        if self.phase >= P.CLOSING:
            return
        self._closing()
        if ex is not None and ex.phase >= P.TUNNEL:
            # Answered already (early): nothing more to say; close once the rest is answered.
            if self.active is None and not self.queue:
                self.transport.close()
            return
        if ex is not None and ex is self.active:
            # Its body broke the framing while being forwarded: the backend must never see
            # that request end, so its connection is reset (answer and abort do it).
            if ex.phase == P.BODY:
                ex.abort(status)
            else:
                ex.answer(status, body, keep=False)
            return
        if ex is None:
            ex = Exchange(self)
        ex.refusal = status
        ex.refusal_body = body
        ex.keep_alive = False
        ex.body_done = True
        if self.active is None:
            self.active = ex
            ex.route()
            return
        q = self.queue
        if q is None:
            q = self.queue = deque()
        if ex not in q:
            q.append(ex)
        self.pause(QUEUED)
