"""One client connection and its requests: look up, pick, forward, stream.

``ClientConnection`` is the asyncio Protocol of a client socket. Its httptools request parser
turns bytes into one ``Exchange`` per request; an exchange is routed (table lookup, sticky
token, balancer), attached to a pooled ``UpstreamConnection``, and is the callback target of
that connection's response parser, so the response streams back to the client event by
event. No coroutine runs per request: only opening a new backend connection awaits.

Flow control: a full backend socket pauses reading from the client, a full client socket
pauses reading from the backend (uvicorn's ``FlowControl``), and bytes that wait for a
backend connection are capped before the client is paused, so a body is never held whole.

This module is the one place where failures become 4xx/5xx answers (``_local``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from .accesslog import AccessLog
from .counters import UnroutedStats
from .sticky import TokenCodec, cookie_value
from .upstream import BODY_BUFFERED, QUEUED, UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    import ipaddress

    from .config import Config
    from .health import PassiveHealth
    from .table import App, Backend, RoutingTable, Service

log = logging.getLogger("router.error")

# Body bytes held while no backend connection is ready, and kept for a retry (uvicorn's
# HIGH_WATER_LIMIT). Past it the client is paused, and a request is no longer replayable.
HIGH_WATER = 65536
MAX_ATTEMPTS = 3  # SPEC 4.2: at most 2 retries
# A non-idempotent request is not sent on a pooled connection idle longer than this: below
# Node.js's 5 s keepAliveTimeout, the shortest common backend default, so it does not meet a
# backend closing that connection at the same instant (it could not be retried).
UNSAFE_REUSE_IDLE = 2.0

# Hop-by-hop headers (RFC 9110 7.6.1) plus those the router sets itself.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade"})
_REQ_OWN = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                      b"x-request-id", b"content-length", b"host"})
# Client-address headers that only a trusted proxy may pass on (RFC 7239, nginx's X-Real-IP).
_REQ_TRUSTED_ONLY = frozenset({b"forwarded", b"x-real-ip"})
_REQ_SKIP = _HOP | _REQ_OWN | _REQ_TRUSTED_ONLY | {b"expect"}
# What a Connection header may never remove (SPEC 4.2).
_PROTECTED = _REQ_OWN | {b"cookie", b"set-cookie"}
# Connection values that name no other header: nothing to strip beyond the hop-by-hop set.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})
# The hop-by-hop fields and Content-Length in a lowered response head, with their values.
_RESP_HOP_RE = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade"
    rb"|content-length):[ \t]*([^\r]*)")
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")
# RFC 9110 7.2: a DNS name or an IP literal, optional port. No userinfo, no list, no spaces
# (the reg-name's percent-encodings and sub-delims are legal but no DNS name uses them).
_HOST_RE = re.compile(
    rb"^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z")
# Host values already checked, so the regex runs once per distinct value, not per request.
_GOOD_HOSTS: set[bytes] = set()
_GOOD_HOSTS_MAX = 4096
# Percent-encodings a backend may decode into path structure: ".", "/", "\\", NUL.
# What makes a request target need the checks below: a query, a fragment, "%", "\\", "/." or
# "//". Most targets have none of them, and one search tells.
_URL_SPECIAL = re.compile(rb"[?#%\\]|/[./]")
_PCT_STRUCT_RE = re.compile(rb"%(?:2[eEfF]|5[cC]|00)")
_DOT_SEGMENTS = frozenset({b".", b".."})

_REASONS = {
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    414: b"URI Too Long", 417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    499: b"Client Closed Request", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
_ALLOW = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"


# Below this many body bytes, head and body are joined into one buffer before writing.
_JOIN_MAX = 4096


class _HeadCheck:
    """The target of a response parser that only checks a head: no callback at all."""

    __slots__ = ()


_HEAD_CHECK = _HeadCheck()


class _Refused(Exception):
    """Raised from a parser callback: the request is answered with ``status`` and closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# File descriptors kept free of client connections: the admin API, health checks, the store.
FD_RESERVE = 128


