"""One request and its response: routed, forwarded, answered -- through the phases of
``router.dataplane.phases``.

An ``Exchange`` is made by its client connection when a request head begins, filled by
``router.http.request_head`` when the head is complete, and driven from then on by two sides:
the client connection (the request body, its end, the client going away) and the backend
connection serving it (``UpstreamRequest``'s calls: the response head, body, end, failures).
No coroutine runs per request; only opening a new backend connection awaits.

Every end of an exchange goes through this module: the backend's response complete
(``_finish``), an answer of the router's own (``answer``: 404, 502, 503, 504, a refusal), an
abort (``abort``: the response cannot be completed, the client is dropped), or a tunnel. Each
is a move in the phase table, so an exchange ends exactly once, and is counted exactly once.
"""

from __future__ import annotations

from typing import Final

from . import phases as P
from . import routing
from .accesslog import Entry
from .context import ClientBase, ProxyContext
from ..http import framing
from ..http.response_head import ResponseError, check_response_head
from .table import App, Backend, HostApp, Service
from .upstream import (BODY_BUFFERED, NO_HEAD, UPSTREAM_FULL, Head, UpstreamConnection,
                       UpstreamRequest)

# Body bytes held while no backend connection is ready, and kept for a retry (uvicorn's
# HIGH_WATER_LIMIT). Past it the client is paused, and a request is no longer replayable.
HIGH_WATER: Final = 65536
# A non-idempotent request is not sent on a pooled connection idle longer than this: below
# Node.js's 5 s keepAliveTimeout, the shortest common backend default, so it does not meet a
# backend closing that connection at the same instant (it could not be retried).
UNSAFE_REUSE_IDLE: Final = 2.0
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})

