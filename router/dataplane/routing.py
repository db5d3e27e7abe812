"""Where a request goes: the sticky pin, the weights, the drain, the fallback and the retry.

Pure: the inputs are the app as one routing snapshot sees it, the client's pin (a verified
stickiness token) and the clock, passed in; the outputs are a service, a backend and the token
to set. docs/routing.md explains the rules:

1. A valid pin sends the client to its backend even when its service's weight is 0 (the drain
   that makes blue-green safe for sessions), unless the app's ``drain_timeout`` has passed since
   that weight became 0. An unhealthy or removed backend: another healthy backend of the same
   service (the version is kept). A removed service: a fresh pick by weight, re-pinned.
2. Otherwise smooth weighted round robin across the services with weight > 0 and a healthy
   backend, then the least-loaded healthy backend inside the chosen service.
3. When every weighted service has no healthy backend but a service at weight 0 has one (the old
   version during a release whose new version died), that service serves: a release must not
   turn into an outage. Counted as a fallback.
4. A retry (the backend could not be reached) takes another backend of the same service, then
   another service by weight (then a fallback service), at most ``MAX_ATTEMPTS`` tries in all.
5. A request with a preview marker of an app's open release goes to the release's new service
   whatever its weight, unpinned (docs/release-ramp.md, "Preview"); a preview link is answered
   with a redirect that sets the preview cookie.

:func:`choose` makes the whole choice for one request (rules 1, 2, 3 and 5);
:func:`retry_plan` decides whether a request whose backend failed goes again (rule 4, and the
keep-alive race), :func:`retry` where. The exchange (``router.dataplane.exchange``) carries out what
they decide.

Passive health asks :func:`elsewhere` before it takes a backend out of rotation: a service whose
every backend is out is down, and rules 1 to 3 send its requests elsewhere, as for a dead one.
"""

from __future__ import annotations

from typing import Callable, Final, Union, cast

from ..http.request_head import RequestHead
from .sticky import Pin, TokenCodec
from .table import App, Backend, HostApp, Preview, Service

MAX_ATTEMPTS: Final = 3  # at most 2 retries

# How a choice was made (for the counters).
WEIGHTED: Final = 0
PINNED: Final = 1
FALLBACK: Final = 2
PREVIEW: Final = 3  # a request with a preview marker that its pin or the weights sent there
MARKED: Final = 4   # a request with a preview marker sent there by the marker alone, unpinned

# What the client's cookie becomes (the last item of a Choice): left as it is, a new pin, or a
# pin refreshed with its first issue time kept (any positive value: that time).
KEEP_COOKIE: Final = -1
NEW_PIN: Final = 0

Choice = tuple[Service, Backend, int, int]  # service, backend, how, the cookie (above)

# What choose decides when no backend is chosen: an answer of the router's own.
UNAVAILABLE: Final = 0  # 503: no service of the app can serve
NO_PREVIEW: Final = 1   # 503: the release's new version has no healthy backend
# ... or bytes: a preview link, answered with a 303 whose extra header fields these are.
Route = Union[Choice, int, bytes]

# The query parameter of a preview link: ?router-preview=<token> (docs/release-ramp.md).
PREVIEW_PARAM: Final = b"router-preview="

# Why a request's backend failed before any response head (retry_plan's cause).
CONNECT_FAILED: Final = 0  # no connection: nothing was sent
LOST: Final = 1            # the connection closed: the request may have reached the backend
# What retry_plan decides.
GIVE_UP: Final = 0      # 502: every try is spent
NO_REPLAY: Final = 1    # 502: the request cannot go again (its body is not held, or bytes may
                        # have reached the backend and it is not idempotent)
RETRY: Final = 2        # another backend (retry)
RETRY_FRESH: Final = 3  # the same backend on a new connection


def choose(scope: HostApp, head: RequestHead, headers: list[tuple[bytes, bytes]],
           pin: Pin | None, now: int, monotonic: Callable[[], float],
           codec: TokenCodec) -> Route:
    """Where the request goes: a Choice, or the answer the router gives itself.

    ``pin`` is the client's verified sticky pin (None: none, or the app is not sticky),
    ``now`` the wall-clock time in seconds (tokens), ``monotonic`` the clock drains are timed
    by; both clocks are the caller's, so that a test moves them. ``scope``: the app as the
    request's host reaches it (its preview cookie's name and path)."""
    app = scope.app
    pv = app.preview
    marked = False
    if pv is not None:
        marker = _marker(scope, pv, head, headers, now, codec)
        if isinstance(marker, bytes):
            return marker
        marked = marker
    # (A Route, not a Choice: compiled, a Choice is a tuple taken apart, and made again to be
    # returned as a Route.)
    found: Route | None = None
    if pin is not None:
        found = pinned(app, pin, now, codec.refresh_after, monotonic)
    if found is None:
        found = weighted(app)
    if marked and pv is not None:
        choice = cast("Choice | None", found)
        if choice is not None and choice[0] is pv.service:
            # Sent there by its pin or its weight: pinned as any request, counted as preview.
            return choice[0], choice[1], PREVIEW, choice[3]
        found = preview(pv)
        return NO_PREVIEW if found is None else found
    return UNAVAILABLE if found is None else found