def fd_connection_cap() -> int:
    """Client connections this process can hold without running out of file descriptors.

    Each client connection may hold a backend connection too, so half of what RLIMIT_NOFILE
    leaves after a reserve: past it, new connections are refused at accept (closed at once)
    and the admin API still has descriptors to answer with.
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1 << 30
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, (soft - FD_RESERVE) // 2)


def host_ok(host: bytes) -> bool:
    """A syntactically valid Host value (RFC 9112 3.2: anything else is a 400)."""
    if host in _GOOD_HOSTS:
        return True
    if not _HOST_RE.match(host):
        return False
    if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(host)
    return True


def clean_path(path: bytes) -> bytes | None:
    """The path to route and forward, or None to refuse it (400).

    A proxy that matches ``/api`` and a backend that reads ``/api/../admin`` as ``/admin`` see
    two different requests. So the router refuses what a backend could read differently from
    how the router matched it: dot segments (``.``/``..``, literal or percent-encoded),
    percent-encoded ``/``, ``\\`` or NUL, and a raw ``\\``. Browsers and curl remove dot segments
    before sending, so only crafted requests carry them. Runs of ``/`` are merged (nginx's
    ``merge_slashes``), since sloppy clients do send ``//`` and backends read it as ``/``.
    """
    if b"\\" in path:
        return None
    if b"%" in path and _PCT_STRUCT_RE.search(path):
        lowered = path.lower()
        if b"%2f" in lowered or b"%5c" in lowered or b"%00" in lowered:
            return None
        if any(seg.replace(b"%2e", b".") in _DOT_SEGMENTS for seg in lowered.split(b"/")):
            return None
    if b"/." in path and any(seg in _DOT_SEGMENTS for seg in path.split(b"/")):
        return None
    while b"//" in path:
        path = path.replace(b"//", b"/")
    return path


class ResponseDeadlines:
    """The response timeout of every exchange that waits for a backend's head, on one timer.

    Per request this is a dict insert and delete instead of a timer handle made and
    cancelled. The timer is set for the earliest deadline it knows of; when it fires it ends
    every exchange past its deadline and is set again for the earliest left. With one timeout
    for all, the entry it is set for is usually long gone by then, so it fires about once per
    timeout period.
    """

    __slots__ = ("ctx", "waiting", "_handle", "_when")

    def __init__(self, ctx: "ProxyContext") -> None:
        self.ctx = ctx
        self.waiting: dict[Exchange, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0  # when _handle fires (kept: read on every add, cheaper than when())

    def add(self, ex: "Exchange") -> None:
        loop = self.ctx.loop
        deadline = loop.time() + self.ctx.response_timeout
        self.waiting[ex] = deadline
        ex.waiting = True
        self._set(deadline)

    def _set(self, when: float) -> None:
        """Make the timer fire no later than ``when``."""
        handle = self._handle
        if handle is None or when < self._when:
            if handle is not None:
                handle.cancel()
            self._when = when
            self._handle = self.ctx.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = None
        waiting = self.waiting
        now = self.ctx.loop.time()
        for ex in [ex for ex, deadline in waiting.items() if deadline <= now]:
            if waiting.pop(ex, None) is not None:
                ex.waiting = False
                ex.response_timeout()
        if waiting:
            self._set(min(waiting.values()))


class ProxyContext:
    """Everything a worker's connections share; ``table`` is the swap point (STYLE 2)."""

    def __init__(self, config: "Config", table: "RoutingTable", pool: UpstreamPool,
                 codec: TokenCodec, loop: asyncio.AbstractEventLoop,
                 passive: "PassiveHealth") -> None:
        self.table = table
        self.pool = pool
        self.passive = passive
        self.codec = codec
        self.loop = loop
        self.unrouted = UnroutedStats()
        self.deadlines = ResponseDeadlines(self)
        self.connections: set[ClientConnection] = set()
        self.accepting = True
        self.configure(config)
        self._rid_prefix = os.urandom(6).hex().encode() + b"-"
        self._rid_next = 0

    def configure(self, config: "Config") -> None:
        """Settings that a reload may change (listen addresses are not among them)."""
        self.config = config
        cookie = config.sticky.cookie.encode()
        self.cookie_eq = cookie + b"="
        self.set_cookie_prefix = b"Set-Cookie: " + cookie + b"="
        t = config.timeouts
        self.response_timeout = t.response
        self.client_header_timeout = t.client_header
        self.client_idle_timeout = t.client_idle
        self.client_body_timeout = t.client_body
        lim = config.limits
        self.max_request_line = lim.max_request_line
        self.max_header = lim.max_header
        self.max_headers = lim.max_headers
        # Bytes a head in progress may take over further reads before it is refused: a bound
        # no head within the limits reaches (a field of one-byte name and value is 5 bytes).
        self.max_head_read = 4 * (lim.max_request_line + lim.max_headers)
        self.max_connections = min(lim.max_connections, fd_connection_cap())
        if self.max_connections < lim.max_connections:
            log.info("limits.max_connections %d lowered to %d: RLIMIT_NOFILE leaves room for "
                     "no more (each client may hold a backend connection too)",
                     lim.max_connections, self.max_connections)
        self.trusted: tuple["ipaddress.IPv4Network | ipaddress.IPv6Network", ...] = config.trusted_proxies
        old = getattr(self, "log_access", None)
        if old is not None:
            old.flush()
        self.log_access: AccessLog | None = None
        if config.access_log.enabled:
            self.log_access = AccessLog(self.loop, config.access_log.format)

    def backend_failed(self, be: "Backend", reason: str, passive: bool = True) -> None:
        """Count a failed use of ``be`` (metrics) and report it to passive health."""
        be.stats.error(reason)
        if passive:
            self.passive.failure(be)

    def request_id(self) -> bytes:
        self._rid_next += 1
        return self._rid_prefix + b"%x" % self._rid_next


