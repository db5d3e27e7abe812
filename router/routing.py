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
   whatever its weight, unpinned (docs/release-ramp.md, "Preview").

Passive health asks :func:`elsewhere` before it takes a backend out of rotation: a service whose
every backend is out is down, and rules 1 to 3 send its requests elsewhere, as for a dead one.
"""

from __future__ import annotations

from typing import Callable, Final

from .sticky import Pin, TokenCodec
from .table import App, Backend, HostApp, Preview, Service

MAX_ATTEMPTS: Final = 3  # at most 2 retries

# How a choice was made (for the counters).
WEIGHTED: Final = 0
PINNED: Final = 1
FALLBACK: Final = 2
PREVIEW: Final = 3

# What the client's cookie becomes (the last item of a Choice): left as it is, a new pin, or a
# pin refreshed with its first issue time kept (any positive value: that time).
KEEP_COOKIE: Final = -1
NEW_PIN: Final = 0

Choice = tuple[Service, Backend, int, int]  # service, backend, how, the cookie (above)


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
    return svc, be, PREVIEW, KEEP_COOKIE


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
