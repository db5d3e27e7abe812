"""router.dataplane.routing: the choice of service and backend, pure, with the clock passed in."""

from __future__ import annotations

import pytest

from router.dataplane import routing
from router.config import config_from_dict
from router.http.request_head import RequestHead
from router.dataplane.sticky import Pin, TokenCodec
from router.dataplane.table import App, HostApp, TableBuilder

CODEC = TokenCodec(b"k" * 32, 1800, 28800)


def app(services: dict[str, tuple[int, list[str]]], sticky: bool = True,
        drain: str | None = None, unhealthy: tuple[str, ...] = ()) -> App:
    cfg = config_from_dict({"apps": {"shop": {
        "routes": ["shop.test"], "session_sticky": sticky,
        **({"drain_timeout": drain} if drain else {}),
        "services": {n: {"weight": w, "backends": b} for n, (w, b) in services.items()}}}})
    builder = TableBuilder(CODEC)
    table = builder.build(cfg.apps, 1)
    for be in builder.all_backends():
        be.healthy = be.key not in unhealthy
    return builder.build(cfg.apps, 1).apps["shop"] if unhealthy else table.apps["shop"]


def pin(a: App, service: str, backend: str, issued: int = 100, seen: int = 100) -> Pin:
    svc = a.by_name[service]
    be = next(b for b in svc.backends if b.key == backend)
    return Pin(svc.token_id, be.token_id, issued, seen)


def names(choice: routing.Choice | None) -> tuple[str, str, int, int] | None:
    if choice is None:
        return None
    svc, be, how, cookie = choice
    return svc.name, be.key, how, cookie


def test_weighted_sequence_and_the_pin_for_a_new_client():
    a = app({"blue": (1, ["10.0.0.1:80"]), "green": (3, ["10.0.0.2:80"])})
    picks = [names(routing.weighted(a)) for _ in range(8)]
    assert [p[0] for p in picks if p] == ["green", "blue", "green", "green"] * 2
    assert {p[2:] for p in picks if p} == {(routing.WEIGHTED, routing.NEW_PIN)}
    b = app({"blue": (1, ["10.0.0.1:80"])}, sticky=False)
    assert names(routing.weighted(b)) == ("blue", "10.0.0.1:80", routing.WEIGHTED, routing.KEEP_COOKIE)


def test_a_pin_binds_even_at_weight_0_and_is_refreshed_keeping_its_issue_time():
    a = app({"blue": (0, ["10.0.0.1:80"]), "green": (100, ["10.0.0.2:80"])})
    p = pin(a, "blue", "10.0.0.1:80", issued=100, seen=100)
    clock = lambda: 1000.0  # noqa: E731
    # Seen recently: the cookie stays as it is.
    assert names(routing.pinned(a, p, 150, 450, clock)) == (
        "blue", "10.0.0.1:80", routing.PINNED, routing.KEEP_COOKIE)
    # Seen a quarter of max_idle ago: refreshed, first issue time kept.
    assert names(routing.pinned(a, p, 600, 450, clock)) == ("blue", "10.0.0.1:80", routing.PINNED, 100)


def test_an_unhealthy_pinned_backend_keeps_the_version_and_repins():
    a = app({"blue": (0, ["10.0.0.1:80", "10.0.0.3:80"]), "green": (100, ["10.0.0.2:80"])},
            unhealthy=("10.0.0.1:80",))
    p = pin(a, "blue", "10.0.0.1:80")
    assert names(routing.pinned(a, p, 150, 450, lambda: 0.0)) == (
        "blue", "10.0.0.3:80", routing.PINNED, routing.NEW_PIN)


def test_drain_timeout_ends_the_pin_by_the_injected_clock():
    a = app({"blue": (0, ["10.0.0.1:80"]), "green": (100, ["10.0.0.2:80"])}, drain="10s")
    p = pin(a, "blue", "10.0.0.1:80")
    zero = a.by_name["blue"].zero_since
    assert zero is not None
    assert routing.pinned(a, p, 150, 450, lambda: zero + 9.9) is not None
    assert routing.pinned(a, p, 150, 450, lambda: zero + 10.0) is None  # re-pinned by weight