class Exchange:
    """One request and its response; the target of the backend's response parser."""

    __slots__ = (
        "conn", "method", "url", "headers", "header_bytes", "host", "cookie", "keep_alive",
        "http11", "upgrade", "chunked", "body_done", "buf", "buf_size",
        "replayable", "head", "error", "app", "service", "backend", "set_cookie", "tried",
        "attempts", "upstream", "waiting", "started", "status", "reason", "rheaders",
        "resp_started", "rechunk", "close_after", "interim", "done", "upgraded", "early",
        "request_id", "path", "eof_body", "out", "stale", "resp_length", "body_seen", "keep_up",
    )

    # Set once the request head is complete (ClientConnection.on_headers_complete, _prepare).
    method: bytes
    http11: bool
    keep_alive: bool
    upgrade: bool
    chunked: bool
    cookie: bytes | None
    head: bytes
    host: bytes
    path: bytes
    request_id: bytes
    started: float

    def __init__(self, conn: "ClientConnection") -> None:
        self.conn = conn
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body_done = False
        self.buf: list[bytes] | None = []
        self.buf_size = 0
        self.replayable = True
        self.error = 0
        self.app: App | None = None
        self.service: Service | None = None
        self.backend: Backend | None = None
        self.set_cookie = b""
        self.tried: list[Backend] | None = None
        self.attempts = 0
        self.upstream: UpstreamConnection | None = None
        self.waiting = False  # in ProxyContext.deadlines: the response timeout runs
        self.request_id = b""  # set with the head; a request refused before has none
        self.status = 0
        self.reason = b""
        self.rheaders: list[tuple[bytes, bytes]] = []
        self.resp_started = False
        self.rechunk = False
        self.close_after = False
        self.interim = False
        self.done = False
        self.upgraded = False
        self.early: list[bytes] | None = None
        self.eof_body = False
        self.stale = False  # already retried once after a pooled connection turned out closed
        # Response bytes parsed from one read of the backend, written to the client in one
        # call at the end of that read (head and body of a small response: one send, not two).
        self.out: list[bytes | memoryview] = []
        # A Content-Length response body: its length, the bytes the parser has handed over, and
        # whether the backend connection may be reused (known at the head). The rest of such a
        # body is forwarded as read, past the parser (UpstreamConnection.raw_body).
        self.resp_length = -1
        self.body_seen = 0
        self.keep_up = False

    # -- request body from the client ----------------------------------------------------
    def body(self, data: bytes) -> None:
        up = self.upstream
        buf = self.buf
        if buf is not None:
            if self.buf_size + len(data) <= HIGH_WATER or up is None:
                buf.append(data)
                self.buf_size += len(data)
                if up is None:
                    if self.buf_size > HIGH_WATER:
                        self.conn.pause(BODY_BUFFERED)
                    return
            else:
                self.buf = None  # too large to replay: stream from here on
                self.replayable = False
        if up is not None and not self.done:
            if self.chunked:
                up.transport.write(b"%x\r\n%b\r\n" % (len(data), data))  # type: ignore[union-attr]
            else:
                up.transport.write(data)  # type: ignore[union-attr]

    def body_end(self) -> None:
        self.body_done = True
        up = self.upstream
        if up is not None and not self.done:
            if self.chunked:
                up.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
            if not self.waiting and not self.resp_started:
                self.conn.ctx.deadlines.add(self)

    # -- the backend's response (httptools callbacks) ----------------------------------------
    def on_message_begin(self) -> None:
        pass

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.rheaders.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        up = self.upstream
        status = up.parser.get_status_code()  # type: ignore[union-attr]
        if status < 200 and status != 101:
            self.interim = True
            if status == 100 and self.http11:
                self.out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.rheaders = []
            return
        if status == 101 and not self.upgrade:
            self.upstream_failed(up, "protocol", "101 to a request that asked for no upgrade")  # type: ignore[arg-type]
            return
        self._response_began(status)
        self.out.append(self._response_head(status))
        if status == 101:
            self.upgraded = True  # tunnel once the parser hands over the rest (upstream_upgraded)
        elif self.method == b"HEAD":
            # llhttp would wait for the body that Content-Length announces; there is none.
            self.finish(up.parser.should_keep_alive())  # type: ignore[union-attr]
        else:
            self.keep_up = up.parser.should_keep_alive()  # type: ignore[union-attr]

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.rechunk:
            self.out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.body_seen += len(data)
            self.out.append(data)

    def on_message_complete(self) -> None:
        if self.done or self.upgraded:
            return
        if self.interim:
            self.interim = False
            return
        if self.rechunk:
            self.out.append(b"0\r\n\r\n")
        self.finish(self.upstream.parser.should_keep_alive())  # type: ignore[union-attr]

    def _response_began(self, status: int) -> None:
        if self.waiting:
            self.unwait()
        passive = self.conn.ctx.passive
        if passive.watching and self.backend is not None:
            passive.success(self.backend)
        self.status = status
        self.resp_started = True

    def _response_head(self, status: int) -> bytes:
        """The head for the client, from the backend's parsed head (the full parser's path)."""
        out = [b"HTTP/1.1 %d %b" % (status, self.reason)]
        conn_tokens: set[bytes] | None = None
        has_length = False
        chunked = False
        upgrade_to = b""
        for name, value in self.rheaders:
            lname = name.lower()
            if lname in _HOP:
                if lname == b"connection":
                    if value not in _PLAIN_CONNECTION:  # names more than the usual tokens
                        conn_tokens = _tokens(value, conn_tokens)
                elif lname == b"transfer-encoding":
                    chunked = value.lower().rstrip().endswith(b"chunked")
                elif lname == b"upgrade":
                    upgrade_to = value
                continue
            if lname == b"content-length":
                has_length = True
                if status != 204 and status != 304 and value.isdigit():
                    self.resp_length = int(value)
            out.append(name + b": " + value)
        if conn_tokens and not conn_tokens <= _HOP:
            out = [out[0]] + [
                h for h in out[1:]
                if (n := h.split(b":", 1)[0].lower()) not in conn_tokens or n in _PROTECTED]
        if status == 101:
            out.append(b"Connection: upgrade\r\nUpgrade: " + upgrade_to)
            out.append(b"\r\n")
            return b"\r\n".join(out)
        out.append(self._head_end(status, has_length, chunked))
        return b"\r\n".join(out)

    def _head_end(self, status: int, has_length: bool, chunked: bool) -> bytes:
        """What the router adds to a final response head (not 101), through its last CRLF."""
        end = b"\r\n"
        if self.method != b"HEAD" and status != 204 and status != 304 and not has_length:
            if chunked and self.http11:
                self.rechunk = True
                end = b"Transfer-Encoding: chunked\r\n" + end
            else:
                # Body delimited by the end of the connection: so is ours.
                self.eof_body = True
                self.close_after = True
        if self.upgrade:
            self.close_after = True  # upgrade refused: the client's parser state is spent
        if (self.close_after or not self.keep_alive or not self.body_done
                or not self.conn.ctx.accepting):  # stopping: clients must not reuse it
            self.close_after = True
            end = b"Connection: close\r\n" + end
        elif not self.http11:
            end = b"Connection: keep-alive\r\n" + end
        if self.set_cookie:
            end = self.set_cookie + end
        return end

    def fast_response(self, up: UpstreamConnection, data: bytes) -> bool:
        """The usual response, handled without a Python call per header: an HTTP/1.1 head
        whole in this read, framed by Content-Length (or without a body), whose only
        hop-by-hop fields are Connection: keep-alive/close and Keep-Alive. llhttp checks the
        head (a parser with no per-header callback); those lines are cut from the bytes, which
        go on as they are. False, with nothing consumed: the full parser takes this read.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0 or self.done or not data.startswith(b"HTTP/1.1 ") or self.method == b"HEAD":
            return False
        # llhttp needs CRLF at every line end, so the first CRLFCRLF is where it completes
        # the head: fed exactly the head, it either raises or has seen it all.
        parser = httptools.HttpResponseParser(_HEAD_CHECK)
        try:
            parser.feed_data(data[:end + 4])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False  # the full parser reports it, or switches protocols
        status = parser.get_status_code()
        if status < 200:
            return False
        head = data[:end]
        lower = head.lower()
        length = -1
        keep = True
        cut = 0
        for name, value in _RESP_HOP_RE.findall(lower):
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                value = value.rstrip()
                if value == b"close":
                    keep = False
                elif value != b"keep-alive":
                    return False
                cut += 1
            elif name == b"keep-alive":
                cut += 2
            else:
                return False  # Transfer-Encoding, Upgrade, TE, Trailer, Proxy-Connection
        if status == 204 or status == 304:
            length = 0
        elif length < 0:
            return False  # until the connection closes: the full parser's path
        if cut == 1:
            i = lower.find(b"\r\nconnection:")
            j = head.find(b"\r\n", i + 2)
            head = head[:i] + head[j:] if j > 0 else head[:i]
        elif cut:
            lines = head.split(b"\r\n")
            head = b"\r\n".join([lines[0]] + [
                h for h in lines[1:]
                if h.split(b":", 1)[0].lower() not in (b"connection", b"keep-alive")])
        self._response_began(status)
        self.resp_length = length
        head += b"\r\n" + self._head_end(status, True, False)
        start = end + 4
        have = len(data) - start
        if have > length:  # bytes past the announced body: framing is broken, do not reuse
            keep = False
            have = length
        # A small body goes in the same bytes as the head (one write of one buffer); a large
        # one as a view of what was read, no copy.
        if have < _JOIN_MAX:
            self.out.append(head + data[start:start + have] if have else head)
        else:
            self.out.append(head)
            self.out.append(memoryview(data)[start:start + have])
        if have < length:
            self.body_seen = have
            self.keep_up = keep
            up.body_left = length - have
            self.flush()
        else:
            self.finish(keep)
        return True

    # -- failures ---------------------------------------------------------------------------
    def unwait(self) -> None:
        """The response timeout no longer runs (the head came, or the exchange ended)."""
        self.waiting = False
        self.conn.ctx.deadlines.waiting.pop(self, None)

    def response_timeout(self) -> None:
        if self.done or self.resp_started:
            return
        self.conn.ctx.backend_failed(self.backend, "timeout")  # type: ignore[arg-type]
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        self.conn.local(self, 504, b"backend did not answer in time\n", keep=self.body_done)

    def upstream_failed(self, up: UpstreamConnection, reason: str, detail: str) -> None:
        """The backend broke the protocol: 502 (or abort if the response has begun)."""
        if self.done:
            return
        log.warning("backend %s: %s", self.backend.key, detail)  # type: ignore[union-attr]
        self.conn.ctx.backend_failed(self.backend, reason)  # type: ignore[arg-type]
        self.upstream = None
        up.abort()
        if self.resp_started:
            self.conn.abort_exchange(self)
        else:
            self.conn.local(self, 502, b"bad response from backend\n", keep=self.body_done)

    def upstream_lost(self, up: UpstreamConnection, exc: Exception | None) -> None:
        """The backend connection closed while this exchange used it."""
        if self.done:
            return
        self.upstream = None
        if self.upgraded:
            self.conn.tunnel_closed()
            return
        if self.resp_started:
            if self.eof_body:
                self.finish(False)  # EOF-delimited body: this close is its end
            else:
                self.conn.ctx.backend_failed(self.backend, "reset")  # type: ignore[arg-type]
                self.conn.abort_exchange(self)
            return
        # A pooled connection closed before any answer is most likely the keep-alive race,
        # not a sick backend: counted, but not against its passive health.
        self.conn.ctx.backend_failed(self.backend, "reset", passive=not up.reused)  # type: ignore[arg-type]
        if self.waiting:
            self.unwait()
        # Bytes may have reached the backend: only an idempotent request goes again.
        if self.replayable and self.method in _IDEMPOTENT:
            if up.reused and not self.stale:
                # Most likely the backend closed an idle pooled connection just as we reused
                # it (keep-alive race): the same backend on a new connection, once.
                self.stale = True
                self.conn.retry_fresh(self)
            else:
                self.conn.retry(self)
        else:
            self.conn.local(self, 502, b"backend closed the connection\n", keep=self.body_done)

    def upstream_upgraded(self, rest: bytes) -> None:
        """The backend switched protocols: from now on both sockets are a tunnel."""
        up = self.upstream
        if up is None or self.done:
            return
        self.flush()  # the 101 head, before any tunnelled byte
        up.exchange = None
        up.tunnel = self.conn
        self.conn.start_tunnel(self, up)
        if rest:
            self.conn.transport.write(rest)  # type: ignore[union-attr]

    def flush(self) -> None:
        """Write what the backend's last read produced to the client, in one call."""
        out = self.out
        if out:
            t = self.conn.transport
            if not self.conn.closed:
                if len(out) == 1:
                    t.write(out[0])  # type: ignore[union-attr]
                else:
                    t.writelines(out)  # type: ignore[union-attr]
            out.clear()

    def finish(self, upstream_keepalive: bool) -> None:
        self.flush()  # before anything the next request may write
        self.done = True
        if self.waiting:
            self.unwait()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.release(upstream_keepalive and self.body_done and not self.upgraded)
        self.conn.exchange_done(self, self.status)


