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
