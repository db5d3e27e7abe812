"""Active health checks feed routing: an unhealthy backend gets no new requests."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import app_config, get, router_config
from tests.processes import until


async def test_http_check_takes_backend_out_and_back(backend, router):
    a, b = await backend("a"), await backend("b")
    check = {"path": "/status/200", "interval": "50ms", "timeout": "1s", "rise": 2, "fall": 2}
    cfg = router_config({"shop": app_config({"web": (1, [a.addr, b.addr])}, sticky=False)})
    cfg["apps"]["shop"]["services"]["web"]["health_check"] = check
    srv = await router(cfg)
    web = lambda: srv.ctx.table.apps["shop"].by_name["web"]  # noqa: E731
    # b stops answering its check path with 2xx: take b's server down.
    await b.runner.cleanup()
    await until(lambda: [be.healthy for be in web().backends] == [True, False], 5, "b out")
    assert [be.key for be in web().healthy] == [a.addr]
    async with aiohttp.ClientSession() as s:
        assert [(await get(s, srv))[2] for _ in range(6)] == [b"a\n"] * 6
        async with s.get(f"http://127.0.0.1:{srv.admin_port}/metrics") as r:
            text = await r.text()
    assert f'router_backend_healthy{{app="shop",backend="{b.addr}",service="web"}} 0.0' in text
    # b comes back on the same port: healthy again after `rise` good checks.
    from aiohttp import web as aioweb
    await b.runner.setup()
    await aioweb.TCPSite(b.runner, "127.0.0.1", b.port).start()
    await until(lambda: all(be.healthy for be in web().backends), 5, "b back")
    assert srv.health.passed("shop", "web", b.addr) is True


async def test_tcp_check_and_all_unhealthy_is_503(backend, router):
    from tests.conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    cfg = router_config({"shop": app_config({"web": (1, [dead])}, sticky=False)})
    cfg["apps"]["shop"]["services"]["web"]["health_check"] = {"interval": "50ms", "fall": 1}
    srv = await router(cfg)
    await until(lambda: not srv.ctx.table.apps["shop"].by_name["web"].backends[0].healthy, 5,
                "the dead backend out")
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await get(s, srv)
    assert status == 503 and headers["Retry-After"] == "5"
    assert srv.health.passed("shop", "web", dead) is False


async def test_a_release_is_ready_after_rise_passing_checks(backend, router):
    """``rise 3``: the new version is ready once each of its backends passed 3 checks in a
    row, as it would come back into rotation; not after the first."""
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config({"web": (100, [blue.addr])})}))
    api = f"http://127.0.0.1:{srv.admin_port}/api/v1/apps/shop"
    check = {"path": "/status/200", "interval": "1s", "rise": 3}
    async with aiohttp.ClientSession() as s:
        async with s.post(api + "/release", json={"service": "web-v2", "backends": [green.addr],
                                                  "health_check": check}) as r:
            assert r.status == 201, await r.text()
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            async with s.get(api) as r:
                status = (await r.json())["release"]["status"]
            checks = green.requests  # web-v2 has weight 0: only its checks reach it
            if status == "awaiting_confirmation":
                break
            assert asyncio.get_running_loop().time() < deadline, "never ready"
            await asyncio.sleep(0.02)
    assert checks >= 3
