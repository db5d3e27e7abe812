"""The admin token: which requests carry it, and how slowly a wrong one is answered.

With a token configured (``admin.token_file`` or ``ROUTER_ADMIN_TOKEN``), every request that
sends an ``Authorization`` field is checked here, first, whatever its path (but the health
probes): the right bearer token marks the request (``has_token``: the API, ``/metrics`` and the
browser rules of ``router.admin.guard`` take it as proof that no web page sent it); anything else is
answered 401 after a delay that grows with its source's recent failures (``Throttle``). The
console's sign-in, which takes the token in its body, goes through the same ``Throttle``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from router.errors import TooManyRequests, Unauthorized

from .errors import error_response
from .handlers import SERVER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Probes from a kubelet or a load balancer: answered whatever they send (they reveal nothing).
UNGUARDED = frozenset({"/healthz", "/readyz"})
try:
    _HAS_TOKEN: Any = web.RequestKey("has_token", bool)
except AttributeError:  # aiohttp before 3.13: a string key
    _HAS_TOKEN = "router.admin.has_token"

# The answer to a source's first wrong token waits 0.1 s, each next one twice as long, up to
# 2 s; the answers of one source are spaced by that delay, so it learns at most one wrong token
# per delay however many connections it opens. A source with this many answers waiting gets
# 429 without its token being checked. A right token is checked and answered at once.
FIRST_DELAY = 0.1
MAX_DELAY = 2.0
MAX_WAITING = 4
# Failures are forgotten after this long without one (a typo this morning costs nothing now);
# at most this many sources are remembered, the one whose last failure is oldest forgotten first.
FORGET_AFTER = 600.0
MAX_SOURCES = 4096


def matches(token: str, sent: str) -> bool:
    return hmac.compare_digest(sent.strip().encode(), token.encode())


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else None


def has_token(request: web.Request) -> bool:
    """Whether the request carried the right bearer token, or a console session that stands
    for it (never true without a token)."""
    return bool(request.get(_HAS_TOKEN, False))


def grant(request: web.Request) -> None:
    """The request is as good as one with the token (a signed-in console's)."""
    request[_HAS_TOKEN] = True


def source_of(request: web.Request) -> str:
    """Whom the failures count against: the client's address, an IPv6 client's /64 (one host
    has a whole /64 to choose from)."""
    remote = request.remote or "-"
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class _Source:
    failures: int = 0
    last: float = 0.0  # when its last failure was
    due: float = 0.0  # when the answer to its last failure goes out
    waiting: int = 0  # answers not yet given


class Throttle:
    """The delays of the answers to wrong tokens, per source, in bounded memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._closed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._sources)

    def busy(self, source: str) -> bool:
        """Too many answers of ``source`` waiting: refuse its next try unchecked."""
        known = self._sources.get(source)
        return known is not None and known.waiting >= MAX_WAITING

    def failed(self, source: str) -> float:
        """Count a wrong token from ``source``: the seconds until its answer is due."""
        now = self._clock()
        known = self._sources.pop(source, None)
        if known is None or now - known.last > FORGET_AFTER:
            known = _Source(waiting=known.waiting if known is not None else 0)
        self._sources[source] = known  # the most recent failure last
        if len(self._sources) > MAX_SOURCES:
            self._sources.popitem(last=False)
        known.failures += 1
        known.last = now
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** min(known.failures - 1, 16))
        known.due = max(now, known.due) + delay
        return known.due - now

    async def refuse(self, request: web.Request, message: str, field: str) -> Unauthorized:
        """Wait out the delay of a wrong token from the request's source; the error to raise."""
        source = source_of(request)
        delay = self.failed(source)
        known = self._sources[source]
        known.waiting += 1
        try:
            await asyncio.wait_for(self._closed.wait(), delay)
        except TimeoutError:
            pass
        finally:
            known.waiting -= 1
        return Unauthorized(message, field)

    def close(self) -> None:
        """Answer every waiting refusal now (the listener is stopping)."""
        self._closed.set()


THROTTLE: web.AppKey[Throttle] = web.AppKey("throttle")


def too_many(request: web.Request) -> TooManyRequests | None:
    """The 429 for a source with too many wrong tokens waiting for their answer, else None."""
    if request.app[THROTTLE].busy(source_of(request)):
        return TooManyRequests(f"too many wrong admin tokens from {source_of(request)} are "
                               "waiting for their answer; try again in a few seconds",
                               "Authorization")
    return None


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SERVER].config.admin.token
    if token is None or "Authorization" not in request.headers or request.path in UNGUARDED:
        return await handler(request)
    refused = too_many(request)
    if refused is not None:
        return error_response(refused)
    sent = bearer(request)
    if sent is None or not matches(token, sent):
        throttle = request.app[THROTTLE]
        return error_response(await throttle.refuse(
            request, "wrong bearer token" if sent is not None
            else "the Authorization field must be 'Bearer <admin token>'", "Authorization"))
    grant(request)
    return await handler(request)


def install(app: web.Application) -> None:
    """The throttle of one admin listener, closed when it stops."""
    throttle = app[THROTTLE] = Throttle()

    async def close(_: web.Application) -> None:
        throttle.close()
    app.on_shutdown.append(close)