REASONS: Final = {
    303: b"See Other",  # a preview link's redirect
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    414: b"URI Too Long", 417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    499: b"Client Closed Request", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
_ALLOW: Final = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
# An exchange's fields until the reader sets the request's (never changed in place: a list made
# per request that the reader replaces at once was an allocation and a free for nothing).
_NO_FIELDS: Final[list[tuple[bytes, bytes]]] = []


class ClientSide(ClientBase):
    """What an exchange asks of its client connection (``router.dataplane.client.ClientConnection``)."""

    __slots__ = ("out",)

    ctx: ProxyContext
    write_paused: bool  # the client's socket buffer is full
    peer_b: bytes
    # No request of this connection has ended yet: with upstream.reuse "safe" its request goes
    # on a backend connection of its own.
    first_request: bool
    # Client-bound bytes from one read of the backend, written in one call at its end (by the
    # exchange being answered: one at a time, so one list per connection; None until the first
    # response, and again once the connection rests).
    out: list[bytes | memoryview] | None

    def is_open(self) -> bool:
        raise NotImplementedError

    def write(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def writelines(self, data: list[bytes | memoryview]) -> None:
        raise NotImplementedError

    def unsent(self) -> int:
        """Bytes written that the transport has not handed to the socket yet."""
        raise NotImplementedError

    def pause(self, why: int) -> None:
        raise NotImplementedError

    def unpause(self, why: int) -> None:
        raise NotImplementedError

    def exchange_done(self, ex: "Exchange") -> None:
        """``ex`` has ended (answered, aborted or become a tunnel): the next one may start."""
        raise NotImplementedError

    def start_tunnel(self, ex: "Exchange", up: UpstreamConnection, rest: bytes) -> None:
        raise NotImplementedError

    def drop(self, ex: "Exchange") -> None:
        """Abort the connection: ``ex``'s response cannot be completed."""
        raise NotImplementedError


class Exchange(UpstreamRequest):
    """One request and its response (the request head's fields are inherited)."""

    __slots__ = ("conn", "headers", "phase", "body_done", "llhttp_upgrade", "buf", "buf_size",
                 "app", "service", "backend", "set_cookie", "tried", "attempts",
                 "upstream", "started", "ended", "status", "answered", "rechunk", "sent",
                 "stale", "refusal", "refusal_body", "close_after", "previewed", "scope")

    def __init__(self, conn: ClientSide) -> None:
        super().__init__()
        self.conn = conn
        self.headers = _NO_FIELDS
        self.phase = P.ROUTING
        self.body_done = False  # the request body has been read to its end
        self.llhttp_upgrade = False  # llhttp stopped after the head (an Upgrade request)
        # Body bytes kept to send later, or to replay (None until the first); buf_size is -1
        # once there were too many to keep (then the request cannot be sent again).
        self.buf: list[bytes] | None = None
        self.buf_size = 0
        self.app: App | None = None
        self.scope: HostApp | None = None  # the app as the request's host reaches it: its cookies
        self.service: Service | None = None
        self.backend: Backend | None = None
        self.set_cookie = b""  # the router's Set-Cookie field for the response
        self.tried: list[Backend] | None = None
        self.attempts = 0
        self.upstream: UpstreamConnection | None = None
        self.started = 0.0
        self.ended = 0.0  # loop time when it ended (the client's idle timer starts from it)
        self.status = 0
        self.answered = False  # the backend's final head was passed on (its time is observed)
        self.rechunk = False  # each piece of the response body goes to the client as a chunk
        self.sent = 0  # response body bytes for the client (the access log's size)
        self.stale = False  # already retried once after a pooled connection turned out closed
        self.refusal = 0  # answered with this status in its turn, not routed (a bad request)
        self.refusal_body = b""
        self.close_after = False  # the client connection closes after this exchange
        self.previewed = False  # sent to a release's new version by a preview marker, unpinned
        self.response_deadline = 0.0
        self.wait_prev = None
        self.wait_next = None

    def _move(self, to: int) -> None:
        frm = self.phase
        if ((to == P.SENT and frm == P.ROUTING) or (to == P.HEAD and frm == P.SENT)
                or (to == P.BODY and frm == P.HEAD) or (to == P.DONE and frm == P.BODY)):
            self.phase = to  # a proxied request's moves, legal (phases.COMMON_MOVES): no lookup
        else:
            self.phase = P.exchange_move(frm, to)

    # -- routing: router.dataplane.routing decides, the exchange carries it out ---------------
    def route(self) -> None:
        """Its turn has come: choose a backend and send the request (or answer it)."""
        conn = self.conn
        ctx = conn.ctx
        now = self.started = ctx.loop.time()
        if self.refusal:
            ctx.unrouted.count("", self.refusal)
            self.answer(self.refusal, self.refusal_body, keep=False, counted=True)
            return
        scope = ctx.table.lookup(self.host, self.path)
        if scope is None:
            ctx.unrouted.count("", 404)
            host = self.host.decode("latin-1")[:200]
            self.answer(404, f"no route for host {host!r}\n".encode(), keep=True, counted=True)
            return
        app = scope.app
        self.app = app
        self.scope = scope
        # The wall clock is read only where a token is read or issued.
        wall = int(ctx.clock()) if app.sticky or app.preview is not None else 0
        pin = None
        if app.sticky and self.cookie is not None:
            pin = ctx.codec.pin(app.name_b, self.cookie, scope.cookie_eq, wall)
        route = routing.choose(scope, self, self.headers, pin, wall, ctx.monotonic, ctx.codec)
        if isinstance(route, tuple):
            self._assign(route, wall)
            self._send(now)
        elif isinstance(route, bytes):
            self.answer(303, b"preview: this browser now reaches the new version\n", keep=True,
                        extra=route)
        else:
            ctx.unrouted.count(app.name, 503)
            self.answer(503, b"preview: the new version has no healthy backend\n"
                        if route == routing.NO_PREVIEW else app.unavailable,
                        keep=True, extra=b"Retry-After: 5\r\n", counted=True)

    def _assign(self, choice: routing.Choice, now: int) -> None:
        svc, be, how, cookie = choice
        if cookie != routing.KEEP_COOKIE:
            scope = self.scope
            assert scope is not None
            ctx = self.conn.ctx
            self.set_cookie = routing.cookie_line(ctx.codec, scope, svc, be, cookie or now, now)
        if how == routing.PINNED:
            svc.stats.sticky += 1
        elif how == routing.FALLBACK:
            svc.stats.fallback += 1
        elif how == routing.PREVIEW:
            svc.stats.preview += 1
        elif how == routing.MARKED:
            svc.stats.preview += 1
            self.previewed = True  # the client's pin stays as it is, retries included
        self.service = svc
        self.backend = be
        self.attempts += 1
        be.inflight += 1
        svc.stats.inflight += 1

    def _unassign(self) -> None:
        be = self.backend
        svc = self.service
        if be is not None and svc is not None:
            be.inflight -= 1
            svc.stats.inflight -= 1

    def _send(self, now: float) -> None:
        """Send the request to its backend (``now``: the loop's time)."""
        be = self.backend
        assert be is not None
        conn = self.conn
        ctx = conn.ctx
        # upstream.reuse "safe" (HAProxy's http-reuse safe): a client connection's first request
        # never meets a connection another client has used, nor the keep-alive race.
        up = ctx.pool.get(be.key) if ctx.reuse_always or not conn.first_request else None
        if up is not None and self.method not in IDEMPOTENT and (
                now - up.idle_since > UNSAFE_REUSE_IDLE):
            # A request that cannot be retried avoids connections that idled long enough for
            # the backend's keep-alive timer to be about to close them.
            up.close()
            up = None
        if up is not None:
            self._attach(up, now)
        else:
            self._move(P.CONNECTING)
            ctx.loop.create_task(self._connect(be))

    async def _connect(self, be: Backend) -> None:
        up: UpstreamConnection | None = None
        error: OSError | None = None
        try:
            up = await self.conn.ctx.pool.connect(be.key, be.host, be.port)
        except OSError as e:  # TimeoutError included
            error = e
        try:
            self._connected(be, up, error)
        except P.PhaseError as e:
            if up is not None and self.upstream is not up:
                up.abort()
            self.broken(e)

    def _connected(self, be: Backend, up: UpstreamConnection | None,
                   error: OSError | None) -> None:
        """A new connection to ``be`` is open (``up``), or could not be (``error``)."""
        ctx = self.conn.ctx
        if up is None:
            if self.phase != P.CONNECTING or self.backend is not be:
                return
            reason = "connect_timeout" if isinstance(error, TimeoutError) else "connect"
            ctx.backend_failed(be, reason)
            ctx.throttled.warning((be.key, reason), "backend %s: cannot connect: %s", be.key,
                                  error or "timeout")
            self.retry(routing.CONNECT_FAILED)
            return
        now = ctx.loop.time()
        if self.phase != P.CONNECTING or self.backend is not be or not self.conn.is_open():
            up.release(True, now)
            return
        self._attach(up, now)

    def _attach(self, up: UpstreamConnection, now: float) -> None:
        self._move(P.SENT)
        self.upstream = up
        up.attach(self)
        conn = self.conn
        if conn.write_paused:
            up.pause_reading()
        up.send_head(self.head, self.buf, self.framing == framing.CHUNKED, self.body_done)
        conn.unpause(BODY_BUFFERED)
        if self.body_done:
            self._wait(now)

    def retry(self, cause: int, reused: bool = False) -> None:
        """The backend failed before any response head (``cause``: routing.CONNECT_FAILED or
        LOST): whatever routing.retry_plan decides -- the same backend on a new connection,
        another one (routing.retry), or 502."""
        plan = routing.retry_plan(cause, self.attempts, self.buf_size >= 0,
                                  self.method in IDEMPOTENT, reused, self.stale)
        if plan == routing.RETRY_FRESH:
            self.stale = True
            self._retry_fresh()
            return
        be = self.backend
        svc = self.service
        app = self.app
        assert be is not None and svc is not None and app is not None
        choice = None
        if plan == routing.RETRY:
            tried = self.tried
            if tried is None:
                tried = self.tried = []
            tried.append(be)
            choice = routing.retry(app, svc, tried)
        if choice is None:
            # Counted on the last backend tried.
            self.answer(502, b"backend closed the connection\n" if plan == routing.NO_REPLAY
                        else b"no backend could be reached\n", keep=self.body_done)
            return
        if self.previewed:
            choice = (choice[0], choice[1], choice[2], routing.KEEP_COOKIE)
        svc.stats.retries += 1
        self._unassign()
        self.upstream = None
        ctx = self.conn.ctx
        self._assign(choice, int(ctx.clock()) if app.sticky else 0)
        self._send(ctx.loop.time())

    def _retry_fresh(self) -> None:
        """The same backend again on a new connection (its pooled one was stale)."""
        be = self.backend
        svc = self.service
        assert be is not None and svc is not None
        svc.stats.retries += 1
        self.attempts += 1
        self.upstream = None
        self._move(P.CONNECTING)
        self.conn.ctx.loop.create_task(self._connect(be))

    # -- the request body, from the client connection -------------------------------------
    def body(self, data: bytes) -> None:
        if P.ended(self.phase):
            return  # answered already (an early answer): the rest is read and dropped
        up = self.upstream
        size = self.buf_size
        if size >= 0:
            if up is None or size + len(data) <= HIGH_WATER:
                buf = self.buf
                if buf is None:
                    self.buf = [data]
                else:
                    buf.append(data)
                self.buf_size = size = size + len(data)
                if up is None:
                    if size > HIGH_WATER:
                        self.conn.pause(BODY_BUFFERED)
                    return
            else:
                self.buf = None  # too large to replay: stream from here on
                self.buf_size = -1
        if up is not None:
            up.send_body(data)

    def body_end(self) -> None:
        # Known done at the head (no body): nothing to end, and its wait began with the send.
        known = self.body_done
        self.body_done = True
        if known or P.ended(self.phase):
            return
        up = self.upstream
        if up is not None:
            up.end_body()
            if self.phase == P.SENT:
                self._wait(self.conn.ctx.loop.time())

    # -- the response, from the backend connection (UpstreamRequest) --------------------------
    def response_head(self, up: UpstreamConnection, buf: bytes) -> Head:
        scope = self.scope
        ctx = self.conn.ctx
        status, head, body, length, rechunk, close, reusable, end, taken = check_response_head(
            buf, head_request=self.method == b"HEAD",
            client_http11=self.http11, client_keep_alive=self.keep_alive,
            upgrade_requested=self.upgrade, request_done=self.body_done,
            accepting=ctx.accepting, set_cookie=self.set_cookie,
            own_cookie=scope.cookie_eq if scope is not None and scope.app.sticky else b"")
        if end < 0:
            return NO_HEAD
        if status < 200 and status != 101:
            if head:
                self._out().append(head)
            return (end, status, body, length, reusable, 0)
        if status == 101 and not self.body_done:
            raise ResponseError("101 before the request body was sent whole")
        if self.framing != framing.NONE and up.unsent():
            # Answered while some of the body had not left: the backend would read it as the
            # start of the next request.
            reusable = False
        self._unwait()
        be = self.backend
        assert be is not None
        ctx.backend_ok(be)
        self.status = status
        self.sent += taken
        self.answered = True
        self.rechunk = rechunk
        self.close_after = close
        self._move(P.HEAD)
        self._out().append(head)
        return (end, status, body, length, reusable, taken)

    def response_body(self, data: bytes | memoryview) -> None:
        self.sent += len(data)
        self._out().append(framing.chunk(data) if self.rechunk else data)

    def response_end(self, up: UpstreamConnection, reusable: bool) -> None:
        if self.rechunk:
            self._out().append(framing.LAST_CHUNK)
        self._finish(reusable)

    def _out(self) -> list[bytes | memoryview]:
        """The connection's list of client-bound bytes (made again after it rested)."""
        conn = self.conn
        out = conn.out
        if out is None:
            out = conn.out = []
        return out

    def _drop_out(self) -> None:
        """What was to be written to the client is dropped (nothing of it has been sent)."""
        out = self.conn.out
        if out:
            out.clear()

    def flush(self) -> None:
        conn = self.conn
        out = conn.out
        if out:
            if len(out) == 1:
                conn.write(out[0])
            else:
                conn.writelines(out)
            out.clear()
            if self.phase == P.HEAD:
                self._move(P.BODY)

    def unsent(self) -> int:
        return self.conn.unsent()

    def response_upgraded(self, up: UpstreamConnection, rest: bytes) -> None:
        self._move(P.TUNNEL)
        self.flush()  # the 101 head, before any tunnelled byte
        self.upstream = None
        self._account(101, self.conn.ctx.loop.time())
        self.backend = None  # counted: the tunnel is the connection's now
        self.conn.start_tunnel(self, up, rest)

    def response_failed(self, up: UpstreamConnection, reason: str, detail: str) -> None:
        if P.ended(self.phase):
            return
        ctx = self.conn.ctx
        be = self.backend
        assert be is not None
        ctx.throttled.warning((be.key, reason), "backend %s: %s", be.key, detail)
        ctx.backend_failed(be, reason)
        self.upstream = None
        up.abort()
        if self.phase == P.BODY:
            self.abort(502)
            return
        if self.phase == P.HEAD:
            self._drop_out()  # nothing of it has reached the client: a 502 instead
        self.answer(502, b"bad response from backend\n", keep=self.body_done)

    def upstream_lost(self, up: UpstreamConnection) -> None:
        phase = self.phase
        if P.ended(phase):
            return
        ctx = self.conn.ctx
        be = self.backend
        assert be is not None
        self.upstream = None
        if phase == P.BODY or phase == P.HEAD:
            ctx.backend_failed(be, "reset")
            if phase == P.BODY:
                self.abort(502)
            else:
                self._drop_out()
                self.answer(502, b"backend closed the connection\n", keep=self.body_done)
            return
        # A pooled connection closed before any answer is most likely the keep-alive race,
        # not a sick backend: counted, but not against its passive health.
        ctx.backend_failed(be, "reset", passive=not up.reused)
        self._unwait()
        self.retry(routing.LOST, up.reused)

    def response_timeout(self) -> None:
        if self.phase != P.SENT:
            return
        be = self.backend
        assert be is not None
        self.conn.ctx.backend_failed(be, "timeout")
        self.answer(504, b"backend did not answer in time\n", keep=self.body_done)

    def backpressure(self, full: bool) -> None:
        if full:
            self.conn.pause(UPSTREAM_FULL)
        else:
            self.conn.unpause(UPSTREAM_FULL)

    def client_backpressure(self, full: bool) -> None:
        """The client's socket buffer is full (stop reading the backend) or drained."""
        up = self.upstream
        if up is not None:
            if full:
                up.pause_reading()
            else:
                up.resume_reading()

    def broken(self, err: Exception) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
        self.conn.broken(err)

    # -- the response timeout: it runs while the request is sent whole and no head came --------
    def _wait(self, now: float) -> None:
        """Called as the exchange becomes SENT with its body done (in either order)."""
        self.conn.ctx.deadlines.add(self, now)

    def _unwait(self) -> None:
        """Called before the exchange leaves SENT (or ends), from whatever phase."""
        if self.response_deadline:
            self.conn.ctx.deadlines.discard(self)

    # -- endings ----------------------------------------------------------------------------
    def _finish(self, reusable: bool) -> None:
        """The backend's response is complete."""
        self.flush()
        self._unwait()
        self._move(P.DONE)
        now = self.conn.ctx.loop.time()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.release(reusable and self.body_done, now)
        self._account(self.status, now)
        self.conn.exchange_done(self)

    def answer(self, status: int, body: bytes, keep: bool, extra: bytes = b"",
               counted: bool = False) -> None:
        """Answer the request ourselves (404, 502, 503, 504, a refusal...)."""
        if not P.answerable(self.phase):
            if self.phase == P.BODY:
                self.abort(status)  # committed: the client cannot be told
            return
        self.flush()  # an interim 100 Continue goes first
        self._unwait()
        self._move(P.DONE)
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()  # the request may have reached it: the connection's state is unknown
        self.status = status
        conn = self.conn
        close = not (keep and self.keep_alive and self.body_done and not self.upgrade
                     and conn.ctx.accepting)
        if status == 405:
            extra += _ALLOW
        # A response to HEAD has no body, and says the length a GET's would have (RFC 9110 9.3.2).
        sent = b"" if self.method == b"HEAD" else body
        conn.write(b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Length: %d\r\n%b%b\r\n%b"
                   % (status, REASONS.get(status, b"Error"), len(body), extra,
                      b"Connection: close\r\n" if close else b"", sent))
        self.sent = len(sent)
        self.close_after = close
        if not counted and self.backend is None:
            app = self.app
            conn.ctx.unrouted.count(app.name if app is not None else "", status)
        self._account(status, conn.ctx.loop.time())
        conn.exchange_done(self)

    def abort(self, status: int = 502) -> None:
        """The response cannot be completed: drop the client (never a short response)."""
        if P.ended(self.phase):
            return
        if P.answerable(self.phase) or status == 499:
            self.status = status
        self._unwait()
        self._move(P.ABORTED)
        self._drop_out()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
        self.close_after = True
        self._account(self.status, self.conn.ctx.loop.time())
        self.conn.drop(self)

    def _account(self, status: int, now: float) -> None:
        """Count the exchange's end in the metrics (and the access log)."""
        self.ended = now
        ctx = self.conn.ctx
        be = self.backend
        svc = self.service
        if be is not None and svc is not None:
            be.inflight -= 1
            st = svc.stats
            st.inflight -= 1
            be.stats.count(status)
            if self.answered:
                # Timed only when the backend answered: a client's patience (499) or the
                # router's own timeout (504) is not the service's latency, which the stall limit
                # and the ramp judge by.
                st.observe(now - self.started)
        log = ctx.log_access
        if log is not None:
            app = self.app
            log(Entry(self.conn.peer_b, self.method or b"-", self.url, self.host, status,
                      app.name_b if app is not None else b"",
                      svc.name.encode() if svc is not None else b"",
                      be.key.encode() if be is not None else b"",
                      now - self.started if self.started else 0.0, self.request_id, self.sent,
                      self.headers))