def test_fallback_to_weight_0_when_no_weighted_service_can_serve():
    a = app({"blue": (0, ["10.0.0.1:80"]), "green": (100, ["10.0.0.2:80"])},
            unhealthy=("10.0.0.2:80",))
    assert names(routing.weighted(a)) == ("blue", "10.0.0.1:80", routing.FALLBACK, routing.NEW_PIN)
    assert a.unavailable == b"no healthy backend for this app\n"


def test_no_fallback_when_every_weight_is_0():
    a = app({"blue": (0, ["10.0.0.1:80"])})
    assert routing.weighted(a) is None
    assert a.unavailable == b"all weights of this app are 0\n"


def test_retry_order_same_service_then_by_weight_then_fallback():
    a = app({"blue": (0, ["10.0.0.9:80"]), "green": (100, ["10.0.0.1:80", "10.0.0.2:80"]),
             "red": (50, ["10.0.0.3:80"])}, sticky=False)
    green, red = a.by_name["green"], a.by_name["red"]
    tried = [green.backends[0]]
    assert names(routing.retry(a, green, tried))[:3] == ("green", "10.0.0.2:80", routing.WEIGHTED)
    tried = list(green.backends)
    assert names(routing.retry(a, green, tried))[:3] == ("red", "10.0.0.3:80", routing.WEIGHTED)
    tried += list(red.backends)
    assert names(routing.retry(a, red, tried))[:3] == ("blue", "10.0.0.9:80", routing.FALLBACK)
    tried += list(a.by_name["blue"].backends)
    assert routing.retry(a, red, tried) is None


def test_a_backend_may_leave_when_its_requests_have_somewhere_else_to_go():
    def leaves(a: App, service: str, backend: str) -> bool:
        svc = a.by_name[service]
        return routing.elsewhere(a, svc, next(b for b in svc.backends if b.key == backend))

    # Another backend of its service.
    a = app({"green": (100, ["10.0.0.1:80", "10.0.0.2:80"])})
    assert leaves(a, "green", "10.0.0.1:80")
    # Its service's last: the old version at weight 0 takes over (the fallback)...
    a = app({"blue": (0, ["10.0.0.9:80"]), "green": (100, ["10.0.0.1:80", "10.0.0.2:80"])},
            unhealthy=("10.0.0.2:80",))
    assert leaves(a, "green", "10.0.0.1:80")
    # ... or, for the last of a weight-0 service its pinned clients use, the weighted one.
    assert leaves(a, "blue", "10.0.0.9:80")
    # A 50/50 split: the other version takes everything.
    a = app({"blue": (50, ["10.0.0.9:80"]), "green": (50, ["10.0.0.1:80"])})
    assert leaves(a, "green", "10.0.0.1:80") and leaves(a, "blue", "10.0.0.9:80")
    # Nowhere else: the old version out too, or an app stopped with every weight at 0.
    a = app({"blue": (0, ["10.0.0.9:80"]), "green": (100, ["10.0.0.1:80"])},
            unhealthy=("10.0.0.9:80",))
    assert not leaves(a, "green", "10.0.0.1:80")
    a = app({"blue": (0, ["10.0.0.9:80"]), "green": (0, ["10.0.0.1:80"])})
    assert not leaves(a, "green", "10.0.0.1:80")
    assert not leaves(app({"green": (100, ["10.0.0.1:80"])}), "green", "10.0.0.1:80")


# -- choose: the whole decision for one request, from tables, on the test's clocks ---------------
NOW = 1_800_000_000  # the wall clock choose is given
STARTED = "2026-11-26T14:33:18Z"


def Head(url: bytes = b"/", cookie: bytes | None = None) -> RequestHead:
    """A request head with the parts choose reads."""
    head = RequestHead()
    head.url = url
    head.cookie = cookie
    return head


