"""Pooled keep-alive connections to backends, and how a response is read from one.

One ``UpstreamPool`` per process (router.dataplane.pool) keeps the idle ones. An ``UpstreamConnection`` is the protocol of one backend socket.
While it serves a request (an ``UpstreamRequest``: the exchange, seen from here) it reads the
response and hands it over piece by piece: each head (``response_head``), the body
(``response_body``), the end (``response_end``), or what went wrong. docs/request-path.md,
"Reading a response", has the whole story; in short:

- a head is read up to its empty line, then checked and rewritten for the client by
  ``router.http.response_head`` (in one pass in C when built); the pieces of a head that comes
  in several reads go to llhttp as they arrive (a parser with no per-field callback), so that a
  malformed one is refused before its end; 1xx heads are passed on and the next head is read;
- a ``Content-Length`` body is forwarded as read, only counted; a chunked body goes through
  llhttp (its ``on_body``); a body that ends with the connection is forwarded until the close;
- bytes past the end of a body mean the backend's framing cannot be trusted: the connection is
  not used again;
- the connection goes back to the pool only when the request was sent whole, the response was
  read whole, and both the backend and the framing allow it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools

from . import phases as P
from ..http import framing
from ..http.request_head import RequestHead
from ..http.response_head import HEAD_CHECK, ResponseError

if TYPE_CHECKING:
    from .pool import UpstreamPool

# Why a client connection's reading is paused (bit flags; reading resumes when none is left).
UPSTREAM_FULL: Final = 1   # the backend's socket buffer is full
BODY_BUFFERED: Final = 2   # body bytes wait for a backend connection
QUEUED: Final = 4          # a pipelined request waits for the one before it

# A response head larger than this is refused (nginx's proxy_buffer_size is 4-8 KiB; generous).
MAX_RESPONSE_HEAD: Final = 65536

log = logging.getLogger("router.error")

# What the exchange tells of a response head (UpstreamRequest.response_head): (end, status, body,
# length, reusable, taken): where the head's empty line starts in the bytes read (-1: the head is
# not whole yet), its status, how its body is framed (router.http.framing), the Content-Length,
# whether the backend connection may serve another request after it, and how many bytes of the
# body after the head went with it (check_response_head). A tuple: compiled, a struct returned
# by value.
Head = tuple[int, int, int, int, bool, int]
NO_HEAD: Final[Head] = (-1, 0, framing.NONE, 0, False, 0)


class UpstreamRequest(RequestHead):
    """A request as the backend connection serving it sees it: its head, and the calls that
    take its response. The exchange (``router.dataplane.exchange.Exchange``) is the one implementation."""

    # Kept by router.dataplane.deadlines (the implementation starts them at 0.0 and None): when
    # the response timeout ends its wait for a head (loop time; 0.0: not waiting), and the
    # requests waiting before and after it.
    __slots__ = ("response_deadline", "wait_prev", "wait_next")

    response_deadline: float
    wait_prev: UpstreamRequest | None
    wait_next: UpstreamRequest | None

    def response_head(self, up: "UpstreamConnection", buf: bytes) -> Head:
        """The response head (1xx or final) at the start of ``buf`` (what was read of it, and
        maybe more), checked and rewritten (``router.http.response_head.check_response_head``);
        ``NO_HEAD`` if its end has not come yet. ``ResponseError`` if the router will not pass
        it on."""
        raise NotImplementedError

    def response_body(self, data: bytes | memoryview) -> None:
        """Body bytes, to forward as they are: ``bytes``, or a view into a read's ``bytes``
        (immutable, so the view may be kept, as a transport's write buffer does)."""
        raise NotImplementedError

    def response_end(self, up: "UpstreamConnection", reusable: bool) -> None:
        raise NotImplementedError

    def response_upgraded(self, up: "UpstreamConnection", rest: bytes) -> None:
        raise NotImplementedError

    def response_failed(self, up: "UpstreamConnection", reason: str, detail: str) -> None:
        """The backend broke the protocol (``reason`` for the metrics, ``detail`` for the log)."""
        raise NotImplementedError

    def upstream_lost(self, up: "UpstreamConnection") -> None:
        """The backend connection closed while this request used it."""
        raise NotImplementedError

    def flush(self) -> None:
        """Write what the last read produced to the client, in one call."""
        raise NotImplementedError

    def unsent(self) -> int:
        """Bytes written to the client that its transport still holds (has not handed to the
        socket): a view of the read buffer among them keeps the buffer (see ``buffer_updated``)."""
        raise NotImplementedError

    def backpressure(self, full: bool) -> None:
        """The backend's socket buffer is full (stop reading the client) or drained."""
        raise NotImplementedError

    def response_timeout(self) -> None:
        """No response head within the response timeout (``router.dataplane.deadlines``)."""
        raise NotImplementedError

    def broken(self, err: Exception) -> None:
        """A move the phase tables forbid was met while serving this request: its client is
        dropped (``router.dataplane.phases``: a bug of the router, never an answer to send)."""
        raise NotImplementedError


class Tunnel:
    """The other end of an upgraded connection (the client connection)."""

    __slots__ = ()

    def tunnel_data(self, data: bytes) -> None:
        raise NotImplementedError

    def tunnel_closed(self) -> None:
        raise NotImplementedError

    def tunnel_backpressure(self, full: bool) -> None:
        raise NotImplementedError

    def broken(self, err: Exception) -> None:
        """As ``UpstreamRequest.broken``: the client is dropped."""
        raise NotImplementedError


# Below this many bytes a body read together with its head is copied out of the read (cheaper
# than a view); above it the view avoids copying most of the read once more.
_VIEW_MIN: Final = 4096


# A connection whose last response had a body this long or longer (or one that ends with the
# connection) reads into one buffer per process, of the size uvloop reads with: the body goes
# to the client as a view of it (router.dataplane.pool.READ_BUFFER), not copied into a bytes object per read. A read into a buffer
# costs more calls into Python (get_buffer, then buffer_updated) than uvloop's bytes, about
# what copying 1.5 KiB costs; below this, bytes are read.
BUFFERED_BODY: Final = 16384


def _after(buf: bytes, start: int) -> bytes | memoryview:
    """What ``buf`` holds from ``start`` on: a copy when short, a view when long."""
    return buf[start:] if len(buf) - start < _VIEW_MIN else memoryview(buf)[start:]


class UpstreamConnection:
    """The protocol of one backend socket (duck-typed, with no asyncio.Protocol base, so that
    mypyc compiles it as a native class)."""

    __slots__ = ("pool", "key", "transport", "request", "reused", "idle_since", "closed",
                 "tunnel", "_paused", "phase", "_buf", "_parser", "_reusable", "body_left",
                 "_extra", "_writer", "_buffered")

    transport: asyncio.Transport

    def __init__(self, pool: "UpstreamPool", key: str) -> None:
        self.pool = pool
        self.key = key
        self.request: UpstreamRequest | None = None
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        self.tunnel: Tunnel | None = None  # the client, once upgraded
        self._paused = False
        self.phase = P.UP_IDLE  # what its reading side reads (router.dataplane.phases)
        self._buf = b""  # a response head being read
        self._parser: httptools.HttpResponseParser | None = None
        self._reusable = False  # the response's head allows the connection's reuse
        self.body_left = 0  # bytes of a Content-Length body still to forward
        self._extra = False  # the backend sent bytes past the end of a chunked body
        self._buffered = False  # reads go to the pool's buffer (_read_into_buffer)
        self._writer = framing.AS_IS  # how the request's body is written (chosen by send_head)

    def _move(self, to: int) -> None:
        self.phase = P.upstream_move(self.phase, to)

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def _read_into_buffer(self, yes: bool) -> None:
        """Read into the pool's buffer (``_BufferedReads`` as the transport's protocol), or
        bytes (this connection as its protocol), from the next read on."""
        if yes != self._buffered:
            self._buffered = yes
            self.transport.set_protocol(cast(asyncio.BaseProtocol,
                                             _BufferedReads(self) if yes else self))

    def buffer_updated(self, nbytes: int) -> None:
        """A read of ``nbytes`` into the pool's read buffer. Body bytes (and the body after a
        head, when long) go on as views of it, to be written to the client at once; what a
        client's transport keeps of them unsent keeps the buffer too, so that the pool reads
        into a new one from then on (``UpstreamPool.lend``). A client that has unsent bytes
        already is given copies: it keeps no buffer. Heads, chunked bodies and tunnels read
        bytes, as from data_received."""
        pool = self.pool
        req = self.request
        phase = self.phase
        if req is not None and self.tunnel is None:
            try:
                if phase == P.UP_LENGTH or phase == P.UP_EOF:
                    if not req.unsent():
                        view = pool.read_view[:nbytes]
                        if phase == P.UP_LENGTH:
                            self._length_body(req, view)
                        else:
                            req.response_body(view)
                            req.flush()
                        pool.lend(req)
                        return
                elif phase == P.UP_HEAD and nbytes > _VIEW_MIN and not self._buf:
                    end = pool.read_buf.find(b"\r\n\r\n", 0, nbytes)
                    if end >= 0 and nbytes - end - 4 >= _VIEW_MIN and not req.unsent():
                        view = pool.read_view
                        self._heads(req, view[:end + 4].tobytes(), view[end + 4:nbytes])
                        pool.lend(req)
                        return
            except P.PhaseError as e:
                self._broken(e)
                return
        self.data_received(pool.read_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        try:
            tunnel = self.tunnel
            if tunnel is not None:
                tunnel.tunnel_data(data)
                return
            req = self.request
            if req is None:
                # Bytes from an idle backend connection: it is not speaking HTTP to us any
                # more. Never hand it to a request.
                self.close()
                return
            phase = self.phase
            if phase == P.UP_LENGTH:
                self._length_body(req, data)
            elif phase == P.UP_HEAD:
                self._heads(req, data)
            elif phase == P.UP_CHUNKED:
                self._chunked_body(req, data)
            elif phase == P.UP_EOF:
                req.response_body(data)
                req.flush()
        except P.PhaseError as e:
            self._broken(e)

    def _broken(self, err: P.PhaseError) -> None:
        """A move the phase tables forbid, met in a call from the loop: this connection is cut,
        and the client it serves dropped (``UpstreamRequest.broken``)."""
        req = self.request
        tunnel = self.tunnel
        self.request = None
        self.tunnel = None
        self.abort()
        if req is not None:
            req.broken(err)
        elif tunnel is not None:
            tunnel.broken(err)
        else:
            log.error("backend %s: %s; connection dropped", self.key, err)

    def _heads(self, req: UpstreamRequest, data: bytes, tail: memoryview | None = None) -> None:
        """Read response heads (1xx, then the final one) and what follows them in this read:
        ``tail`` when it follows ``data`` (a head to its end) as a view of the read buffer."""
        buf = self._buf + data if self._buf else data
        fed = len(self._buf)
        while True:
            # The head's end is found by the check, which reads the head anyway.
            try:
                end, status, body, length, reusable, taken = req.response_head(self, buf)
            except ResponseError as e:
                self._fail(req, str(e))
                return
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self._fail(req, "response head too large")
                    return
                if not self._check(req, buf[fed:]):
                    return
                self._buf = buf
                return
            # The whole head is checked with the rest (check_response_head); the checking
            # parser, if the head came in pieces, has served.
            self._parser = None
            if self.request is not req:
                return  # the exchange ended meanwhile (the client went away)
            start = end + 4
            if status < 200 and status != 101:  # interim: the next head follows
                buf, fed = buf[start:], 0
                if tail is not None:
                    buf, tail = buf + tail.tobytes(), None
                if not buf:
                    self._buf = b""
                    req.flush()
                    return
                continue
            self._buf = b""
            start += taken  # (body bytes that went with the head)
            # What follows the head in this read.
            rest = tail if tail is not None else _after(buf, start) if len(buf) > start else None
            if status == 101:
                self._move(P.UP_TUNNEL)
                req.response_upgraded(self, b"" if rest is None else bytes(rest))
                return
            self._reusable = reusable
            if body == framing.LENGTH:
                self._move(P.UP_LENGTH)
                self.body_left = length - taken
                self._read_into_buffer(length >= BUFFERED_BODY)
                if rest is not None or self.body_left == 0:
                    self._length_body(req, b"" if rest is None else rest)
                else:
                    req.flush()
            elif body == framing.CHUNKED:
                # llhttp reads the chunks: a parser with the body callbacks, given the head again
                # (the checking one has none: a callback per response costs as much as the rest).
                self._move(P.UP_CHUNKED)
                self._extra = False
                self._parser = parser = httptools.HttpResponseParser(self)
                parser.feed_data(buf[:start])
                if rest is not None:
                    self._chunked_body(req, rest)
                else:
                    req.flush()
            elif body == framing.EOF:
                self._move(P.UP_EOF)
                self._read_into_buffer(True)
                if rest is not None:
                    req.response_body(rest)
                req.flush()
            else:
                self._move(P.UP_IDLE)
                self.request = None
                req.response_end(self, reusable and rest is None)
            return

    def _check(self, req: UpstreamRequest, data: bytes) -> bool:
        """Feed the bytes of a head not read whole yet to this response's checking parser, so
        that a malformed one is refused before its end; False once it has failed."""
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpResponseParser(HEAD_CHECK)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101 head: complete; what follows is the new protocol
        except httptools.HttpParserError as e:
            self._fail(req, f"malformed response: {e}")
            return False
        return True

    def _length_body(self, req: UpstreamRequest, data: bytes | memoryview) -> None:
        """Bytes of a Content-Length body, forwarded as read."""
        left = self.body_left
        n = len(data)
        if n < left:
            self.body_left = left - n
            req.response_body(data)
            req.flush()
            return
        self.body_left = 0
        reusable = self._reusable
        if n > left:  # bytes past the announced body: framing is broken, do not reuse
            data = data[:left]
            reusable = False
        if data:
            req.response_body(data)
        self._move(P.UP_IDLE)
        self.request = None
        req.response_end(self, reusable)

    def _chunked_body(self, req: UpstreamRequest, data: bytes | memoryview) -> None:
        parser = self._parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, P.PhaseError):
                raise e.__context__  # from a callback: not the backend's fault
            if self.phase == P.UP_CHUNKED:
                self._fail(req, f"malformed chunked body: {e}")
                return
            # Past the end of the body: the backend sends what it should not.
            self._extra = True
        if self.phase == P.UP_CHUNKED:
            req.flush()
            return
        self._parser = None
        self.request = None
        req.response_end(self, self._reusable and not self._extra)

    # llhttp's callbacks for a chunked body (no per-field callback: the head is checked whole).
    def on_body(self, data: bytes) -> None:
        req = self.request
        if req is not None and self.phase == P.UP_CHUNKED:
            req.response_body(data)

    def on_message_complete(self) -> None:
        if self.phase == P.UP_CHUNKED:
            self._move(P.UP_IDLE)

    def on_message_begin(self) -> None:
        # (The parser with these callbacks is made for a response's body, and dropped with it.)
        if self.phase == P.UP_IDLE:
            self._extra = True  # a second message after the body: never reuse

    def _fail(self, req: UpstreamRequest, detail: str) -> None:
        self._move(P.UP_IDLE)
        self._parser = None
        self._buf = b""
        req.response_failed(self, "protocol", detail)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        req = self.request
        try:
            if req is not None:
                eof = self.phase == P.UP_EOF
                self._move(P.UP_IDLE)
                self.request = None
                if eof:
                    req.response_end(self, False)  # the close is the end of this body
                else:
                    req.upstream_lost(self)
            elif self.tunnel is not None:
                tunnel, self.tunnel = self.tunnel, None
                tunnel.tunnel_closed()
            else:
                self.pool.discard(self)
        except P.PhaseError as e:
            self.request = req
            self._broken(e)

    def pause_writing(self) -> None:
        self._backpressure(True)

    def resume_writing(self) -> None:
        self._backpressure(False)

    def _backpressure(self, full: bool) -> None:
        try:
            if self.tunnel is not None:
                self.tunnel.tunnel_backpressure(full)
            elif self.request is not None:
                self.request.backpressure(full)
        except P.PhaseError as e:
            self._broken(e)

    # -- control from the exchange -------------------------------------------------------
    def attach(self, req: UpstreamRequest) -> None:
        self._move(P.UP_HEAD)
        self.request = req
        self._buf = b""
        self._parser = None
        self._reusable = False
        self.body_left = 0

    # -- writing the request: this connection's own socket ---------------------------------
    def send_head(self, head: bytes, body: list[bytes] | None, chunked: bool,
                  end: bool) -> None:
        """Write a request's head, the body bytes held for it so far, and -- if ``end`` -- the
        body's end, in one write; the body's writer (as is, or chunked) is chosen here for the
        rest of the request."""
        writer = self._writer = framing.CHUNKED_WRITER if chunked else framing.AS_IS
        if body:
            head += b"".join([writer.frame(d) for d in body])
        if end and chunked:
            head += framing.LAST_CHUNK
        self.transport.write(head)

    def send_body(self, data: bytes) -> None:
        self.transport.write(self._writer.frame(data))

    def end_body(self) -> None:
        last = self._writer.last()
        if last:
            self.transport.write(last)

    def unsent(self) -> int:
        """Bytes written to this connection that have not left for the backend yet."""
        return self.transport.get_write_buffer_size()

    # -- a tunnel: the client's bytes, as they are --------------------------------------------
    def start_tunnel(self, tunnel: Tunnel) -> None:
        self.request = None
        self.tunnel = tunnel

    def relay(self, data: bytes) -> None:
        self.transport.write(data)

    def close_tunnel(self) -> None:
        """The client's side of the tunnel is gone: so is this one."""
        self.tunnel = None
        self.close()

    def pause_reading(self) -> None:
        if not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def release(self, keep: bool, now: float) -> None:
        """Detach from the request; back to the pool if ``keep`` (idle since ``now``, the
        loop's time), else close."""
        self.request = None
        self._parser = None
        self._reusable = False
        if self.phase != P.UP_IDLE:
            self._move(P.UP_IDLE)
        if keep and not self.closed:
            if self._paused:
                self.resume_reading()
            self.pool.put(self, now)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.request = None
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.request = None
            self.transport.abort()


class _BufferedReads:
    """A backend connection's protocol while it reads into the pool's buffer: uvloop calls
    get_buffer and buffer_updated instead of data_received when a protocol has them."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.pool.read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.buffer_updated(nbytes)

    def data_received(self, data: bytes) -> None:  # (an event loop without get_buffer)
        self.conn.data_received(data)

    def eof_received(self) -> bool:
        return self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()
