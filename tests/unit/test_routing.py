"""router.routing: the choice of service and backend, pure, with the clock passed in."""

from __future__ import annotations

from router import routing
from router.config import config_from_dict
from router.sticky import Pin, TokenCodec
from router.table import App, TableBuilder

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