def previewing(web: int = 100, v2: int = 0, v2_backends: tuple[str, ...] = ("10.0.0.2:80",),
               header: str = "X-Preview") -> HostApp:
    """``shop`` with web and v2, and an open release of v2 (its marker: ``header: v2``)."""
    cfg = config_from_dict({"apps": {"shop": {
        "routes": ["shop.test"], "preview": {"header": header},
        "services": {"web": {"weight": web, "backends": ["10.0.0.1:80"]},
                     "v2": {"weight": v2, "backends": list(v2_backends) or ["10.0.0.2:80"]}}}}})
    builder = TableBuilder(CODEC)
    table = builder.build(cfg.apps, 1, {"shop": ("v2", STARTED)})
    if not v2_backends:
        for be in builder.all_backends():
            be.healthy = be.key != "10.0.0.2:80"
        table = builder.build(cfg.apps, 1, {"shop": ("v2", STARTED)})
    scope = table.lookup(b"shop.test", b"/")
    assert scope is not None
    return scope


def preview_token(ttl: int = 600) -> bytes:
    return CODEC.issue_preview(b"shop", CODEC.preview_id("shop", "v2", 0, STARTED), NOW, NOW + ttl)


def outcome(route: routing.Route) -> object:
    return names(route) if isinstance(route, tuple) else route


def choose(a: App | HostApp, head: RequestHead | None = None, headers=(),
           pin_: Pin | None = None,
           now: int = NOW, mono: float = 0.0) -> object:
    scope = a if isinstance(a, HostApp) else HostApp(a, "CONTAINERID", "/")
    return outcome(routing.choose(scope, head or Head(), list(headers), pin_, now, lambda: mono,
                                  CODEC))


def test_choose_without_a_release():
    a = app({"blue": (1, ["10.0.0.1:80"])})
    assert choose(a) == ("blue", "10.0.0.1:80", routing.WEIGHTED, routing.NEW_PIN)
    p = pin(a, "blue", "10.0.0.1:80", issued=NOW - 10, seen=NOW - 10)
    assert choose(a, pin_=p) == ("blue", "10.0.0.1:80", routing.PINNED, routing.KEEP_COOKIE)
    down = app({"blue": (1, ["10.0.0.1:80"])}, unhealthy=("10.0.0.1:80",))
    assert choose(down) == routing.UNAVAILABLE


@pytest.mark.parametrize("marker, want", [
    # (the request's marker, where it goes)
    ({}, ("web", "10.0.0.1:80", routing.WEIGHTED, routing.NEW_PIN)),
    ({"headers": [(b"x-preview", b" v2 ")]}, ("v2", "10.0.0.2:80", routing.MARKED,
                                            routing.KEEP_COOKIE)),
    ({"headers": [(b"x-preview", b"v3")]}, ("web", "10.0.0.1:80", routing.WEIGHTED,
                                           routing.NEW_PIN)),
    ({"headers": [(b"x-other", b"v2")]}, ("web", "10.0.0.1:80", routing.WEIGHTED,
                                         routing.NEW_PIN)),
    ({"cookie": b"CONTAINERID_PREVIEW=" + preview_token()}, ("v2", "10.0.0.2:80",
                                                            routing.MARKED, routing.KEEP_COOKIE)),
    ({"cookie": b"CONTAINERID_PREVIEW=" + preview_token()[:-1] + b"x"},
     ("web", "10.0.0.1:80", routing.WEIGHTED, routing.NEW_PIN)),
])
def test_choose_with_a_preview_marker(marker, want):
    a = previewing()
    head = Head(cookie=marker.get("cookie"))
    assert choose(a, head, marker.get("headers", ())) == want


def test_a_marked_request_its_weight_sends_there_is_pinned_and_counted_as_preview():
    a = previewing(web=0, v2=100)
    assert choose(a, headers=[(b"x-preview", b"v2")]) == (
        "v2", "10.0.0.2:80", routing.PREVIEW, routing.NEW_PIN)


