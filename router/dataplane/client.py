"""One client connection: its requests in order, its timers, its tunnel, its shutdown.

``ClientConnection`` is the protocol of a client socket; reading its requests is the half it
inherits from ``router.dataplane.reader.RequestReader``. Exchanges are answered strictly in order, and the
next request starts only once the client reads what it has been sent -- so what a client can
make the router hold is bounded whatever it sends (docs/request-path.md, "Memory"). The
connection's phase (``router.dataplane.phases``) says what its reading side is doing, and decides:

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
from typing import Final, cast

from . import phases as P
from .context import ProxyContext
from .exchange import Exchange
from ..http.request_head import forwarded_tail
from .reader import RequestReader
from .upstream import QUEUED, UPSTREAM_FULL, UpstreamConnection

log = logging.getLogger("router.error")

# Idle connections closed at once when the connection cap is reached and a new client comes
# (nginx's ngx_drain_connections closes up to 32 reusable connections the same way).
DRAIN_AT_CAP: Final = 32
# With none idle, connections stuck this long (a client not reading what it is sent, a tunnel
# with no byte either way) are closed instead, the longest stuck first.
STUCK_AT_CAP: Final = 1.0
# A connection idle this long lets go of what only reading a request needs: its parser (made
# again when the next request begins), and its idle timer while the idle timeout is further
# than TIMER_AHEAD away (set again once it is that near). The data plane's sweep
# (router.process.dataplane), every half second, does both, then parks it outside uvloop
# (router.dataplane.parking): it then holds its socket and a record of five fields
# (docs/performance.md, "Memory per idle connection").
REST_AFTER: Final = 1.0
TIMER_AHEAD: Final = 5.0
# Client addresses whose strings are kept for the connections from them (ProxyContext.peers):
# past this many, the cache starts again.
PEERS_KEPT: Final = 4096


class ClientConnection(RequestReader):
    """The protocol of one client socket (duck-typed, no asyncio.Protocol base: mypyc then
    compiles it as a native class)."""

    __slots__ = ("_paused", "write_paused", "_timer", "_timer_at", "tunnel", "eof", "idle_at",
                 "first_request", "send_since", "send_size", "_send_timer", "tunnel_at")

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__(ctx)
        self._paused = 0  # why reading is paused (upstream.UPSTREAM_FULL | BODY_BUFFERED | QUEUED)
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when _timer fires (kept: read per request, cheaper than when())
        self.tunnel: UpstreamConnection | None = None
        self.eof = False
        self.idle_at = 0.0  # loop time it became idle (meaningful in IDLE with no request)
        self.first_request = True
        # Writing to the client: since when it has made no progress, and how much was then
        # buffered (meaningful while write_paused).
        self.send_since = 0.0
        self.send_size = 0
        self._send_timer: asyncio.TimerHandle | None = None
        self.tunnel_at = 0.0  # the last byte either way in a tunnel (loop time)
        self.out: list[bytes | memoryview] | None = None  # (see ClientSide.out)

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
            # What is made of the client's address, shared by its connections.
            addr: str = peer[0]
            known = ctx.peers.get(addr)
            if known is None:
                if len(ctx.peers) >= PEERS_KEPT:
                    ctx.peers.clear()
                addr_b = addr.encode()
                trusted = False
                if ctx.trusted:
                    ip = ipaddress.ip_address(addr)
                    trusted = any(ip in net for net in ctx.trusted)
                known = ctx.peers[addr] = (addr, addr_b, forwarded_tail(addr_b), trusted)
            self.peer, self.peer_b, self.tail, self.trusted = known
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
        phase = self.phase
        ctx = self.ctx
        return ctx.read_head if phase == P.IDLE or P.reads_heads(phase) else ctx.read_body

    def buffer_updated(self, nbytes: int) -> None:
        try:
            # (len(): compiled, a bytes' truth is a generic call and its length a field)
            if self.phase == P.IDLE and not self.queue and len(self.held) == 0:
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
                if self.phase != P.IDLE:  # (most reads end between requests: no timer to set)
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
                self.early += data  # read before the pause took effect
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

    def _rested(self, now: float) -> bool:
        """Idle (nothing read, nothing to answer) for REST_AFTER or longer."""
        return self.idle_since() >= 0 and now - self.idle_at >= REST_AFTER

    def rest(self, now: float) -> None:
        if not self._rested(now):
            return
        self.parser = None
        self.feed = None
        self.fed = None
        self.out = None
        deadline = self._deadline
        timer = self._timer
        if timer is None:
            if deadline and deadline - now <= TIMER_AHEAD:
                self._timer_at = deadline
                self._timer = self.loop.call_at(deadline, self._on_timer)
        elif deadline - now > TIMER_AHEAD:
            timer.cancel()
            self._timer = None
            self._timer_at = 0.0

    def parkable(self, now: float) -> bool:
        """Rested, with its idle timeout far enough for the sweep to keep
        (router.dataplane.parking): nothing of it is needed outside the kernel until it is
        readable."""
        return self._rested(now) and not self.eof and self._deadline - now > TIMER_AHEAD

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
        # sends next waits in the kernel and goes with the descriptor (router.process.handoff).
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
        if len(self.held) and not self.feeding:  # (len(): see buffer_updated)
            data, pos = self.held, self.held_at
            self.held = b""
            self._parse(data, pos)
            self._read_timers()
        if self.queue or len(self.held):
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
        self.early = b""
        if early:
            up.relay(early)
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
        deadline = self._deadline = (now or self.loop.time()) + timeout
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

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
                self._timer_at = self._deadline
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
                    # A successor takes it (router.process.dataplane: idle timeout 0 meanwhile).
                    handoff(self)
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













