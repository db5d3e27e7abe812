"""Session stickiness through the router, in process and with the real process."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp

from tests.conftest import app_config, get, router_config, set_apps
from tests.integration.test_admin_api import Api
from tests.processes import until


def _cookie(headers: dict[str, str]) -> str | None:
    sc = headers.get("Set-Cookie")
    if sc is None:
        return None
    assert sc.endswith("; Path=/; HttpOnly; SameSite=Lax"), sc
    name, value = sc.split(";", 1)[0].split("=", 1)
    assert name == "CONTAINERID"
    return value


async def _get(srv, cookie: str | None = None, path: str = "/"):
    # A fresh session per request: the test controls the cookie, not a cookie jar.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        headers = {"Cookie": f"CONTAINERID={cookie}"} if cookie else {}
        status, h, body = await get(s, srv, path, headers=headers)
        return status, body.decode().strip(), _cookie(h)


async def test_pin_and_follow(backend, router):
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config(
        {"blue": (50, [blue.addr]), "green": (50, [green.addr])})}))
    status, first, cookie = await _get(srv)
    assert status == 200 and cookie is not None
    assert len(cookie) == 44 and "127.0.0.1" not in cookie and "blue" not in cookie
    # Pinned: every later request goes to the same version, and no new cookie is needed.
    for _ in range(10):
        status, name, again = await _get(srv, cookie)
        assert (status, name, again) == (200, first, None)
    svc = srv.ctx.table.apps["shop"].by_name[first]
    assert svc.stats.sticky == 10


async def test_drain_at_weight_zero_and_repin_after_removal(backend, router):
    blue, green = await backend("blue"), await backend("green")
    cfg = router_config({"shop": app_config({"blue": (100, [blue.addr]), "green": (0, [green.addr])})})
    srv = await router(cfg)
    _, name, cookie = await _get(srv)
    assert name == "blue"
    # Weights flip: new clients go green, the pinned client stays on blue (drain).
    flipped = router_config({"shop": app_config({"blue": (0, [blue.addr]), "green": (100, [green.addr])})})
    await set_apps(srv, flipped)
    assert (await _get(srv))[1] == "green"
    for _ in range(5):
        assert (await _get(srv, cookie))[1:] == ("blue", None)
    # Blue is deleted (release confirmed): the pinned client is re-pinned in the same response.
    gone = router_config({"shop": app_config({"green": (100, [green.addr])})})
    await set_apps(srv, gone)
    status, name, new_cookie = await _get(srv, cookie)
    assert (status, name) == (200, "green")
    assert new_cookie is not None and new_cookie != cookie
    assert (await _get(srv, new_cookie))[1:] == ("green", None)


async def test_backend_gone_keeps_version(backend, router):
    b1, b2, green = await backend("blue-1"), await backend("blue-2"), await backend("green")
    cfg = router_config({"shop": app_config({"blue": (1, [b1.addr, b2.addr]), "green": (1, [green.addr])})})
    srv = await router(cfg)
    # Find a client pinned to blue-1.
    for _ in range(10):
        _, name, cookie = await _get(srv)
        if name == "blue-1":
            break
    assert name == "blue-1"
    # blue-1 is removed from the service: the client stays on blue (the other backend).
    await set_apps(srv, router_config({"shop": app_config(
        {"blue": (1, [b2.addr]), "green": (1, [green.addr])})}))
    status, name, new_cookie = await _get(srv, cookie)
    assert (status, name) == (200, "blue-2")
    assert new_cookie is not None
    assert (await _get(srv, new_cookie))[1:] == ("blue-2", None)


async def test_unhealthy_backend_keeps_version(backend, router):
    b1, b2 = await backend("blue-1"), await backend("blue-2")
    srv = await router(router_config({"shop": app_config({"blue": (1, [b1.addr, b2.addr])})}))
    _, name, cookie = await _get(srv)
    pinned_addr = b1.addr if name == "blue-1" else b2.addr
    svc = srv.ctx.table.apps["shop"].by_name["blue"]
    next(b for b in svc.backends if b.key == pinned_addr).healthy = False
    srv.plane.rebuild()  # what the health checker does on a change
    status, other, new_cookie = await _get(srv, cookie)
    assert status == 200 and other != name and new_cookie is not None


async def test_forged_expired_oversized_tokens_replaced(backend, router):
    blue = await backend("blue")
    srv = await router(router_config({"shop": app_config({"blue": (1, [blue.addr])})},
                                     sticky={"max_idle": "2s", "max_life": "1h"}))
    _, _, good = await _get(srv)
    forged = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    for bad in (forged, good + "x", "x" * 4000, "not-a-token", good[:-1]):
        status, name, cookie = await _get(srv, bad)
        assert (status, name) == (200, "blue")
        assert cookie is not None and cookie != bad
    # The router's own token as it issued it some seconds ago: a client idle that long (the
    # codec takes the time as an argument).
    codec = srv.ctx.codec
    pin = codec.verify(b"shop", good.encode(), int(time.time()))
    assert pin is not None

    def idle_for(seconds: int) -> str:
        return codec.issue(b"shop", pin.service_id, pin.backend_id, pin.issued - seconds,
                           pin.seen - seconds).decode()
    blue_stats = srv.ctx.table.apps["shop"].by_name["blue"].stats
    assert blue_stats.sticky == 0
    # Idle within max_idle: honoured.
    assert (await _get(srv, idle_for(1)))[:2] == (200, "blue") and blue_stats.sticky == 1
    # Idle past max_idle: ignored and replaced.
    idle = idle_for(3)
    status, name, cookie = await _get(srv, idle)
    assert (status, name) == (200, "blue") and cookie is not None and cookie != idle
    assert blue_stats.sticky == 1


async def test_token_for_another_app_is_ignored(backend, router):
    blue = await backend("blue")
    srv = await router(router_config({
        "one": app_config({"web": (1, [blue.addr])}, routes=["one.test"]),
        "two": app_config({"web": (1, [blue.addr])}, routes=["two.test"]),
    }))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        _, h, _ = await get(s, srv, host="one.test")
        token = _cookie(h)
        _, h2, _ = await get(s, srv, host="two.test", headers={"Cookie": f"CONTAINERID={token}"})
    assert _cookie(h2) is not None and _cookie(h2) != token


async def test_sticky_off_sets_and_honours_no_cookie(backend, router):
    blue, green = await backend("blue"), await backend("green")
    on = await router(router_config({"shop": app_config({"blue": (1, [blue.addr]), "green": (1, [green.addr])})}))
    _, pinned, cookie = await _get(on)
    off = await router(router_config({"shop": app_config(
        {"blue": (1, [blue.addr]), "green": (1, [green.addr])}, sticky=False)}))
    names = []
    for _ in range(6):
        status, name, set_cookie = await _get(off, cookie)
        assert set_cookie is None
        names.append(name)
    assert sorted(names) == ["blue"] * 3 + ["green"] * 3


async def test_drain_timeout_repins(backend, router):
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config(
        {"blue": (100, [blue.addr]), "green": (0, [green.addr])}, drain_timeout="1s")}))
    _, name, cookie = await _get(srv)
    assert name == "blue"
    await set_apps(srv, router_config({"shop": app_config(
        {"blue": (0, [blue.addr]), "green": (100, [green.addr])}, drain_timeout="1s")}))
    assert (await _get(srv, cookie))[1:] == ("blue", None)  # still draining
    srv.ctx.monotonic = lambda: time.monotonic() + 1.2  # the drain's clock moved on
    status, name, new_cookie = await _get(srv, cookie)
    assert (status, name) == (200, "green") and new_cookie is not None


async def test_real_process_apply_drain_and_repin(backend, router_process):
    """The cookie flow with the real `router serve` process and the file applied."""
    blue, green = await backend("blue"), await backend("green")
    cfg = {"apps": {"shop": app_config({"blue": (100, [blue.addr]), "green": (0, [green.addr])})}}
    rp = await router_process(cfg)
    _, name, cookie = await _get(rp)
    assert name == "blue" and cookie
    await rp.apply({"apps": {"shop": app_config({"blue": (0, [blue.addr]), "green": (100, [green.addr])})}}, 2)
    assert (await _get(rp))[1] == "green"
    assert [(await _get(rp, cookie))[1] for _ in range(5)] == ["blue"] * 5
    await rp.apply({"apps": {"shop": app_config({"green": (100, [green.addr])})}}, 3)
    status, name, new_cookie = await _get(rp, cookie)
    assert (status, name) == (200, "green") and new_cookie and new_cookie != cookie
    # A bad file on reload is refused and logged; the running table stays.
    with open(rp.config_path, "w") as f:
        f.write("apps: {shop: {routes: [app.test], services: {green: {weight: 101, backends: []}}}}\n")
    rp.proc.send_signal(signal.SIGHUP)
    await until(lambda: "reload refused" in rp.log(), 5, "the reload refused")
    assert (await _get(rp, new_cookie))[1:] == ("green", None)
    assert "reload refused" in rp.log() and "apps.shop.services.green.weight" in rp.log()
    async with aiohttp.ClientSession() as s:
        async with s.get(rp.admin_url + "/metrics") as r:
            assert "router_config_generation 3.0" in await r.text()


# -- a service's incarnation ----------------------------------------------------------------------
async def test_a_cookie_of_a_deleted_service_does_not_pin_to_a_later_one_of_its_name(backend, router):
    """blue -> green -> blue: a client pinned to the first blue is not sent to the second blue
    while it is at weight 0 (no client is to see it yet); it is re-pinned by weight."""
    blue, green, blue2 = await backend("blue"), await backend("green"), await backend("blue-2")
    srv = await router(router_config({"shop": app_config({"blue": (100, [blue.addr])})}))
    _, name, cookie = await _get(srv)
    assert name == "blue" and cookie
    async with aiohttp.ClientSession() as s:
        api = Api(s, srv.admin_port)
        for method, path, body in (
                ("PUT", "/apps/shop/services/green", {"weight": 100, "backends": [green.addr]}),
                ("PUT", "/apps/shop/weights", {"blue": 0}),
                ("DELETE", "/apps/shop/services/blue", None),
                ("PUT", "/apps/shop/services/blue", {"weight": 0, "backends": [blue2.addr]})):
            status, out, _ = await api.call(method, path, body)
            assert status in (200, 201, 204), out
    seen = [await _get(srv, cookie) for _ in range(10)]
    assert [name for _, name, _ in seen] == ["green"] * 10
    assert all(new is not None and new != cookie for _, _, new in seen)  # re-pinned
    assert blue2.requests == 0
    # The pin the client got now holds.
    assert (await _get(srv, seen[-1][2]))[1:] == ("green", None)


async def test_incarnations_survive_a_restart(backend, router, tmp_path):
    """A service added through the API keeps its incarnation in the stored state: its pinned
    clients stay pinned across a restart of the router."""
    blue, green = await backend("blue"), await backend("green")
    cfg = router_config({"shop": app_config({"blue": (100, [blue.addr])})},
                        sticky={"secret_file": str(tmp_path / "secret")})
    store = str(tmp_path / "router-state.yaml")
    srv = await router(cfg, store)
    async with aiohttp.ClientSession() as s:
        status, out, _ = await Api(s, srv.admin_port).call(
            "PUT", "/apps/shop/services/green", {"weight": 100, "backends": [green.addr]})
        assert status == 201, out
        status, out, _ = await Api(s, srv.admin_port).call("PUT", "/apps/shop/weights", {"blue": 0})
        assert status == 200, out
    _, name, cookie = await _get(srv)
    assert name == "green" and cookie
    incarnation = srv.manager.state.app("shop").services[1].incarnation
    assert incarnation == 2  # the generation that added green
    await srv.stop()
    again = await router(cfg, store)
    assert again.manager.state.app("shop").services[1].incarnation == incarnation
    for _ in range(3):
        assert (await _get(again, cookie))[1:] == ("green", None)