def test_a_marked_request_whose_new_version_is_down_is_a_503():
    a = previewing(v2_backends=())
    assert choose(a, headers=[(b"x-preview", b"v2")]) == routing.NO_PREVIEW


@pytest.mark.parametrize("url, location", [
    (b"/a?router-preview=TOKEN", b"/a"),
    (b"/a?router-preview=TOKEN&b=1", b"/a?b=1"),
    (b"/a?b=1&router-preview=TOKEN", b"/a?b=1"),
    (b"/a?b=1&router-preview=TOKEN&c=2", b"/a?b=1&c=2"),
])
def test_a_preview_link_is_answered_with_its_redirect(url, location):
    a = previewing()
    tok = preview_token(ttl=600)
    route = choose(a, Head(url=url.replace(b"TOKEN", tok)), now=NOW + 100)
    assert route == (b"Location: " + location + b"\r\nSet-Cookie: CONTAINERID_PREVIEW=" + tok
                     + b"; Path=/; Max-Age=500; HttpOnly; SameSite=Lax\r\n")


@pytest.mark.parametrize("url", [b"/a?router-preview=bad", b"/a?xrouter-preview=TOKEN",
                                 b"/router-preview=TOKEN"])
def test_no_redirect_for_a_link_not_valid(url):
    a = previewing()
    route = choose(a, Head(url=url.replace(b"TOKEN", preview_token())))
    assert route == ("web", "10.0.0.1:80", routing.WEIGHTED, routing.NEW_PIN)


def test_an_expired_preview_token_by_the_given_clock_is_no_marker():
    a = previewing()
    head = Head(cookie=b"CONTAINERID_PREVIEW=" + preview_token(ttl=60))
    assert choose(a, head, now=NOW + 59)[0] == "v2"
    assert choose(a, head, now=NOW + 61)[0] == "web"


def test_a_drained_pin_ends_by_the_given_monotonic_clock():
    a = app({"blue": (0, ["10.0.0.1:80"]), "green": (100, ["10.0.0.2:80"])}, drain="10s")
    p = pin(a, "blue", "10.0.0.1:80", issued=NOW, seen=NOW)
    zero = a.by_name["blue"].zero_since
    assert choose(a, pin_=p, mono=zero + 9.9)[:3] == ("blue", "10.0.0.1:80", routing.PINNED)
    assert choose(a, pin_=p, mono=zero + 10.0)[:3] == ("green", "10.0.0.2:80",
                                                              routing.WEIGHTED)


# -- retry_plan: whether a request whose backend failed goes again --------------------------------
C, L = routing.CONNECT_FAILED, routing.LOST


@pytest.mark.parametrize("cause, attempts, replayable, idempotent, reused, stale, want", [
    (C, 1, True, False, False, False, routing.RETRY),        # nothing was sent: any method
    (C, 2, True, True, False, False, routing.RETRY),
    (C, 3, True, True, False, False, routing.GIVE_UP),       # three tries in all
    (C, 1, False, True, False, False, routing.GIVE_UP),      # its body is no longer held
    (L, 1, True, True, False, False, routing.RETRY),         # a new connection lost: elsewhere
    (L, 1, True, True, True, False, routing.RETRY_FRESH),    # the keep-alive race: same backend
    (L, 3, True, True, True, False, routing.RETRY_FRESH),    # ... whatever the tries so far
    (L, 2, True, True, True, True, routing.RETRY),           # ... once
    (L, 3, True, True, True, True, routing.GIVE_UP),
    (L, 1, True, False, True, False, routing.NO_REPLAY),     # a POST may have arrived
    (L, 1, False, True, True, False, routing.NO_REPLAY),     # its body is no longer held
])
def test_retry_plan(cause, attempts, replayable, idempotent, reused, stale, want):
    assert routing.retry_plan(cause, attempts, replayable, idempotent, reused, stale) == want
