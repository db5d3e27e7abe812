"""Reading a client's requests: llhttp fed no further ahead than the connection answers, the
parser's callbacks, the bodies llhttp does not frame, and the refusals.

``RequestReader`` is the reading half of a client connection (``router.dataplane.client.ClientConnection``
is the whole: the socket, the timers, the order of answers, the tunnel). Its parser turns bytes
into one ``Exchange`` per request. What a pipelining client sends past the request being
answered and the next one waits unparsed, reading paused (docs/request-path.md, "Memory"); a
request whose body llhttp does not frame (one with an ``Upgrade`` field: llhttp stops at its
head) has that body read by ``router.http.framing``, or by a fresh parser behind a stand-in
head (h2c). Which of these is going on is the connection's phase (``router.dataplane.phases``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable, Final

import httptools

from . import phases as P
from .context import ProxyContext
from .exchange import ClientSide, Exchange
from ..http import framing
from ..http.request_head import (Refused, field_lines, forwarded_tail, head_fields,
                                 read_request_head, request_line_at)
from .upstream import QUEUED

log = logging.getLogger("router.error")

# The end of a request head: llhttp is given at most one per call while requests are read
# ahead, so it never parses more requests than the connection will keep.
_HEAD_END: Final = b"\r\n\r\n"
# Head of a request to a parser that must go on reading the body of an upgrade request the
# router serves as a plain request (h2c): llhttp stopped at its head (see _upgrade_request).
_RESUME_LENGTH: Final = b"PUT / HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n"
_RESUME_CHUNKED: Final = b"PUT / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
# What a connection whose peer is not known forwards (one object for them all).
_NO_TAIL: Final = forwarded_tail(b"")


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


class RequestReader(ClientSide):
    """The reading half of a client connection (the methods it leaves to the whole are
    declared here, defined by ``ClientConnection``)."""

    __slots__ = ("ctx", "loop", "transport", "parser", "phase", "parsing", "active", "queue",
                 "peer", "peer_b", "tail", "trusted", "_deadline", "early", "decoder",
                 "head_bytes", "held", "held_at", "feeding", "body_left", "chunks", "whole",
                 "fed_one", "fed", "feed", "ahead", "line_src", "line_at", "line_len", "head_kept",
                 "head_fields")

    transport: asyncio.Transport

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        # llhttp's parser: dropped by ``rest`` once the connection has been idle a while
        # (router.dataplane.client.REST_AFTER), made again when the next request begins (_feed).
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        # Its feed_data, bound once (a method looked up per call: about 150 instructions more).
        self.feed: Callable[[bytes | memoryview], None] | None = self.parser.feed_data
        self.phase = P.IDLE
        self.parsing: Exchange | None = None  # the request whose head or body is being read
        self.active: Exchange | None = None  # the request being answered
        self.queue: deque[Exchange] | None = None  # requests read, waiting for their turn
        self.peer = "-"
        self.peer_b = b"-"
        self.tail = _NO_TAIL
        self.trusted = False
        self._deadline = 0.0  # when the phase's timer ends; 0: none runs
        self.early = b""  # bytes after an upgrade request, for the tunnel
        self.decoder: framing.BodyDecoder | None = None  # an upgrade request's body (DECODING_BODY)
        # What llhttp is being given (line_src[line_at:line_len]) while it is: a head begun in
        # it is read from there once llhttp has accepted it (on_headers_complete). line_at is
        # -1 once a head has been read from it.
        self.line_src: bytes | bytearray | None = None
        self.line_at = 0
        self.line_len = 0
        self.head_bytes = 0  # bytes read for a head that spans reads
        # A head that spans reads: its bytes read so far (from its request line), and how many
        # fields they begin (field_lines).
        self.head_kept: bytearray | None = None
        self.head_fields = 0
        # Bytes read but not parsed: held[held_at:] waits for the queued request to start.
        self.held = b""
        self.held_at = 0
        self.feeding = False  # inside _parse: llhttp must not be fed again from a callback
        self.whole = False  # llhttp is given a whole read: the requests begun are fed_one, fed
        # The first request begun in a whole read, and those after it (most reads begin one: no
        # list is touched for it; fed is made on the first use, dropped by rest).
        self.fed_one: Exchange | None = None
        self.fed: list[Exchange] | None = None
        self.ahead = False  # on_message_begin stopped llhttp: a third request began
        self.body_left = 0  # bytes of the Content-Length body being parsed not yet fed
        # Where the chunked body being parsed ends (llhttp reads it; this only follows it).
        self.chunks: framing.ChunkedDecoder | None = None

    # -- what the whole connection does (router.dataplane.client) -----------------------------
    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def _idle(self, now: float = 0.0) -> None:
        """Between requests: the idle timer runs (from ``now``, loop time; 0: the loop's)."""
        raise NotImplementedError

    def _set_deadline(self, timeout: float, now: float = 0.0) -> None:
        raise NotImplementedError

    def _move(self, to: int) -> None:
        frm = self.phase
        if ((to == P.READING_HEAD and frm == P.IDLE) or (to == P.IDLE and frm == P.READING_BODY)
                or (to == P.READING_BODY and frm == P.READING_HEAD)):
            self.phase = to  # a keep-alive request's moves, legal (phases.COMMON_MOVES): no lookup
        else:
            self.phase = P.connection_move(frm, to)

    def _closing(self) -> None:
        """Nothing more is read or forwarded (from any phase but CLOSING and CLOSED)."""
        if not P.shut(self.phase):
            self._move(P.CLOSING)
        self._deadline = 0.0
        self.held = b""

    # -- llhttp fed, never further ahead than the connection reads ------------------------
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
                    # (from 3 bytes back: the empty line of a head may begin in the bytes just
                    # given one at a time, and llhttp must be given no further than its end)
                    end = data.find(_HEAD_END, pos - 3 if pos > 3 else 0)
                    stop = n if end < 0 else end + 4
                if not self._feed(data, pos, -1 if pos == 0 and stop == n else stop):
                    return
                pos = stop
        finally:
            self.feeding = feeding

    def _whole(self, data: bytes | memoryview) -> bool:
        """Give llhttp a whole read that begins between requests with none waiting; True if
        what it did asks for ``_after_whole`` (with the read as bytes)."""
        if self.fed_one is not None:
            self._fed_clear()  # (cleared after each read, unless that read failed)
        self.whole = True
        fed_on = self._feed(data, 0, -1)
        self.whole = False
        if self.ahead:
            return True
        # (Stopped otherwise: refused, or an upgrade request whose rest of the read was passed
        # on already -- a chunked body the router reads for an h2c request has been followed
        # from there, and must not be scanned again from its head.)
        if fed_on and self.chunks is not None:
            fed = self.fed
            last = fed[-1] if fed else self.fed_one
            if last is not None and last is self.parsing:
                return True
        self.fed_one = None  # (as _fed_clear, without the call)
        fed = self.fed
        if fed:
            fed.clear()
        return False

    def _fed_list(self) -> list[Exchange]:
        """The requests begun in the whole read, in order."""
        one = self.fed_one
        return ([] if one is None else [one]) + (self.fed or [])

    def _fed_clear(self) -> None:
        self.fed_one = None
        fed = self.fed
        if fed:
            fed.clear()

    def _after_whole(self, data: bytes) -> int:
        """After ``_whole`` gave llhttp ``data``: where parsing goes on in it, or -1."""
        fed = self._fed_list()
        self._fed_clear()
        if not self.ahead:
            # A chunked body goes on in the next read: from where it began here, its end is
            # followed as llhttp reads it.
            start = _requests_end(data, fed[:-1])
            body = _past_head(data, start) if start >= 0 else -1
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
        self.parser = None
        self.feed = None  # a fresh one goes on from there (_feed)
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
        # A head begins or goes on here (after what ends the request before it, if any: see
        # on_message_begin), or nowhere. (A view is of the heads' read buffer, from its start:
        # buffer_updated's; its bytearray is known, not asked of the view.)
        self.line_src = data if isinstance(data, bytes) else self.ctx.read_head_buf
        self.line_at = pos
        self.line_len = len(data) if stop < 0 else stop
        feed = self.feed
        if feed is None:
            parser = self.parser = httptools.HttpRequestParser(self)
            feed = self.feed = parser.feed_data
        try:
            if stop < 0:
                feed(data)
            else:
                feed(memoryview(data)[pos:stop])
        except httptools.HttpParserUpgrade as e:
            upgrade = pos + e.args[0]  # (handled below, out of this handler: the parsing that
            # follows must not see this exception as the cause of its own)
        except httptools.HttpParserError as e:
            self.line_src = None
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
        if self.phase == P.READING_HEAD:
            return self._keep_head()
        self.line_src = None
        if upgrade >= 0:
            rest = data[upgrade:]
            self._upgrade_request(rest if isinstance(rest, bytes) else rest.tobytes())
            return False
        return True

    def _keep_head(self) -> bool:
        """What llhttp was given ends in a head: keep its bytes until the rest comes, and
        count its fields as llhttp reports them (one once the next begins), so that a head of
        too many is refused as they arrive, not once its bytes run out; False if it was."""
        src = self.line_src
        self.line_src = None
        at = self.line_at
        if src is None or at < 0:
            return True  # (on_message_begin stopped llhttp)
        kept = self.head_kept
        if kept is None:
            at = request_line_at(src, at)
            kept = self.head_kept = bytearray()
            self.head_fields = 0
        start = max(len(kept) - 2, 0)
        kept += memoryview(src)[at:self.line_len]
        self.head_fields += field_lines(kept, start)
        if self.head_fields > self.ctx.max_header_fields + 1:
            self._reject(431, b"too many header fields\n")
            return False
        return True

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
        if self.line_at < 0:
            self._after_request()
        self._move(P.READING_HEAD)
        ex = self.parsing = Exchange(self)
        if whole:
            if self.fed_one is None:
                self.fed_one = ex
            else:
                fed = self.fed
                if fed is None:
                    fed = self.fed = []
                fed.append(ex)
        self.head_bytes = 0
        if self.active is None:
            # Set only if the head is still incomplete at the end of this read
            # (data_received): most heads arrive whole, and then no clock or timer is touched.
            self._deadline = 0.0

    def _after_request(self) -> None:
        """A request begins where llhttp was given another one's head before: find where."""
        src = self.line_src
        if self.whole and self.fed_one is not None and src is not None:
            # Requests read whole from the start of this read are before it: it begins where
            # their framing ends (as where _after_whole goes on).
            data = src if isinstance(src, bytes) else bytes(src[:self.line_len])
            self.line_src = data
            self.line_at = _requests_end(data, self._fed_list())
            if self.line_at >= 0:
                return
            self.ahead = True
            raise _Ahead()
        # What llhttp is given past one head is the rest of its request: never another head.
        self.ctx.throttled.warning("ahead", "client %s: a request began where none was "
                                   "expected; reading stops", self.peer)
        self._closing()
        raise _Stop()

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        if ex is None or self.phase == P.RESUMED_BODY:
            return
        # (most targets come in one piece: a concatenation with b"" costs two buffer exports)
        if len(ex.url):  # (len(): see ClientConnection.buffer_updated)
            url = ex.url + url
        ex.url = url
        if len(url) > self.ctx.max_request_line:
            raise Refused(414, "request line too long")

    def on_headers_complete(self) -> None:
        ex = self.parsing
        parser = self.parser  # (the one calling: never None here)
        if ex is None or self.phase != P.READING_HEAD or parser is None:
            return
        ctx = self.ctx
        # The fields, read from the head's bytes now that llhttp has accepted it: no callback
        # per field (llhttp reports them only to a protocol with on_header).
        head = self.line_src
        assert head is not None  # (what llhttp was given: _feed)
        at = self.line_at
        self.line_at = -1
        kept = self.head_kept
        if kept is not None:
            self.head_kept = None
            kept += memoryview(head)[at:self.line_len]
            head = kept  # (from its request line)
            at = 0
        method = parser.get_method()
        fields, http11 = head_fields(head, at, method, ex.url)
        if len(fields) > ctx.max_header_fields:
            raise Refused(431, "too many header fields")
        ex.headers = fields
        upgrade = parser.should_upgrade()
        version = "1.1" if http11 else parser.get_http_version()
        read_request_head(ex, method, ex.url, version, fields, upgrade,
                          max_header=ctx.max_header, max_headers=ctx.max_headers,
                          trusted=self.trusted, peer=self.peer_b, tail=self.tail, ids=ctx.ids)
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
        # A head that begins later in what llhttp is given does not begin where that began:
        # on_message_begin finds where (a whole read) or stops reading (see _after_request).
        self.line_at = -1
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
        parser = self.parser = httptools.HttpRequestParser(self)
        self.feed = parser.feed_data
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
                parser.feed_data(stand_in)
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
            self.early += rest
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
