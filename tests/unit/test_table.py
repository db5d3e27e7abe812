"""router.dataplane.table: host and prefix lookup, candidates, state carried across builds."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from router.config import AppConfig, Route, ServiceConfig, parse_app
from router.dataplane.sticky import TokenCodec
from router.dataplane.table import (App, Backend, HostApp, RoutingTable, TableBuilder, cookie_name,
                                    normalize_host)

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(SECRET, 1800, 28800)


@pytest.fixture
def builder(codec: TokenCodec) -> TableBuilder:
    return TableBuilder(codec)


def svc(name: str, weight: int, *backends: str) -> ServiceConfig:
    return ServiceConfig(name=name, weight=weight, backends=backends)


def shop(blue: int = 100, green: int = 0, green_backends: tuple[str, ...] = ("10.0.0.3:8080",),
         **kw: object) -> AppConfig:
    services = [svc("blue", blue, "10.0.0.1:8080", "10.0.0.2:8080")]
    if green_backends:
        services.append(svc("green", green, *green_backends))
    return AppConfig(name="shop", routes=(Route("shop.example.com"),), services=tuple(services),
                     **kw)  # type: ignore[arg-type]


def one_app(name: str, *routes: Route) -> AppConfig:
    return AppConfig(name=name, routes=routes, services=(svc("web", 100, f"{name}.internal:80"),))


def names(hit: HostApp | None) -> str | None:
    return None if hit is None else hit.app.name


# --------------------------------------------------------------------------------------------
# Host lookup
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [
    (b"shop.example.com", b"shop.example.com"),
    (b"Shop.EXAMPLE.com", b"shop.example.com"),
    (b"shop.example.com:8080", b"shop.example.com"),
    (b"shop.example.com.", b"shop.example.com"),
    (b"Shop.Example.com.:8080", b"shop.example.com"),
    (b" shop.example.com ", b"shop.example.com"),
    (b"10.0.0.1:80", b"10.0.0.1"),
    (b"[::1]:8080", b"[::1]"),
    (b"[::1]", b"[::1]"),
    (b"[2001:DB8::1]:443", b"[2001:db8::1]"),
    (b"", b""),
])
def test_normalize_host(host: bytes, expected: bytes) -> None:
    assert normalize_host(host) == expected


def test_lookup_host_variants(builder: TableBuilder) -> None:
    table = builder.build([shop()], 1)
    app = table.apps["shop"]
    for host in (b"shop.example.com", b"SHOP.Example.COM", b"shop.example.com:8080",
                 b"shop.example.com.", b"shop.example.com.:80"):
        assert names(table.lookup(host, b"/")) == app.name, host
        assert names(table.lookup(host, b"/any/path")) == app.name, host


def test_lookup_ipv6_literal(builder: TableBuilder) -> None:
    # Config routes are DNS names; the table itself keys on whatever host it is given.
    table = builder.build([one_app("local", Route("[::1]"))], 1)
    local = table.apps["local"]
    assert names(table.lookup(b"[::1]:8080", b"/")) == local.name
    assert names(table.lookup(b"[::1]", b"/x")) == local.name
    assert table.lookup(b"[::2]:8080", b"/") is None


def test_lookup_unknown_host_is_none(builder: TableBuilder) -> None:
    table = builder.build([shop()], 1)
    assert table.lookup(b"other.example.com", b"/") is None
    assert table.lookup(b"example.com", b"/") is None
    assert table.lookup(b"xshop.example.com", b"/") is None
    assert table.lookup(b"", b"/") is None


def test_empty_table(builder: TableBuilder) -> None:
    table = builder.build([], 7)
    assert isinstance(table, RoutingTable)
    assert table.generation == 7
    assert table.apps == {}
    assert table.lookup(b"shop.example.com", b"/") is None


# --------------------------------------------------------------------------------------------
# Path prefixes
# --------------------------------------------------------------------------------------------


@pytest.fixture
def prefix_table(builder: TableBuilder) -> RoutingTable:
    # Routes deliberately listed shortest first: the table must order them itself.
    return builder.build([
        one_app("root", Route("api.example.com")),
        one_app("api", Route("api.example.com", "/api")),
        one_app("v2", Route("api.example.com", "/api/v2")),
        one_app("docs", Route("docs.example.com", "/docs")),
    ], 1)


@pytest.mark.parametrize(("host", "path", "expected"), [
    (b"api.example.com", b"/", "root"),
    (b"api.example.com", b"/other", "root"),
    (b"api.example.com", b"/api", "api"),
    (b"api.example.com", b"/api/", "api"),
    (b"api.example.com", b"/api/x", "api"),
    (b"api.example.com", b"/api/v1/users", "api"),
    (b"api.example.com", b"/apix", "root"),
    (b"api.example.com", b"/ap", "root"),
    (b"api.example.com", b"/api/v2", "v2"),
    (b"api.example.com", b"/api/v2/", "v2"),
    (b"api.example.com", b"/api/v2/users", "v2"),
    (b"api.example.com", b"/api/v2x", "api"),
    (b"API.example.com:443", b"/api/v2/users", "v2"),
    (b"docs.example.com", b"/docs", "docs"),
    (b"docs.example.com", b"/docs/intro", "docs"),
    (b"docs.example.com", b"/docsx", None),
    (b"docs.example.com", b"/", None),
    (b"docs.example.com", b"", None),
])
def test_longest_prefix_on_segment_boundary(prefix_table: RoutingTable, host: bytes, path: bytes,
                                            expected: str | None) -> None:
    assert names(prefix_table.lookup(host, path)) == expected


def test_two_prefixes_of_one_app(builder: TableBuilder) -> None:
    app = AppConfig(
        name="shop",
        routes=(Route("shop.example.com", "/a"), Route("shop.example.com", "/b/c")),
        services=(svc("web", 1, "10.0.0.1:80"),),
    )
    table = builder.build([app], 1)
    assert names(table.lookup(b"shop.example.com", b"/a/1")) == "shop"
    assert names(table.lookup(b"shop.example.com", b"/b/c")) == "shop"
    assert table.lookup(b"shop.example.com", b"/b") is None


# --------------------------------------------------------------------------------------------
# Apps, services, candidates
# --------------------------------------------------------------------------------------------


def test_build_from_parse_app(builder: TableBuilder) -> None:
    cfg = parse_app("shop", {
        "routes": ["shop.example.com", "www.example.com/shop"],
        "session_sticky": False,
        "drain_timeout": "5m",
        "services": {
            "blue": {"weight": 25, "backends": ["10.0.0.1:8080", "10.0.0.2:80"]},
            "green": {"weight": 75, "backends": ["[::1]:9000"]},
        },
    }, None, "apps.shop")
    table = builder.build([cfg], 3)
    app = table.apps["shop"]
    assert table.generation == 3
    assert names(table.lookup(b"shop.example.com", b"/")) == app.name
    assert names(table.lookup(b"www.example.com", b"/shop/cart")) == app.name
    assert table.lookup(b"www.example.com", b"/") is None
    assert (app.name, app.name_b, app.sticky, app.drain_timeout) == ("shop", b"shop", False, 300.0)
    assert [s.name for s in app.services] == ["blue", "green"]
    assert [s.weight for s in app.services] == [25, 75]
    blue, green = app.services
    assert app.by_name == {"blue": blue, "green": green}
    assert [(b.key, b.host, b.port) for b in blue.backends] == [
        ("10.0.0.1:8080", "10.0.0.1", 8080), ("10.0.0.2:80", "10.0.0.2", 80)]
    assert [(b.key, b.host, b.port) for b in green.backends] == [("[::1]:9000", "::1", 9000)]
    # 25:75 is 1:3 -> "B A B B" on the service level too.
    assert "".join(app.pick().name[0] for _ in range(8)) == "gbgg" * 2  # type: ignore[union-attr]


def candidates(app: App) -> tuple[object, ...]:
    """The services ``app.pick()`` chooses among, in the app's order: those a whole round of
    picks (as many as the weights add up to) returns. A whole round leaves the smooth round
    robin where it was when every weighted service is a candidate."""
    picked = {app.pick() for _ in range(sum(s.weight for s in app.services))}
    return tuple(s for s in app.services if s in picked)


def test_candidates_exclude_weight_zero(builder: TableBuilder) -> None:
    app = builder.build([shop(blue=100, green=0)], 1).apps["shop"]
    blue, green = app.services
    assert candidates(app) == (blue,)
    assert [app.pick() for _ in range(3)] == [blue, blue, blue]
    assert app.pick(exclude={blue}) is None
    # Still there for pinned clients (drain).
    assert app.by_name["green"] is green
    assert green.weight == 0


def test_candidates_with_both_weights(builder: TableBuilder) -> None:
    app = builder.build([shop(blue=10, green=30)], 1).apps["shop"]
    blue, green = app.services
    assert candidates(app) == (blue, green)
    assert [app.pick() for _ in range(4)] == [green, blue, green, green]


def test_all_weights_zero_no_candidate(builder: TableBuilder) -> None:
    app = builder.build([shop(blue=0, green=0)], 1).apps["shop"]
    assert candidates(app) == ()
    assert app.pick() is None


def test_unhealthy_backends_are_left_out(builder: TableBuilder) -> None:
    builder.build([shop(blue=50, green=50)], 1)
    b1 = builder.backend("shop", "blue", "10.0.0.1:8080")
    b2 = builder.backend("shop", "blue", "10.0.0.2:8080")
    g1 = builder.backend("shop", "green", "10.0.0.3:8080")
    assert b1 is not None and b2 is not None and g1 is not None

    b1.healthy = False
    app = builder.build([shop(blue=50, green=50)], 2).apps["shop"]
    blue, green = app.services
    assert blue.backends == (b1, b2)
    assert blue.healthy == (b2,)
    assert [blue.pick() for _ in range(3)] == [b2, b2, b2]
    assert candidates(app) == (blue, green)

    g1.healthy = False
    app = builder.build([shop(blue=50, green=50)], 3).apps["shop"]
    blue, green = app.services
    assert green.healthy == ()
    assert green.pick() is None
    assert candidates(app) == (blue,)
    assert [app.pick() for _ in range(3)] == [blue, blue, blue]

    b2.healthy = False
    app = builder.build([shop(blue=50, green=50)], 4).apps["shop"]
    assert candidates(app) == ()
    assert app.pick() is None

    b1.healthy = b2.healthy = g1.healthy = True
    app = builder.build([shop(blue=50, green=50)], 5).apps["shop"]
    assert candidates(app) == app.services


def test_health_change_shows_only_after_a_rebuild(builder: TableBuilder) -> None:
    app = builder.build([shop(blue=50, green=50)], 1).apps["shop"]
    g1 = builder.backend("shop", "green", "10.0.0.3:8080")
    assert g1 is not None
    g1.healthy = False
    # The snapshot is immutable: the old table still lists green.
    assert candidates(app) == app.services


def test_service_pick_is_least_in_flight(builder: TableBuilder) -> None:
    blue = builder.build([shop()], 1).apps["shop"].by_name["blue"]
    b1, b2 = blue.backends
    assert [blue.pick() for _ in range(4)] == [b1, b2, b1, b2]
    b1.inflight = 1
    assert [blue.pick() for _ in range(2)] == [b2, b2]
    assert blue.pick(exclude={b2}) is b1


# --------------------------------------------------------------------------------------------
# State carried across builds
# --------------------------------------------------------------------------------------------


def test_backends_and_stats_are_the_same_objects_across_builds(builder: TableBuilder) -> None:
    t1 = builder.build([shop()], 1)
    blue1 = t1.apps["shop"].by_name["blue"]
    blue1.backends[0].inflight = 4
    blue1.stats.retries = 2
    t2 = builder.build([shop(blue=60, green=40)], 2)
    assert t2 is not t1
    blue2 = t2.apps["shop"].by_name["blue"]
    assert blue2 is not blue1  # a Service belongs to one snapshot
    assert blue2.backends == blue1.backends
    assert all(a is b for a, b in zip(blue2.backends, blue1.backends, strict=True))
    assert blue2.stats is blue1.stats
    assert blue2.backends[0].inflight == 4
    assert blue2.stats.retries == 2
    assert t2.apps["shop"].by_name["green"].stats is t1.apps["shop"].by_name["green"].stats
    assert builder.backend("shop", "blue", "10.0.0.1:8080") is blue1.backends[0]
    assert set(map(id, builder.all_backends())) == {
        id(b) for s in t2.apps["shop"].services for b in s.backends}


def test_removed_backends_and_services_are_dropped(builder: TableBuilder) -> None:
    t1 = builder.build([shop()], 1)
    green1 = t1.apps["shop"].by_name["green"]
    old_backend = green1.backends[0]
    old_backend.healthy = False
    old_backend.inflight = 3

    t2 = builder.build([shop(green_backends=())], 2)
    assert [s.name for s in t2.apps["shop"].services] == ["blue"]
    assert builder.backend("shop", "green", "10.0.0.3:8080") is None
    assert sorted(b.key for b in builder.all_backends()) == ["10.0.0.1:8080", "10.0.0.2:8080"]

    t3 = builder.build([shop()], 3)
    green3 = t3.apps["shop"].by_name["green"]
    new_backend = green3.backends[0]
    assert new_backend is not old_backend
    assert (new_backend.healthy, new_backend.inflight) == (True, 0)
    assert green3.stats is not green1.stats


def test_removed_backend_of_a_kept_service_is_dropped(builder: TableBuilder) -> None:
    builder.build([shop()], 1)
    kept = builder.backend("shop", "blue", "10.0.0.1:8080")
    cfg = AppConfig(name="shop", routes=(Route("shop.example.com"),),
                    services=(svc("blue", 100, "10.0.0.1:8080"),))
    blue = builder.build([cfg], 2).apps["shop"].by_name["blue"]
    assert blue.backends == (kept,)
    assert builder.backend("shop", "blue", "10.0.0.2:8080") is None


def test_same_address_in_two_services_is_two_backends(builder: TableBuilder) -> None:
    cfg = AppConfig(name="shop", routes=(Route("shop.example.com"),),
                    services=(svc("blue", 1, "10.0.0.1:80"), svc("green", 1, "10.0.0.1:80")))
    app = builder.build([cfg], 1).apps["shop"]
    blue_be = app.by_name["blue"].backends[0]
    green_be = app.by_name["green"].backends[0]
    assert blue_be is not green_be
    assert blue_be.token_id != green_be.token_id


def test_zero_since_kept_while_zero_and_cleared_above(builder: TableBuilder) -> None:
    before = time.monotonic()
    app = builder.build([shop(blue=100, green=0)], 1).apps["shop"]
    after = time.monotonic()
    assert app.by_name["blue"].zero_since is None
    since = app.by_name["green"].zero_since
    assert since is not None and before <= since <= after

    app = builder.build([shop(blue=100, green=0)], 2).apps["shop"]
    assert app.by_name["green"].zero_since == since
    app = builder.build([shop(blue=90, green=0)], 3).apps["shop"]
    assert app.by_name["green"].zero_since == since

    app = builder.build([shop(blue=90, green=10)], 4).apps["shop"]
    assert app.by_name["green"].zero_since is None

    before = time.monotonic()
    app = builder.build([shop(blue=100, green=0)], 5).apps["shop"]
    again = app.by_name["green"].zero_since
    assert again is not None and again >= before >= since


def test_zero_since_resets_when_the_service_is_removed(builder: TableBuilder) -> None:
    builder.build([shop(blue=100, green=0)], 1)
    builder.build([shop(green_backends=())], 2)
    before = time.monotonic()
    app = builder.build([shop(blue=100, green=0)], 3).apps["shop"]
    since = app.by_name["green"].zero_since
    assert since is not None and since >= before


# --------------------------------------------------------------------------------------------
# Token ids
# --------------------------------------------------------------------------------------------


def test_by_token_maps_codec_ids(builder: TableBuilder, codec: TokenCodec) -> None:
    app = builder.build([shop()], 1).apps["shop"]
    blue, green = app.services
    assert app.by_token == {
        codec.service_id("shop", "blue"): blue,
        codec.service_id("shop", "green"): green,
    }
    assert blue.token_id == codec.service_id("shop", "blue")
    b1, b2 = blue.backends
    assert blue.by_token == {
        codec.backend_id("shop", "blue", "10.0.0.1:8080"): b1,
        codec.backend_id("shop", "blue", "10.0.0.2:8080"): b2,
    }
    assert b1.token_id == codec.backend_id("shop", "blue", "10.0.0.1:8080")
    assert green.by_token == {codec.backend_id("shop", "green", "10.0.0.3:8080"): green.backends[0]}


def test_by_token_includes_unhealthy_backends(builder: TableBuilder, codec: TokenCodec) -> None:
    builder.build([shop()], 1)
    b1 = builder.backend("shop", "blue", "10.0.0.1:8080")
    assert b1 is not None
    b1.healthy = False
    blue = builder.build([shop()], 2).apps["shop"].by_name["blue"]
    assert blue.by_token[codec.backend_id("shop", "blue", "10.0.0.1:8080")] is b1


def test_token_round_trip_through_the_table(builder: TableBuilder, codec: TokenCodec) -> None:
    app = builder.build([shop()], 1).apps["shop"]
    green = app.by_name["green"]
    backend = green.backends[0]
    tok = codec.issue(app.name_b, green.token_id, backend.token_id, 1000, 1000)
    pin = codec.verify(app.name_b, tok, 1000)
    assert pin is not None
    service = app.by_token[pin.service_id]
    assert service is green
    assert service.by_token[pin.backend_id] is backend
    # A rebuild keeps the same ids, so old cookies still find their backend.
    app2 = builder.build([shop(blue=50, green=50)], 2).apps["shop"]
    assert app2.by_token[pin.service_id].by_token[pin.backend_id] is backend


def test_backend_repr_and_defaults() -> None:
    be = Backend("[::1]:8080", b"123456")
    assert (be.host, be.port, be.inflight, be.healthy, be.token_id) == ("::1", 8080, 0, True,
                                                                       b"123456")
    assert repr(be) == "Backend('[::1]:8080', inflight=0, healthy=True)"


# --------------------------------------------------------------------------------------------
# The cookie of each app
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("routes", "scopes"), [
    (["shop.test"], ("CONTAINERID", {"shop.test": "/"})),
    (["shop.test", "www.shop.test"], ("CONTAINERID", {"shop.test": "/", "www.shop.test": "/"})),
    (["shop.test/admin"], ("CONTAINERID", {"shop.test": "/admin"})),
    (["shop.test", "example.test/shop"], ("CONTAINERID", {"shop.test": "/",
                                                          "example.test": "/shop"})),
    (["shop.test/api/v1"], ("CONTAINERID", {"shop.test": "/api/v1"})),
    # Routes on two paths of one host: a name of its own, and the path they all share.
    (["shop.test/a", "shop.test/b"], ("CONTAINERID_web", {"shop.test": "/"})),
    (["shop.test/a/x", "shop.test/a/y", "b.test/z"], ("CONTAINERID_web", {"shop.test": "/a",
                                                                         "b.test": "/z"})),
    (["shop.test/a/x", "shop.test/a/xy"], ("CONTAINERID_web", {"shop.test": "/a"})),
    (["shop.test/a/t", "shop.test/a/t-x", "shop.test/a/t/y"], ("CONTAINERID_web",
                                                             {"shop.test": "/a"})),
    (["shop.test", "shop.test/api"], ("CONTAINERID_web", {"shop.test": "/"})),
])
def test_cookie_scope(builder: TableBuilder, routes: list[str],
                      scopes: tuple[str, dict[str, str]]) -> None:
    cfg = parse_app("web", {"routes": routes, "services": {"v1": {"backends": []}}}, None, "")
    name, paths = scopes
    assert cookie_name(cfg, "CONTAINERID") == name
    table = builder.build([cfg], 1)
    for route in cfg.routes:
        scope = table.lookup(route.host.encode(), route.path.encode())
        assert scope is not None and scope.app is table.apps["web"]
        assert scope.cookie_eq == name.encode() + b"="
        assert scope.cookie_attrs == b"; Path=%s; HttpOnly; SameSite=Lax" % paths[route.host].encode()


def test_two_apps_of_one_host_have_a_cookie_each(builder: TableBuilder) -> None:
    table = builder.build([one_app("home", Route("shop.test")),
                           one_app("admin", Route("shop.test", "/admin"))], 1)
    home, admin = table.lookup(b"shop.test", b"/"), table.lookup(b"shop.test", b"/admin/x")
    assert home is not None and admin is not None
    assert (home.set_cookie, home.cookie_attrs) == (
        b"Set-Cookie: CONTAINERID=", b"; Path=/; HttpOnly; SameSite=Lax")
    assert (admin.set_cookie, admin.cookie_attrs) == (
        b"Set-Cookie: CONTAINERID=", b"; Path=/admin; HttpOnly; SameSite=Lax")
    assert (admin.preview_eq, admin.preview_attrs) == (b"CONTAINERID_PREVIEW=", b"; Path=/admin")
    sid = TableBuilder(builder._codec, "SID").build([one_app("admin", Route("shop.test", "/admin"))], 1)
    assert sid.lookup(b"shop.test", b"/admin").cookie_eq == b"SID="  # type: ignore[union-attr]


def test_a_service_is_named_in_tokens_with_its_incarnation(builder: TableBuilder,
                                                           codec: TokenCodec) -> None:
    app = shop(green=50)
    again = AppConfig(app.name, app.routes, (app.services[0], replace(app.services[1], incarnation=7)))
    one, two = builder.build([app], 1).apps["shop"], builder.build([again], 2).apps["shop"]
    assert one.by_name["green"].token_id == codec.service_id("shop", "green")
    assert two.by_name["green"].token_id == codec.service_id("shop", "green", 7)
    assert one.by_name["blue"].token_id == two.by_name["blue"].token_id