def _marker(scope: HostApp, pv: Preview, head: RequestHead,
            headers: list[tuple[bytes, bytes]], now: int, codec: TokenCodec) -> bool | bytes:
    """Whether the request carries a preview marker of the app's open release: its header
    field, or a valid preview cookie. A preview link (``?router-preview=<token>``) with a valid
    token: the extra header fields of its answer, a redirect to the same URL without it that
    sets the cookie."""
    name = pv.header
    if name:
        n = len(name)
        for field, value in headers:
            if len(field) == n and field.lower() == name and value.strip() == pv.value:
                return True
    app = scope.app
    cookie = head.cookie
    if cookie is not None and codec.previewing(app.name_b, cookie, scope.preview_eq,
                                               pv.token_id, now):
        return True
    url = head.url
    i = url.find(PREVIEW_PARAM)
    if i > 0 and (url[i - 1] == 63 or url[i - 1] == 38):  # after "?" or "&"
        start = i + len(PREVIEW_PARAM)
        end = url.find(b"&", start)
        if end < 0:
            end = len(url)
        token = url[start:end]
        found = codec.verify_preview(app.name_b, token, now)
        if found is not None and found[0] == pv.token_id:
            cut = i - 1  # url[cut:end] is the parameter with the "?" or "&" before it
            rest = url[end:]
            if url[cut] == 63 and rest:  # "?router-preview=...&a=1" -> "?a=1"
                rest = b"?" + rest[1:]
            return (b"Location: " + url[:cut] + rest + b"\r\nSet-Cookie: "
                    + scope.preview_eq + token + scope.preview_attrs
                    + b"; Max-Age=%d; HttpOnly; SameSite=Lax\r\n" % (found[1] - now))
    return False


def retry_plan(cause: int, attempts: int, replayable: bool, idempotent: bool, reused: bool,
               stale: bool) -> int:
    """After a request's backend failed before any response head (``cause``), having tried
    ``attempts`` times: RETRY (another backend), RETRY_FRESH (the same backend on a new
    connection), or a 502 (GIVE_UP, NO_REPLAY), as Envoy's RetryState decides. Only a request
    whose body is still held (``replayable``) goes again; after a lost connection, only an
    idempotent one (bytes may have reached the backend). A pooled connection (``reused``) lost
    before any answer is most likely the keep-alive race, the backend closing it as it was
    reused: the same backend again, once (``stale``: that was done already)."""
    if cause == LOST:
        if not (replayable and idempotent):
            return NO_REPLAY
        if reused and not stale:
            return RETRY_FRESH
    if attempts < MAX_ATTEMPTS and replayable:
        return RETRY
    return GIVE_UP


def pinned(app: App, pin: Pin, now: int, refresh_after: int,
           monotonic: Callable[[], float]) -> Choice | None:
    """Where a verified pin sends the client, or None when it no longer binds (its service is
    gone, drained past ``drain_timeout``, or has no healthy backend)."""
    svc = app.by_token.get(pin.service_id)
    if svc is None:
        return None
    if (svc.zero_since is not None and app.drain_timeout is not None
            and monotonic() - svc.zero_since >= app.drain_timeout):
        return None
    be = svc.by_token.get(pin.backend_id)
    if be is not None and be.healthy:
        return svc, be, PINNED, pin.issued if now - pin.seen >= refresh_after else KEEP_COOKIE
    be = svc.pick()
    if be is None:
        return None
    return svc, be, PINNED, NEW_PIN


def weighted(app: App) -> Choice | None:
    """A service by weight and its least-loaded backend; the fallback when no weighted service
    can serve; None when nothing can."""
    svc = app.pick()
    how = WEIGHTED
    if svc is None:
        svc = app.pick_fallback()
        if svc is None:
            return None
        how = FALLBACK
    be = svc.pick()
    if be is None:
        return None
    return svc, be, how, NEW_PIN if app.sticky else KEEP_COOKIE


def preview(pv: Preview) -> Choice | None:
    """The least-loaded healthy backend of the release's new service, not pinned: a preview
    request must not move the client's sticky cookie (None: the new service has no healthy
    backend)."""
    svc = pv.service
    be = svc.pick()
    if be is None:
        return None
    return svc, be, MARKED, KEEP_COOKIE


def retry(app: App, svc: Service, tried: list[Backend]) -> Choice | None:
    """After ``tried`` could not be reached: another backend of ``svc``, else another service by
    weight, else a fallback service; None when every candidate has been tried."""
    cookie = NEW_PIN if app.sticky else KEEP_COOKIE
    be = svc.pick(tried)
    if be is not None:
        return svc, be, WEIGHTED, cookie
    exhausted = [s for s in app.services if all(b in tried for b in s.healthy)]
    how = WEIGHTED
    nsvc = app.pick(exhausted)
    if nsvc is None:
        nsvc = app.pick_fallback(exhausted)
        how = FALLBACK
    if nsvc is None:
        return None
    be = nsvc.pick(tried)
    if be is None:
        return None
    return nsvc, be, how, cookie


def elsewhere(app: App, svc: Service, be: Backend) -> bool:
    """Whether requests would still find a backend with ``be`` (of ``svc``) out of rotation:
    another of ``svc``, or -- when any service of the app has weight -- one of another service,
    which the weights, a pin's fresh pick (rule 1) or the fallback (rule 3) reach. When none
    would, ejecting ``be`` would turn its slow or failing answers into none at all."""
    if any(b.healthy for b in svc.backends if b is not be):
        return True
    return (any(s.weight > 0 for s in app.services)
            and any(b.healthy for s in app.services if s is not svc for b in s.backends))


def cookie_line(codec: TokenCodec, scope: HostApp, svc: Service, be: Backend, issued: int,
                now: int) -> bytes:
    """The ``Set-Cookie`` field pinning the client to ``be``, in the app's cookie on the
    request's host."""
    token = codec.issue(scope.app.name_b, svc.token_id, be.token_id, issued, now)
    return scope.set_cookie + token + scope.cookie_attrs
