"""One client connection: its parser, its requests in order, its timers, its shutdown.

``ClientConnection`` is the protocol of a client socket. Its httptools (llhttp) request parser
turns bytes into one ``Exchange`` per request; exchanges are answered strictly in order. The
parser reads no further ahead than the request being answered and the next one: what a
pipelining client sends after that waits unparsed, reading paused, until the queue moves, and
the next request starts only once the client reads what it has been sent -- so what a client
can make the router hold is bounded whatever it sends (docs/request-path.md, "Memory"). The
connection's phase (``router.phases``) says what its reading side is doing, and decides:

- which timer runs: idle between requests, the request head, the request body, an idle tunnel
  (and, apart from the phase, a client that does not read what it is sent);
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
from .http.request_head import Refused, forwarded_tail, http11_line, read_request_head
from .upstream import QUEUED, UPSTREAM_FULL, UpstreamConnection

log = logging.getLogger("router.error")

# Idle connections closed at once when the connection cap is reached and a new client comes
# (nginx's ngx_drain_connections closes up to 32 reusable connections the same way).
DRAIN_AT_CAP: Final = 32
# With none idle, connections stuck this long (a client not reading what it is sent, a tunnel
# with no byte either way) are closed instead, the longest stuck first.
STUCK_AT_CAP: Final = 1.0
# The end of a request head: llhttp is given at most one per call while requests are read
# ahead, so it never parses more requests than the connection will keep.
_HEAD_END: Final = b"\r\n\r\n"
# Head of a request to a parser that must go on reading the body of an upgrade request the
# router serves as a plain request (h2c): llhttp stopped at its head (see _upgrade_request).
_RESUME_LENGTH: Final = b"PUT / HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n"
_RESUME_CHUNKED: Final = b"PUT / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Stop(Exception):
    """Raised from a parser callback: read nothing more (the connection is closing)."""


class _Ahead(_Stop):
    """Raised from on_message_begin: llhttp was given more requests than the connection reads
    ahead (see ClientConnection._parse)."""


def _past_head(data: bytes, pos: int) -> int:
    """Where the request head that begins at ``pos`` ends; -1 if not in ``data``."""
    n = len(data)
    while pos < n and (data[pos] == 13 or data[pos] == 10):
        pos += 1  # llhttp skips empty lines before a request line (RFC 9112 2.2)
    end = data.find(_HEAD_END, pos)
    return end if end < 0 else end + 4


def _requests_end(data: bytes, read: list[Exchange]) -> int:
    """Where the requests ``read`` -- read whole from the start of ``data`` -- end in it, from
    their framing; -1 if their bytes do not say so."""
    pos = 0
    n = len(data)
    for ex in read:
        pos = _past_head(data, pos)
        if pos < 0:
            return -1
        kind = ex.framing
        if kind == framing.LENGTH:
            pos += ex.length
        elif kind == framing.CHUNKED:
            try:
                pos = framing.ChunkedDecoder(lax=True).scan(data, pos)
            except framing.FramingError:
                return -1
            if pos < 0:
                return -1
    return pos if pos <= n else -1


class ClientConnection(ClientSide):
    """The protocol of one client socket (duck-typed, no asyncio.Protocol base: mypyc then
    compiles it as a native class)."""

    __slots__ = ("ctx", "loop", "transport", "parser", "phase", "parsing", "active", "queue",
                 "_paused", "write_paused", "peer", "peer_b", "tail", "trusted", "_timer",
                 "_deadline", "tunnel", "early", "decoder", "eof", "idle_at",
                 "head_bytes", "held", "held_at", "feeding", "body_left", "chunks", "whole",
                 "fed", "ahead", "line_src", "line_len",
                 "first_request", "send_since", "send_size", "_send_timer", "tunnel_at")

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
        self.decoder: framing.BodyDecoder | None = None  # an upgrade request's body (DECODING_BODY)
        self.eof = False
        # What llhttp is being given (line_src[:line_len]), when a request line begins it.
        self.line_src: bytes | bytearray | None = None
        self.line_len = 0
        self.idle_at = 0.0  # loop time it became idle (meaningful in IDLE with no request)
        self.head_bytes = 0  # bytes read for a head that spans reads
        # Bytes read but not parsed: held[held_at:] waits for the queued request to start.
        self.held = b""
        self.held_at = 0
        self.feeding = False  # inside _parse: llhttp must not be fed again from a callback
        self.whole = False  # llhttp is given a whole read: the requests begun are in fed
        self.fed: list[Exchange] = []
        self.ahead = False  # on_message_begin stopped llhttp: a third request began
        self.body_left = 0  # bytes of the Content-Length body being parsed not yet fed
        # Where the chunked body being parsed ends (llhttp reads it; this only follows it).
        self.chunks: framing.ChunkedDecoder | None = None
        self.first_request = True
        # Writing to the client: since when it has made no progress, and how much was then
        # buffered (meaningful while write_paused).
        self.send_since = 0.0
        self.send_size = 0
        self._send_timer: asyncio.TimerHandle | None = None
        self.tunnel_at = 0.0  # the last byte either way in a tunnel (loop time)

    def _move(self, to: int) -> None:
        self.phase = P.connection_move(self.phase, to)

    def _closing(self) -> None:
        """Nothing more is read or forwarded (from any phase but CLOSING and CLOSED)."""
        if not P.shut(self.phase):
            self._move(P.CLOSING)
        self._deadline = 0.0
        self.held = b""

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
        if len(ctx.connections) > ctx.connections_peak:
            ctx.connections_peak = len(ctx.connections)
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
        """At the connection cap: close the connections idle the longest, or if none is, those
        stuck the longest; False if there are none."""
        ctx = self.ctx
        now = self.loop.time()
        if now < ctx.no_idle_until:
            return False  # a scan just found none: do not rescan for every refused client
        idle = [(since, id(c), c) for c in ctx.connections if (since := c.idle_since()) >= 0]
        if idle:
            for _, _, c in heapq.nsmallest(DRAIN_AT_CAP, idle):
                c.shutdown()
            return True
        cutoff = now - STUCK_AT_CAP
        stuck = [(since, id(c), c) for c in ctx.connections
                 if 0 <= (since := c.stuck_since()) <= cutoff]
        if not stuck:
            ctx.no_idle_until = now + 0.1
            return False
        for _, _, c in heapq.nsmallest(DRAIN_AT_CAP, stuck):
            c.abort()
        return True

    # Reads go into one of the context's buffers (uvloop calls these instead of data_received
    # when a protocol has them): their size bounds what one read brings.
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.ctx.read_head if P.reads_heads(self.phase) else self.ctx.read_body

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self.phase == P.IDLE and not self.queue and not self.held:
                # Most reads: llhttp reads the buffer itself, and bytes are made of what it read
                # only if it stopped before the end (see _parse).
                view = self.ctx.read_head[:nbytes]
                feeding = self.feeding
                self.feeding = True
                try:
                    if self._whole(view):
                        data = view.tobytes()
                        pos = self._after_whole(data)
                        if pos > 0:
                            self._parse(data, pos)
                finally:
                    self.feeding = feeding
                self._read_timers()
                return
            buf = self.ctx.read_head if P.reads_heads(self.phase) else self.ctx.read_body
            self.data_received(buf[:nbytes].tobytes())
        except P.PhaseError as e:
            self.broken(e)

    def data_received(self, data: bytes) -> None:
        try:
            phase = self.phase
            if phase == P.TUNNELLING:
                tunnel = self.tunnel
                if tunnel is not None:
                    self.tunnel_at = self.loop.time()
                    tunnel.relay(data)
                return
            if P.shut(phase):
                return  # a closing answer is decided: nothing more is read
            if phase == P.UPGRADE_WAIT:
                self.early.append(data)  # read before the pause took effect
                return
            if phase == P.DECODING_BODY:
                self._upgrade_body(data)
                return
            if self.held:
                # Read before the pause took effect: it waits behind what is held.
                self.held = self.held[self.held_at:] + data
                self.held_at = 0
                return
            if phase == P.READING_HEAD:
                # More of a head split over reads: the bytes read for it are capped (an upper
                # bound of the sizes read_request_head checks exactly, so no legal head reaches it).
                self.head_bytes += len(data)
                if self.head_bytes > self.ctx.max_head_read:
                    self._reject(431, b"request header block too large\n")
                    return
            self._parse(data, 0)
            self._read_timers()
        except P.PhaseError as e:
            self.broken(e)

    def _read_timers(self) -> None:
        """After bytes were parsed: the timer of a request still arriving."""
        phase = self.phase
        if P.reading_body(phase):
            self._set_deadline(self.ctx.client_body_timeout)
        elif phase == P.READING_HEAD and not self._deadline:
            # A head split over reads: from its first read on, client_header.
            self._set_deadline(self.ctx.client_header_timeout)

    def _parse(self, data: bytes, pos: int) -> None:
        """Give llhttp ``data[pos:]``, stopping at the end of a request once another waits its
        turn: what follows is held, unparsed, reading paused, until that one starts.

        llhttp cannot stop in the middle of what it is given. A read that begins between
        requests, with none waiting, is given to it whole (most reads hold one request, and
        are read with no search); should a third request begin in it, on_message_begin stops
        llhttp (``_Ahead``), the end of the requests read is found from their framing, and a
        new parser goes on from there as below. Otherwise llhttp is given at most one
        request's end at a time: up to the next head's end, the rest of a Content-Length body,
        or a chunked body up to its end (``framing.ChunkedDecoder.scan`` finds it)."""
        n = len(data)
        feeding = self.feeding
        self.feeding = True
        try:
            if pos == 0 and self.phase == P.IDLE and not self.queue:
                if not self._whole(data):
                    return
                pos = self._after_whole(data)
                if pos < 0:
                    return
            if self.phase == P.READING_HEAD and data[pos:pos + 1] in (b"\r", b"\n"):
                # The head's empty line may end in the first bytes of this read: up to three
                # bytes one at a time, so that llhttp is not given its body with them.
                for _ in range(3):
                    if pos == n or self.phase != P.READING_HEAD:
                        break
                    if not self._feed(data, pos, pos + 1):
                        return
                    pos += 1
            while pos < n:
                if self.queue:
                    self.held = data
                    self.held_at = pos
                    self.pause(QUEUED)
                    return
                if P.llhttp_done(self.phase):
                    return  # an upgrade request took the rest (_upgrade_request)
                left = self.body_left
                chunks = self.chunks
                stop = -1
                if left:
                    stop = min(n, pos + left)  # on_body counts body_left down
                elif chunks is not None:
                    try:
                        end = chunks.scan(data, pos)
                        stop = n if end < 0 else end
                    except framing.FramingError:
                        # Stricter than llhttp (which judges it): heads are searched instead.
                        self.chunks = None
                if stop < 0:
                    end = data.find(_HEAD_END, pos)
                    stop = n if end < 0 else end + 4
                if not self._feed(data, pos, -1 if pos == 0 and stop == n else stop):
                    return
                pos = stop
        finally:
            self.feeding = feeding

    def _whole(self, data: bytes | memoryview) -> bool:
        """Give llhttp a whole read that begins between requests with none waiting; True if
        what it did asks for ``_after_whole`` (with the read as bytes)."""
        fed = self.fed
        if fed:
            fed.clear()
        self.whole = True
        self._feed(data, 0, -1)
        self.whole = False
        if self.ahead or (self.chunks is not None and fed and fed[-1] is self.parsing):
            return True
        if fed:
            fed.clear()
        return False

    def _after_whole(self, data: bytes) -> int:
        """After ``_whole`` gave llhttp ``data``: where parsing goes on in it, or -1."""
        fed = self.fed
        if not self.ahead:
            # A chunked body goes on in the next read: from where it began here, its end is
            # followed as llhttp reads it.
            start = _requests_end(data, fed[:-1])
            body = _past_head(data, start) if start >= 0 else -1
            fed.clear()
            chunks = self.chunks
            try:
                if chunks is not None and (body < 0 or chunks.scan(data, body) >= 0):
                    self.chunks = None  # (they disagree: heads are searched)
            except framing.FramingError:
                self.chunks = None
            return -1
        # Stopped as the request after those in fed began: go on from its start.
        self.ahead = False
        pos = _requests_end(data, fed)
        fed.clear()
        self.parser = httptools.HttpRequestParser(self)
        if pos < 0:
            # A chunk line llhttp let through and framing's stricter rules do not: the
            # requests read are answered, then the connection closes.
            self.ctx.throttled.warning("ahead", "client %s: the end of pipelined requests not "
                                       "found; reading stops after them", self.peer)
            self._closing()
        return pos

    def _feed(self, data: bytes | memoryview, pos: int, stop: int) -> bool:
        """Give llhttp ``data[pos:stop]`` (``stop`` -1: all of ``data``); False if it stopped
        (an error, an upgrade)."""
        upgrade = -1
        if pos == 0 and self.phase == P.IDLE:
            # (a view is of a read buffer, from its start)
            self.line_src = data if isinstance(data, bytes) else cast(bytearray, data.obj)
            self.line_len = len(data) if stop < 0 else stop
        else:
            self.line_src = None
        try:
            if stop < 0:
                self.parser.feed_data(data)
            else:
                self.parser.feed_data(memoryview(data)[pos:stop])
        except httptools.HttpParserUpgrade as e:
            upgrade = pos + e.args[0]  # (handled below, out of this handler: the parsing that
            # follows must not see this exception as the cause of its own)
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, Refused):
                self._reject(cause.status, str(cause).encode() + b"\n")
            elif isinstance(cause, _Stop):
                pass
            elif isinstance(cause, P.PhaseError):
                self.broken(cause)
            else:
                self._reject(400, b"malformed request: " + str(e).encode() + b"\n")
            return False
        if upgrade >= 0:
            rest = data[upgrade:]
            self._upgrade_request(rest if isinstance(rest, bytes) else rest.tobytes())
            return False
        return True

    def eof_received(self) -> bool | None:
        try:
            self.eof = True
            ex = self.active
            if ex is None:
                return None
            if P.awaiting_head(ex.phase):
                # Gone before its answer began: abandoned (nginx's 499). Counted, the backend
                # connection closed, its in-flight count released; a client that only half-closed
                # cannot be told from one that gave up, as in nginx.
                ex.abort(499)
                return None
            return True  # the answer has begun: it is sent whole, then the close
        except P.PhaseError as e:
            self.broken(e)
            return None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.phase = P.CLOSED
            self.ctx.connections.discard(self)
            self.held = b""
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            tunnel = self.tunnel
            if tunnel is not None:
                self.tunnel = None
                tunnel.close_tunnel()
            ex = self.active
            self.active = None
            self.queue = None
            if ex is not None:
                ex.abort(499)
        except P.PhaseError as e:
            self.broken(e)

    def pause_writing(self) -> None:
        try:
            self.write_paused = True
            now = self.loop.time()
            self.send_since = now
            self.send_size = self.transport.get_write_buffer_size()
            if self._send_timer is None:
                self._send_timer = self.loop.call_at(now + self.ctx.client_send_timeout,
                                                     self._on_send_timer)
            ex = self.active
            if ex is not None:
                ex.client_backpressure(True)
            elif self.tunnel is not None:
                self.tunnel.pause_reading()
        except P.PhaseError as e:
            self.broken(e)

    def resume_writing(self) -> None:
        try:
            self.write_paused = False
            ex = self.active
            if ex is not None:
                ex.client_backpressure(False)
            elif self.tunnel is not None:
                self.tunnel.resume_reading()
            elif (self.queue or self.held) and self.phase != P.CLOSED:
                self._next(self.loop.time())  # the next request waited for the client to read
        except P.PhaseError as e:
            self.broken(e)

    # -- what exchanges, the tunnel and the data plane ask -----------------------------------
    def is_open(self) -> bool:
        return self.phase != P.CLOSED

    def write(self, data: bytes | memoryview) -> None:
        if self.phase != P.CLOSED:
            self.transport.write(data)
            if self.write_paused:
                self.send_size = self.transport.get_write_buffer_size()

    def writelines(self, data: list[bytes | memoryview]) -> None:
        if self.phase != P.CLOSED:
            self.transport.writelines(data)
            if self.write_paused:
                self.send_size = self.transport.get_write_buffer_size()

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size()

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
        if (self.phase == P.IDLE and self.active is None and self.parsing is None
                and not self.queue and not self.held):
            return self.idle_at
        return -1.0

    def stuck_since(self) -> float:
        phase = self.phase
        if phase == P.CLOSED:
            return -1.0
        if self.write_paused:
            self._sent(self.loop.time())
            return self.send_since
        if phase == P.TUNNELLING:
            return self.tunnel_at
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

    def broken(self, err: Exception) -> None:
        """The one handler of a ``PhaseError`` (a move the phase tables forbid: a bug of the
        router), from whichever call of the loop met it -- this connection's own, its backend
        connection's, a timer's, a connect task's: logged, and the client dropped (never a
        short or wrong response). The exchange it was answering ends with the connection."""
        log.error("client %s: %s; connection dropped", self.peer, err)
        self.abort()

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
        self.first_request = False
        if self.phase == P.CLOSED:
            return
        if ex.close_after or (self.eof and not self.queue and not self.held):
            self._closing()
            self.transport.close()
            return
        if not self.write_paused:
            self._next(ex.ended)
        # else the client is not reading what it was sent: the next request waits for it
        # (resume_writing), or for client_send.

    def _next(self, now: float) -> None:
        """No request is being answered and the client reads: start the one read next, and
        read on."""
        q = self.queue
        if q:
            nxt = q.popleft()
            self.active = nxt
            nxt.route()
            if P.ended(nxt.phase):
                return  # answered at once: its own end went on from there
        elif self.phase == P.CLOSING:
            self.transport.close()  # nothing more will come: a refused request ended it
            return
        if self.held and not self.feeding:
            data, pos = self.held, self.held_at
            self.held = b""
            self._parse(data, pos)
            self._read_timers()
        if self.queue or self.held:
            return
        if self._paused:
            self.unpause(QUEUED)
        if self.active is None:
            phase = self.phase
            if phase == P.IDLE:
                if self.parsing is None:
                    self._idle(now)
            elif phase == P.READING_HEAD:
                self._set_deadline(self.ctx.client_header_timeout)

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        self._move(P.TUNNELLING)
        self.active = None
        self.tunnel = up
        up.start_tunnel(self)
        self.tunnel_at = self.loop.time()
        self._set_deadline(self.ctx.tunnel_idle_timeout, self.tunnel_at)
        if rest:
            self.transport.write(rest)
        early = self.early
        self.early = []
        if early:
            up.relay(b"".join(early))
        self._paused = 0
        self.transport.resume_reading()
        if self.write_paused:
            up.pause_reading()

    # upstream.Tunnel: the backend's side of the tunnel
    def tunnel_data(self, data: bytes) -> None:
        self.tunnel_at = self.loop.time()
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
        try:
            self._timer = None
            phase = self.phase
            if phase == P.TUNNELLING:
                self._deadline = self.tunnel_at + self.ctx.tunnel_idle_timeout
            if P.shut(phase) or not self._deadline:
                return
            now = self.loop.time()
            if now < self._deadline:
                self._timer = self.loop.call_at(self._deadline, self._on_timer)
                return
            if phase == P.READING_HEAD:
                self._timed_out("client_header")
                self._reject(408, b"request head not received in time\n")
            elif P.reading_body(phase):
                if self._paused:
                    # We are not reading (a backend is slow to take the body, or the request waits
                    # its turn): not the client's fault.
                    self._set_deadline(self.ctx.client_body_timeout)
                else:
                    self._timed_out("client_body")
                    self._reject(408, b"request body not received in time\n")
            elif phase == P.TUNNELLING:
                self._timed_out("tunnel_idle")
                self.transport.close()  # the tunnel's backend side closes with it
            elif self.idle_since() >= 0:
                handoff = self.ctx.handoff
                if handoff is not None:
                    handoff(self)  # a successor takes it (router.dataplane: idle timeout 0 meanwhile)
                    return
                self._closing()
                self.transport.close()
        except P.PhaseError as e:
            self.broken(e)

    def _sent(self, now: float) -> None:
        """While writing is paused: if the client took some of what is buffered, that is
        progress."""
        size = self.transport.get_write_buffer_size()
        if size < self.send_size:
            self.send_since = now
        self.send_size = size

    def _on_send_timer(self) -> None:
        """timeouts.client_send: a client that takes nothing of what it is sent is closed."""
        try:
            self._send_timer = None
            if not self.write_paused or self.phase == P.CLOSED:
                return
            now = self.loop.time()
            self._sent(now)
            deadline = self.send_since + self.ctx.client_send_timeout
            if now < deadline:
                self._send_timer = self.loop.call_at(deadline, self._on_send_timer)
                return
            self._timed_out("client_send")
            self.abort()  # nothing more can reach it: a close would wait for its buffer forever
        except P.PhaseError as e:
            self.broken(e)

    def _timed_out(self, reason: str) -> None:
        counts = self.ctx.timeouts
        counts[reason] = counts.get(reason, 0) + 1

    # -- request parser callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.phase == P.RESUMED_BODY:
            return  # the stand-in head of an ignored upgrade's body
        if self.phase == P.CLOSING:
            raise _Stop()
        whole = self.whole
        if whole and self.queue:
            self.ahead = True
            raise _Ahead()  # a request waits already: this one is not parsed yet (_parse)
        self._move(P.READING_HEAD)
        ex = self.parsing = Exchange(self)
        if whole:
            self.fed.append(ex)
        self.head_bytes = 0
        if self.active is None:
            # Set only if the head is still incomplete at the end of this read
            # (data_received): most heads arrive whole, and then no clock or timer is touched.
            self._deadline = 0.0

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        if ex is None or self.phase == P.RESUMED_BODY:
            return
        ex.url += url
        if len(ex.url) > self.ctx.max_request_line:
            raise Refused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        if ex is not None and self.phase != P.RESUMED_BODY:
            headers = ex.headers
            headers.append((name, value))
            if len(headers) > self.ctx.max_header_fields:
                raise Refused(431, "too many header fields")

    def on_headers_complete(self) -> None:
        ex = self.parsing
        if ex is None or self.phase != P.READING_HEAD:
            return
        parser = self.parser
        ctx = self.ctx
        upgrade = parser.should_upgrade()
        method = parser.get_method()
        line = self.line_src
        self.line_src = None
        if line is not None and http11_line(line, self.line_len, method, ex.url):
            version = "1.1"
        else:
            version = parser.get_http_version()
        read_request_head(ex, method, ex.url, version, ex.headers,
                          upgrade, ctx.max_header, ctx.max_headers, self.trusted, self.peer_b,
                          self.tail, ctx.ids)
        ex.llhttp_upgrade = upgrade
        kind = ex.framing
        if kind == framing.NONE:
            ex.body_done = True  # known now: an answer given before the message ends may keep it
        elif not upgrade:
            self._follow_body(ex)
        self._move(P.READING_BODY)
        # Until the body is complete, each read must come within client_body (set at the end
        # of the read, if the body is still incomplete then).
        self._deadline = 0.0
        self._take(ex)

    def _follow_body(self, ex: Exchange) -> None:
        """llhttp reads ``ex``'s body next: know where it ends (see _parse)."""
        if ex.framing == framing.LENGTH:
            self.body_left = ex.length
        else:
            self.chunks = framing.ChunkedDecoder(lax=True)

    def _take(self, ex: Exchange) -> None:
        """``ex`` is read (its head at least): answer it now if nothing is before it and the
        client reads what it is sent, else queue it (reading pauses)."""
        q = self.queue
        if self.active is None and not q and not self.write_paused:
            self.active = ex
            ex.route()
            return
        if q is None:
            q = self.queue = deque()
        if ex not in q:
            q.append(ex)
        self.pause(QUEUED)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        if self.body_left:
            self.body_left -= len(data)
        if ex is not None:
            ex.body(data)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None or (ex.llhttp_upgrade and self.phase != P.RESUMED_BODY):
            return  # llhttp stops after an upgrade request's head: see _upgrade_request
        self._request_read(ex)

    def _request_read(self, ex: Exchange) -> None:
        """``ex`` has been read whole."""
        self.parsing = None
        self.chunks = None
        if self.phase == P.READING_BODY or self.phase == P.RESUMED_BODY:
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
                self._move(P.RESUMED_BODY)
                stand_in = (_RESUME_CHUNKED if ex.framing == framing.CHUNKED
                            else _RESUME_LENGTH % ex.length)
                self.parser.feed_data(stand_in)
                self._follow_body(ex)
            if rest:
                self.data_received(rest)
            return
        if ex.framing == framing.NONE:
            self._upgrade_ready(ex, rest)
            return
        # The body is a body: read to its end before anything can be tunnelled.
        self._move(P.DECODING_BODY)
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
        if self.phase != P.READING_BODY and self.phase != P.DECODING_BODY:
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
        self.decoder = None
        self.body_left = 0
        self.chunks = None
        if P.shut(self.phase):
            return
        self._closing()
        if ex is not None and P.ended(ex.phase):
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
        self._take(ex)
