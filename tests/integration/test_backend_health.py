"""Health that tells the truth: healthy, unhealthy (with why), unchecked; and the weight change
that would send every request to services with no backend ready is refused (409) unless forced.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import app_config, free_port, get, router_config
from tests.integration.test_admin_api import Api
from tests.integration.test_ctl import ctl, row
from tests.processes import until


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
            return await r.text()


def _series(text: str, name: str, app: str, svc: str, addr: str) -> str | None:
    prefix = f'{name}{{app="{app}",backend="{addr}",service="{svc}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


async def _health(api: Api, svc: str) -> dict[str, Any]:
    status, app, _ = await api.call("GET", "/apps/shop")
    assert status == 200, app
    return app["services"][svc]


async def test_unchecked_until_shown_to_work(backend, router):
    """A new service whose backend refuses connections, no health check, weight 0: unchecked
    (not "healthy"), while it takes requests if it gets any; a backend that answered a request is
    healthy."""
    web = await backend("web")
    dead = f"127.0.0.1:{free_port()}"
    srv = await router(router_config({"shop": app_config(
        {"web": (100, [web.addr]), "web-v9": (0, [dead])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        api = Api(s, srv.admin_port)
        v9 = await _health(api, "web-v9")
        assert v9["backend_health"] == {dead: {"state": "unchecked", "reason": None}}
        assert v9["healthy_backends"] == [dead]  # it would take requests: nothing says otherwise
        assert (await _health(api, "web"))["backend_health"][web.addr]["state"] == "unchecked"
        text = await _metrics(srv.admin_port)
        for addr, svc in ((dead, "web-v9"), (web.addr, "web")):
            assert _series(text, "router_backend_unchecked", "shop", svc, addr) == "1.0"
            assert _series(text, "router_backend_healthy", "shop", svc, addr) is None

        assert (await get(s, srv))[2] == b"web\n"
        assert (await _health(api, "web"))["backend_health"] == {
            web.addr: {"state": "healthy", "reason": None}}
        text = await _metrics(srv.admin_port)
        assert _series(text, "router_backend_healthy", "shop", "web", web.addr) == "1.0"
        assert _series(text, "router_backend_unchecked", "shop", "web", web.addr) == "0.0"
        assert _series(text, "router_backend_unchecked", "shop", "web-v9", dead) == "1.0"


async def test_unhealthy_says_why(backend, router):
    a, b = await backend("a"), await backend("b")
    dead, dead_checked = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cfg = router_config({"shop": app_config(
        {"web": (1, [a.addr, dead]), "api": (0, [b.addr, dead_checked])}, sticky=False)},
        passive_health={"failures": 3, "cooldown": "60s"})
    cfg["apps"]["shop"]["services"]["api"]["health_check"] = {"interval": "50ms", "fall": 2}
    srv = await router(cfg)
    async with aiohttp.ClientSession() as s:
        api = Api(s, srv.admin_port)
        for _ in range(8):  # every second request tries dead first, fails, is retried on a
            assert (await get(s, srv))[0] == 200
        web_health = (await _health(api, "web"))["backend_health"]
        assert web_health == {a.addr: {"state": "healthy", "reason": None},
                              dead: {"state": "unhealthy",
                                     "reason": "ejected: 3 requests failed in a row"}}
        assert (await _health(api, "web"))["healthy_backends"] == [a.addr]

        async def checked_out() -> Any:
            health = (await _health(api, "api"))["backend_health"]
            return health if health[dead_checked]["state"] == "unhealthy" else None
        api_health = await until(checked_out, 5, f"{dead_checked} out by its check")
        assert api_health == {b.addr: {"state": "healthy", "reason": None},
                              dead_checked: {"state": "unhealthy", "reason": "2 failed checks"}}
        text = await _metrics(srv.admin_port)
        assert _series(text, "router_backend_healthy", "shop", "web", dead) == "0.0"
        assert _series(text, "router_backend_unchecked", "shop", "web", dead) == "0.0"


async def test_weights_to_a_dead_service_refused_unless_forced(backend, router):
    web = await backend("web")
    live, dead = await backend("live"), f"127.0.0.1:{free_port()}"
    srv = await router(router_config({"shop": app_config(
        {"web": (100, [web.addr]), "web-v9": (0, [dead]), "web-v2": (0, [live.addr])},
        sticky=False)}))
    async with aiohttp.ClientSession() as s:
        api = Api(s, srv.admin_port)
        status, body, _ = await api.call("PUT", "/apps/shop/weights", {"web": 0, "web-v9": 100})
        assert status == 409, body
        assert body["error"]["field"] == "weights"
        assert f"web-v9 ({dead})" in body["error"]["message"]
        assert "force=true" in body["error"]["message"]
        assert (await _health(api, "web"))["weight"] == 100  # nothing changed
        assert [(await get(s, srv))[2] for _ in range(3)] == [b"web\n"] * 3

        # Every weight 0: refused the same way.
        status, body, _ = await api.call("PUT", "/apps/shop/weights", {"web": 0})
        assert status == 409 and "every weight of 'shop' would be 0" in body["error"]["message"]

        # Some weight stays on a ready service: fine, even with the rest on the dead one.
        status, body, _ = await api.call("PUT", "/apps/shop/weights", {"web": 50, "web-v9": 50})
        assert status == 200, body

        # An unchecked backend that accepts connections counts as ready (a one-off probe),
        # and is known to work from then on.
        status, body, _ = await api.call("PUT", "/apps/shop/weights",
                                         {"web": 0, "web-v9": 0, "web-v2": 100})
        assert status == 200, body
        assert body["services"]["web-v2"]["backend_health"] == {
            live.addr: {"state": "healthy", "reason": None}}

        # force=true does it anyway; a bad flag is a 422.
        status, body, _ = await api.call("PUT", "/apps/shop/weights?force=yes", {"web-v2": 0})
        assert status == 422 and body["error"]["field"] == "force"
        status, body, _ = await api.call("PUT", "/apps/shop/weights?force=true",
                                         {"web-v2": 0, "web-v9": 100})
        assert status == 200, body
        assert {n: sv["weight"] for n, sv in body["services"].items()} == {
            "web": 0, "web-v9": 100, "web-v2": 0}
        status, body, _ = await api.call("PUT", "/apps/shop/weights?force=true", {"web-v9": 0})
        assert status == 200 and all(sv["weight"] == 0 for sv in body["services"].values())


async def test_routerctl_show_and_force(backend, router_process):
    web = await backend("web")
    dead = f"127.0.0.1:{free_port()}"
    rp = await router_process({"apps": {"shop": app_config(
        {"web": (100, [web.addr]), "web-v9": (0, [dead])}, sticky=False)}})
    async with aiohttp.ClientSession() as s:
        assert (await get(s, rp))[0] == 200
    r = await ctl(rp.admin_url, "show", "shop")
    assert r.rc == 0, r.err
    assert row(r.out, "web") == ["web", "100", "100%", web.addr, "1/1"]
    assert row(r.out, "web-v9") == ["web-v9", "0", "0%", dead, "0/1", "(1", "unchecked)"]
    assert row(r.out, web.addr) == [web.addr, "web", "healthy", "-"]
    assert row(r.out, dead) == [dead, "web-v9", "unchecked", "-"]

    r = await ctl(rp.admin_url, "weights", "shop", "web=0", "web-v9=100")
    assert r.rc == 1
    assert "409 conflict" in r.err and f"web-v9 ({dead})" in r.err
    r = await ctl(rp.admin_url, "weights", "shop", "web=0", "web-v9=100", "--force")
    assert r.rc == 0, r.err
    assert row(r.out, "web-v9") == ["web-v9", "100", "100%", dead, "0/1", "(1", "unchecked)"]