def _tokens(value: bytes, into: set[bytes] | None) -> set[bytes]:
    toks = into if into is not None else set()
    for t in value.split(b","):
        t = t.strip().lower()
        if t:
            toks.add(t)
    return toks


def _forwarded(peer: bytes) -> bytes:
    """What follows "Host: <host>" in every head forwarded for a client that is not a trusted
    proxy, up to the host again: the router's own values, made once per connection."""
    return b"\r\nX-Forwarded-For: " + peer + b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "


class ClientConnection:
    """The asyncio protocol of one client socket (duck-typed, like UpstreamConnection: with no
    base class, mypyc compiles it as a native class)."""

    __slots__ = ("ctx", "loop", "transport", "parser", "parsing", "active", "queue",
                 "_paused", "write_paused", "peer", "peer_b", "trusted", "_deadline",
                 "_deadline_kind", "_timer", "tunnel", "closed", "upgrading", "eof", "rejected",
                 "skip_upgrade", "in_body", "forwarded")

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Exchange | None = None
        self.active: Exchange | None = None
        self.queue: deque[Exchange] | None = None
        self._paused = 0
        self.write_paused = False
        self.peer = "-"
        self.peer_b = b""
        self.forwarded = _forwarded(b"")
        self.trusted = False
        self._deadline = 0.0
        self._deadline_kind = 0  # 0 idle keep-alive, 1 reading a request head
        self._timer: asyncio.TimerHandle | None = None
        self.tunnel: UpstreamConnection | None = None
        self.closed = False
        self.upgrading = False
        self.eof = False
        self.rejected = False
        self.skip_upgrade = False
        self.in_body = False  # the request being parsed has its head complete

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        if len(ctx.connections) >= ctx.max_connections or not ctx.accepting:
            transport.abort()  # type: ignore[attr-defined]
            self.closed = True
            return
        ctx.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0]
            self.peer_b = self.peer.encode()
            self.forwarded = _forwarded(self.peer_b)
            if ctx.trusted:
                import ipaddress
                ip = ipaddress.ip_address(self.peer)
                self.trusted = any(ip in net for net in ctx.trusted)
        self._set_deadline(0, ctx.client_idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)  # type: ignore[union-attr]
            return
        if self.rejected:
            return
        if self.upgrading:
            ex = self.active
            if ex is not None and ex.early is not None:
                ex.early.append(data)
            return
        ex = self.parsing
        if ex is not None and not self.in_body:
            # More of a head split over reads: the bytes read for it are capped (an upper
            # bound of the sizes _prepare checks exactly, so no legal head reaches it).
            ex.header_bytes += len(data)
            if ex.header_bytes > self.ctx.max_head_read:
                self._reject(431, b"request header block too large\n")
                return
        try:
            self.parser.feed_data(data)
            if self.parsing is not None and not self.closed:
                if self.in_body:
                    self._set_deadline(2, self.ctx.client_body_timeout)
                elif self._deadline_kind == 1 and not self._deadline:
                    # A head split over reads: from its first read on, client_header.
                    self._set_deadline(1, self.ctx.client_header_timeout)
        except httptools.HttpParserUpgrade as e:
            if self.skip_upgrade:
                # An ignored upgrade: llhttp has stopped; the bytes after it are requests.
                self.skip_upgrade = False
                self.parser = httptools.HttpRequestParser(self)
                rest = data[e.args[0]:]
                if rest:
                    self.data_received(rest)
                return
            ex = self.active if self.active is not None else (self.queue[-1] if self.queue else None)
            if ex is not None and ex.upgrade and not ex.done:
                self.upgrading = True
                ex.early = [data[e.args[0]:]]
                self.pause(QUEUED)
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _Refused):
                self._reject(cause.status, str(cause).encode() + b"\n")
            else:
                self._reject(400, b"malformed request: " + str(e).encode() + b"\n")

    def eof_received(self) -> bool | None:
        # A client that half-closes after its request still gets the answer, then the close.
        self.eof = True
        return True if self.active is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.tunnel is not None:
            up, self.tunnel = self.tunnel, None
            up.tunnel = None
            up.close()
        ex = self.active
        if ex is not None and not ex.done:
            self.abort_exchange(ex, status=499)
        self.active = None
        self.queue = None

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

    # -- flow control -----------------------------------------------------------------------
    def pause(self, why: int) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused |= why

    def unpause(self, why: int) -> None:
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # -- timers: one handle per connection, re-armed lazily ----------------------------------
    def _set_deadline(self, kind: int, timeout: float) -> None:
        self._deadline = self.loop.time() + timeout
        self._deadline_kind = kind
        self._arm()

    def _arm(self) -> None:
        """Make sure the timer fires no later than the deadline (it re-checks when it fires)."""
        timer = self._timer
        if timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        elif timer.when() > self._deadline:
            timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or not self._deadline:
            return
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        kind = self._deadline_kind
        if kind == 2 and self._paused:
            # We are not reading (the backend is slow to take the body): not the client's fault.
            self._deadline = now + self.ctx.client_body_timeout
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        elif kind == 1:
            self._reject(408, b"request head not received in time\n")
        elif kind == 2:
            self._reject(408, b"request body not received in time\n")
        else:
            self.transport.close()  # type: ignore[union-attr]

    # -- request parser callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self.in_body = False
        if self.active is None:
            # Set only if the head is still incomplete at the end of this read
            # (data_received): most heads arrive whole, and then no clock or timer is touched.
            self._deadline = 0.0
            self._deadline_kind = 1

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        ex.url += url  # type: ignore[union-attr]
        if len(ex.url) > self.ctx.max_request_line:  # type: ignore[union-attr]
            raise _Refused(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are checked once the head is complete (_prepare); a head that keeps coming
        # is capped by the bytes read for it (data_received).
        self.parsing.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        ex = self.parsing
        parser = self.parser
        ex.method = parser.get_method()  # type: ignore[union-attr]
        version = parser.get_http_version()  # type: ignore[union-attr]
        ex.http11 = version == "1.1"  # type: ignore[union-attr]
        if not ex.http11 and version != "1.0":  # type: ignore[union-attr]
            # llhttp accepts any "HTTP/<digit>.<digit>", and "0.9" for a bare "GET /".
            raise _Refused(505 if version >= "2" else 400, "HTTP version not supported")
        ex.keep_alive = parser.should_keep_alive()  # type: ignore[union-attr]
        ex.upgrade = parser.should_upgrade()  # type: ignore[union-attr]
        self._prepare(ex)  # type: ignore[arg-type]
        # The head is complete; until the body is, each read must come within client_body
        # (set at the end of the read, if the body is still incomplete then).
        self.in_body = True
        self._deadline = 0.0
        self._deadline_kind = 2
        if self.active is None:
            self.active = ex
            self._start(ex)  # type: ignore[arg-type]
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)  # type: ignore[arg-type]
            self.pause(QUEUED)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        if ex is not None and not ex.error:
            ex.body(data)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if self.active is None:
            if not self.closed:
                self._set_deadline(0, self.ctx.client_idle_timeout)
        elif self._deadline_kind == 2:
            self._deadline = 0.0  # the exchange has its own timers now
        if ex is not None:
            ex.body_end()

    # -- one request -----------------------------------------------------------------------
    def _prepare(self, ex: Exchange) -> None:
        """Read the request head once: routing inputs and the head sent to the backend."""
        ctx = self.ctx
        method = ex.method
        out = [method, b" ", b"", b" HTTP/1.1\r\n"]
        host = b""
        hosts = 0
        cookie = None
        conn_tokens: set[bytes] | None = None
        xff = b""
        rid = b""
        chunked = False
        upgrade_to = b""
        xfp = xfh = b""
        total = 0
        max_header = ctx.max_header
        for name, value in ex.headers:
            size = len(name) + len(value)
            if size > max_header:
                raise _Refused(431, "header field too large")
            total += size
            lname = name.lower()
            if lname in _REQ_SKIP:
                if lname == b"host":
                    host = value
                    hosts += 1
                elif lname == b"content-length":
                    out.append(b"Content-Length: " + value + b"\r\n")
                elif lname == b"transfer-encoding":
                    # llhttp lets "gzip, chunked" through; the router re-frames the body
                    # and would drop the other coding, so only plain "chunked" is accepted.
                    if chunked or value.strip().lower() != b"chunked":
                        raise _Refused(400, "unsupported Transfer-Encoding")
                    chunked = True
                elif lname == b"connection":
                    conn_tokens = _tokens(value, conn_tokens)
                elif lname == b"upgrade":
                    upgrade_to = value
                elif lname == b"x-forwarded-for":
                    if self.trusted:
                        xff = value if not xff else xff + b", " + value
                elif lname == b"x-request-id":
                    rid = value
                elif lname == b"x-forwarded-proto":
                    xfp = value
                elif lname == b"x-forwarded-host":
                    xfh = value
                elif lname == b"expect":
                    if ex.http11:  # RFC 9110 10.1.1: HTTP/1.0 expectations are ignored
                        if value.strip().lower() != b"100-continue":
                            raise _Refused(417, "only Expect: 100-continue is supported")
                        out.append(b"Expect: 100-continue\r\n")
                elif self.trusted:  # Forwarded, X-Real-IP
                    out.append(name + b": " + value + b"\r\n")
                continue
            if lname == b"cookie":
                cookie = value if cookie is None else cookie + b"; " + value
            out.append(name + b": " + value + b"\r\n")
        if total > ctx.max_headers:
            raise _Refused(431, "request header block too large")
        ex.cookie = cookie
        ex.chunked = chunked
        if ex.upgrade and upgrade_to.strip().lower() == b"h2c":
            # h2c would hand the client an HTTP/2 connection to the backend, past every rule
            # of ours: treat it as a plain request (RFC 9113 3.2 lets servers ignore it).
            ex.upgrade = False
            self.skip_upgrade = True
        if chunked and not ex.http11:
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
        if method == b"CONNECT":
            raise _Refused(405, "CONNECT is not supported")
        if hosts != 1:
            raise _Refused(400, "missing or repeated Host header")
        host = host.strip()
        if host not in _GOOD_HOSTS and not host_ok(host):
            raise _Refused(400, "invalid Host header")
        url = ex.url
        if url[:1] != b"/":
            if url == b"*":
                if method != b"OPTIONS":
                    raise _Refused(400, "request target * is only for OPTIONS")
            else:
                # Absolute form: routed by its authority through our table, never dialled.
                try:
                    # Any: the stubs say bytes where the parser gives None (userinfo, ...)
                    parsed: Any = httptools.parse_url(url)
                except httptools.HttpParserInvalidURLError:
                    raise _Refused(400, "invalid request target") from None
                if (not parsed.host or parsed.userinfo
                        or parsed.schema.lower() not in (b"http", b"https")):
                    raise _Refused(400, "invalid request target")
                host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
                if not host_ok(host):
                    raise _Refused(400, "invalid request target")
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
                if parsed.fragment:
                    raise _Refused(400, "fragment in request target")
        if _URL_SPECIAL.search(url) is None:
            path = url  # no query, no fragment, nothing clean_path would change
        else:
            if b"#" in url:
                raise _Refused(400, "fragment in request target")
            q = url.find(b"?")
            path = url if q < 0 else url[:q]
            if b"/." in path or b"//" in path or b"%" in path or b"\\" in path:
                cleaned = clean_path(path)
                if cleaned is None:
                    raise _Refused(400, "path with dot segments or encoded separators")
                if cleaned is not path:
                    path = cleaned
                    url = cleaned if q < 0 else cleaned + url[q:]
        ex.url = url
        ex.path = path
        ex.host = host
        out[2] = url
        if conn_tokens:
            conn_tokens -= _PROTECTED
            if conn_tokens:
                out = out[:4] + [h for h in out[4:]
                                 if h.split(b":", 1)[0].lower() not in conn_tokens]
        if not rid or not _REQUEST_ID_RE.match(rid):
            rid = ctx.request_id()
        ex.request_id = rid
        if self.trusted:
            # A trusted proxy in front knows the client, the original scheme and host.
            out.append(b"Host: " + host + b"\r\nX-Forwarded-For: "
                       + (xff + b", " + self.peer_b if xff else self.peer_b)
                       + b"\r\nX-Forwarded-Proto: " + (xfp or b"http")
                       + b"\r\nX-Forwarded-Host: " + (xfh or host)
                       + b"\r\nX-Request-ID: " + rid + b"\r\n")
        else:
            out += (b"Host: ", host, self.forwarded, host, b"\r\nX-Request-ID: ", rid, b"\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if ex.upgrade:
            out.append(b"Connection: upgrade\r\nUpgrade: " + upgrade_to + b"\r\n")
        out.append(b"\r\n")
        ex.head = b"".join(out)

    def _start(self, ex: Exchange) -> None:
        ex.started = self.loop.time()
        app = self.ctx.table.lookup(ex.host, ex.path)
        if app is None:
            self.ctx.unrouted.count("", 404)
            host = ex.host.decode("latin-1")[:200]
            self.local(ex, 404, f"no route for host {host!r}\n".encode(), keep=True, counted=True)
            return
        ex.app = app
        if not self._choose(ex, app):
            self.ctx.unrouted.count(app.name, 503)
            self.local(ex, 503, b"no healthy backend for this app\n", keep=True,
                       extra=b"Retry-After: 5\r\n", counted=True)
            return
        self._send(ex)

    def _choose(self, ex: Exchange, app: "App") -> bool:
        """Pick service and backend: the sticky pin first, then by weight (SPEC 4.3)."""
        codec = self.ctx.codec
        now = 0
        if app.sticky and ex.cookie is not None:
            token = cookie_value(ex.cookie, self.ctx.cookie_eq)
            if token is not None:
                now = int(time.time())
                pin = codec.verify(app.name_b, token, now)
                if pin is not None:
                    svc = app.by_token.get(pin.service_id)
                    if svc is not None and not (
                            svc.zero_since is not None and app.drain_timeout is not None
                            and time.monotonic() - svc.zero_since >= app.drain_timeout):
                        be = svc.by_token.get(pin.backend_id)
                        if be is not None and be.healthy:
                            if now - pin.seen >= codec.refresh_after:
                                ex.set_cookie = self._cookie(app, svc, be, pin.issued, now)
                        else:
                            be = svc.pick()
                            if be is not None:
                                ex.set_cookie = self._cookie(app, svc, be, now, now)
                        if be is not None:
                            svc.stats.sticky += 1
                            self._assign(ex, svc, be)
                            return True
        svc = app.pick()
        if svc is None:
            return False
        be = svc.pick()
        if be is None:
            return False
        if app.sticky:
            now = now or int(time.time())
            ex.set_cookie = self._cookie(app, svc, be, now, now)
        self._assign(ex, svc, be)
        return True

    def _cookie(self, app: "App", svc: "Service", be: "Backend", issued: int, now: int) -> bytes:
        token = self.ctx.codec.issue(app.name_b, svc.token_id, be.token_id, issued, now)
        return self.ctx.set_cookie_prefix + token + b"; Path=/; HttpOnly; SameSite=Lax\r\n"

    @staticmethod
    def _assign(ex: Exchange, svc: "Service", be: "Backend") -> None:
        ex.service = svc
        ex.backend = be
        ex.attempts += 1
        be.inflight += 1
        svc.stats.inflight += 1

    @staticmethod
    def _unassign(ex: Exchange) -> None:
        be = ex.backend
        if be is not None:
            be.inflight -= 1
            ex.service.stats.inflight -= 1  # type: ignore[union-attr]

    def _send(self, ex: Exchange) -> None:
        be = ex.backend
        conn = self.ctx.pool.get(be.key)  # type: ignore[union-attr]
        if conn is not None and ex.method not in _IDEMPOTENT and (
                self.loop.time() - conn.idle_since > UNSAFE_REUSE_IDLE):
            # A request that cannot be retried avoids connections that idled long enough
            # for the backend's keep-alive timer to be about to close them.
            conn.close()
            conn = None
        if conn is not None:
            self._attach(ex, conn)
        else:
            self.loop.create_task(self._connect(ex, be))  # type: ignore[arg-type]

    def retry_fresh(self, ex: Exchange) -> None:
        """The same backend again on a new connection (its pooled one was stale)."""
        ex.service.stats.retries += 1  # type: ignore[union-attr]
        ex.attempts += 1
        ex.upstream = None
        self.loop.create_task(self._connect(ex, ex.backend))  # type: ignore[arg-type]

    async def _connect(self, ex: Exchange, be: "Backend") -> None:
        try:
            conn = await self.ctx.pool.connect(be.key, be.host, be.port)
        except (OSError, TimeoutError) as e:
            if ex.done or ex.backend is not be:
                return
            reason = "connect_timeout" if isinstance(e, TimeoutError) else "connect"
            self.ctx.backend_failed(be, reason)
            log.warning("backend %s: cannot connect: %s", be.key, e or "timeout")
            self.retry(ex)
            return
        if ex.done or ex.backend is not be or self.closed:
            conn.release(True)
            return
        self._attach(ex, conn)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.upstream = conn
        conn.attach(ex)
        if self.write_paused:
            conn.pause_reading()
        t = conn.transport
        if ex.buf:
            if ex.chunked:
                t.write(ex.head + b"".join(b"%x\r\n%b\r\n" % (len(d), d) for d in ex.buf))  # type: ignore[union-attr]
            else:
                t.write(ex.head + b"".join(ex.buf))  # type: ignore[union-attr]
        else:
            t.write(ex.head)  # type: ignore[union-attr]
        if self._paused:
            self.unpause(BODY_BUFFERED)
        if ex.body_done:
            if ex.chunked:
                t.write(b"0\r\n\r\n")  # type: ignore[union-attr]
            self.ctx.deadlines.add(ex)

    def retry(self, ex: Exchange) -> None:
        """Another backend of the same service, then another service, at most 2 retries."""
        be = ex.backend
        svc = ex.service
        app = ex.app
        if ex.tried is None:
            ex.tried = []
        ex.tried.append(be)  # type: ignore[arg-type]
        nbe = None
        nsvc = svc
        if ex.attempts < MAX_ATTEMPTS and ex.replayable:
            nbe = svc.pick(ex.tried)  # type: ignore[union-attr]
            if nbe is None:
                tried = ex.tried
                exhausted = [s for s in app.services if all(b in tried for b in s.healthy)]  # type: ignore[union-attr]
                nsvc = app.pick(exhausted)  # type: ignore[union-attr]
                nbe = nsvc.pick(tried) if nsvc is not None else None
        if nbe is None:
            # Counted on the last backend tried.
            self.local(ex, 502, b"no backend could be reached\n", keep=ex.body_done)
            return
        svc.stats.retries += 1  # type: ignore[union-attr]
        self._unassign(ex)
        ex.upstream = None
        if app.sticky:  # type: ignore[union-attr]
            now = int(time.time())
            ex.set_cookie = self._cookie(app, nsvc, nbe, now, now)  # type: ignore[arg-type]
        self._assign(ex, nsvc, nbe)  # type: ignore[arg-type]
        self._send(ex)

    # -- endings ---------------------------------------------------------------------------
    def local(self, ex: Exchange, status: int, body: bytes, keep: bool,
              extra: bytes = b"", counted: bool = False) -> None:
        """Answer a request ourselves (404, 502, 503, 504, ...)."""
        if ex.done:
            return
        ex.flush()  # an interim 100 Continue goes first
        ex.done = True
        if ex.waiting:
            ex.unwait()
        ex.status = status
        close = not (keep and ex.keep_alive and ex.body_done and not ex.upgrade
                     and self.ctx.accepting)
        if status == 405:
            extra += _ALLOW
        if self.transport is not None and not self.closed:
            self.transport.write(
                b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n%b%b\r\n%b"
                % (status, _REASONS.get(status, b"Error"), len(body), extra,
                   b"Connection: close\r\n" if close else b"", body))
        ex.close_after = close
        if not counted and ex.backend is None and ex.app is not None:
            self.ctx.unrouted.count(ex.app.name, status)
        elif not counted and ex.backend is None:
            self.ctx.unrouted.count("", status)
        self.exchange_done(ex, status)

    def _reject(self, status: int, body: bytes) -> None:
        """A request we cannot even parse: answer in order, then close."""
        ex = self.parsing
        self.parsing = None
        self.rejected = True  # the parser is in its error state: nothing more is read
        if ex is not None and ex.done:
            self.transport.close()  # type: ignore[union-attr]  # answered already
            return
        if ex is not None and ex is self.active:
            # Its body broke the framing while it was being forwarded: the backend must
            # never see that request end, so its connection is reset, not completed.
            self.pause(QUEUED)
            ex.keep_alive = False
            up = ex.upstream
            ex.upstream = None
            if up is not None:
                up.abort()
            if ex.resp_started:
                self.abort_exchange(ex, status)
            else:
                self.local(ex, status, body, keep=False)
            return
        queued = ex is not None and self.queue is not None and ex in self.queue
        if ex is None:
            ex = Exchange(self)
        ex.error = status
        ex.keep_alive = False
        ex.body_done = True
        ex.method = b"-"
        ex.http11 = True
        ex.upgrade = False
        ex.host = b""
        self.pause(QUEUED)
        if self.active is None:
            self.active = ex
            ex.started = self.loop.time()
            self.ctx.unrouted.count("", status)
            self.local(ex, status, body, keep=False, counted=True)
        else:
            # Answered after the requests before it; nothing after it is forwarded.
            ex.head = body
            if self.queue is None:
                self.queue = deque()
            if not queued:
                self.queue.append(ex)

    def abort_exchange(self, ex: Exchange, status: int = 502) -> None:
        """The response cannot be completed: drop the client (never a short 'complete' body)."""
        if ex.done:
            return
        ex.done = True
        ex.out.clear()
        if ex.waiting:
            ex.unwait()
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        ex.status = status if not ex.resp_started or status == 499 else ex.status
        self._account(ex, ex.status)
        self.active = None
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def exchange_done(self, ex: Exchange, status: int) -> None:
        now = self._account(ex, status)
        if self.active is ex:
            self.active = None
        if self.closed:
            return
        if ex.close_after or not ex.keep_alive or not ex.body_done or (self.eof and not self.queue):
            self.transport.close()  # type: ignore[union-attr]
            return
        q = self.queue
        if q:
            nxt = q.popleft()
            self.active = nxt
            if nxt.error and nxt.method == b"-":
                nxt.started = self.loop.time()
                self.ctx.unrouted.count("", nxt.error)
                self.local(nxt, nxt.error, nxt.head, keep=False, counted=True)
            else:
                self._start(nxt)
            return
        if self._paused:
            self.unpause(QUEUED)
        if self.parsing is None:
            self._deadline = now + self.ctx.client_idle_timeout
            self._deadline_kind = 0
        else:
            self._deadline = now + self.ctx.client_header_timeout
            self._deadline_kind = 1
        self._arm()

    def _account(self, ex: Exchange, status: int) -> float:
        """Count the exchange's end in the metrics (and the access log); the loop's time."""
        now = self.loop.time()
        be = ex.backend
        if be is not None:
            be.inflight -= 1
            st = ex.service.stats  # type: ignore[union-attr]
            st.inflight -= 1
            codes = be.stats.codes
            codes[status] = codes.get(status, 0) + 1
            st.observe(now - ex.started)
        if self.ctx.log_access is not None:
            self.ctx.log_access(ex, status)
        return now

    # -- WebSocket and other upgrades --------------------------------------------------------
    def start_tunnel(self, ex: Exchange, up: UpstreamConnection) -> None:
        self.tunnel = up
        self.upgrading = False
        ex.upstream = None
        early = ex.early
        ex.early = None
        ex.done = True
        self._account(ex, 101)
        ex.backend = None
        self.active = None
        if early:
            up.transport.write(b"".join(early))  # type: ignore[union-attr]
        self._paused = 0
        self.transport.resume_reading()  # type: ignore[union-attr]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.write_paused:
            up.pause_reading()

    def tunnel_closed(self) -> None:
        self.tunnel = None
        if self.transport is not None and not self.closed:
            self.transport.close()
