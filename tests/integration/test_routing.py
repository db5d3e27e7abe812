"""Routing, balancing and local answers through a real router on real sockets."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import app_config, get, router_config
from tests.processes import until


async def test_split_is_exact_smooth_wrr(backend, router):
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config(
        {"blue": (1, [blue.addr]), "green": (3, [green.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        names = [(await get(s, srv))[2].decode().strip() for _ in range(40)]
    # nginx's smooth WRR for 1:3 is B A B B, repeated: every window of 4 splits exactly 1:3.
    assert names[:4] == ["green", "blue", "green", "green"]
    for i in range(len(names) - 3):
        assert names[i:i + 4].count("blue") == 1, names
    assert blue.requests == 10 and green.requests == 30


async def test_three_services_and_zero_weight(backend, router):
    a, b, c, z = [await backend(n) for n in "abcz"]
    srv = await router(router_config({"shop": app_config(
        {"a": (5, [a.addr]), "b": (1, [b.addr]), "c": (1, [c.addr]), "z": (0, [z.addr])},
        sticky=False)}))
    async with aiohttp.ClientSession() as s:
        names = [(await get(s, srv))[2].decode().strip() for _ in range(14)]
    # nginx's documented sequence for weights 5, 1, 1: a a b a c a a.
    assert names == list("aabacaa") * 2
    assert z.requests == 0


async def test_host_and_longest_prefix(backend, router):
    web, api, v2 = await backend("web"), await backend("api"), await backend("v2")
    srv = await router(router_config({
        "web": app_config({"w": (1, [web.addr])}, routes=["shop.test"], sticky=False),
        "api": app_config({"a": (1, [api.addr])}, routes=["shop.test/api"], sticky=False),
        "v2": app_config({"v": (1, [v2.addr])}, routes=["shop.test/api/v2"], sticky=False),
    }))
    cases = {
        ("shop.test", "/"): "web",
        ("SHOP.test:8080", "/x"): "web",
        ("shop.test.", "/api"): "api",
        ("shop.test", "/api/"): "api",
        ("shop.test", "/api/users?q=1"): "api",
        ("shop.test", "/apix"): "web",  # a prefix matches whole path segments only
        ("shop.test", "/api/v2"): "v2",
        ("shop.test", "/api/v2/x"): "v2",
        ("shop.test", "/api/v2x"): "api",
        # Routed as Tomcat reads them: parameters out of each segment, then empty segments.
        ("shop.test", "/;/api/x"): "api",
        ("shop.test", "/;x/;y=1/api/v2/z"): "v2",
        ("shop.test", "/api;jsessionid=1/v2"): "v2",
    }
    async with aiohttp.ClientSession() as s:
        for (host, path), want in cases.items():
            status, _, body = await get(s, srv, path, host=host)
            assert (status, body.decode().strip()) == (200, want), (host, path)


async def test_unknown_host_404_names_host(backend, router):
    be = await backend("blue")
    srv = await router(router_config({"shop": app_config({"b": (1, [be.addr])})}))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await get(s, srv, "/", host="other.test")
    assert status == 404
    assert body == b"no route for host 'other.test'\n"
    assert be.requests == 0


async def test_no_candidate_503_retry_after(backend, router):
    be = await backend("blue")
    srv = await router(router_config({"shop": app_config({"b": (0, [be.addr])})}))
    async with aiohttp.ClientSession() as s:
        status, headers, body = await get(s, srv)
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body == b"all weights of this app are 0\n"
    assert be.requests == 0


async def test_connect_failure_retries_other_backend(backend, router):
    from tests.conftest import free_port

    live = await backend("live")
    dead = f"127.0.0.1:{free_port()}"
    srv = await router(router_config({"shop": app_config(
        {"web": (1, [dead, live.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        results = [await get(s, srv) for _ in range(10)]
    assert [r[0] for r in results] == [200] * 10
    assert live.requests == 10
    be = srv.ctx.table.apps["shop"].by_name["web"].backends[0]
    assert be.key == dead and be.stats.errors["connect"] >= 1
    assert srv.ctx.table.apps["shop"].by_name["web"].stats.retries == be.stats.errors["connect"]


async def test_connect_failure_falls_over_to_other_service(backend, router):
    from tests.conftest import free_port

    live = await backend("green")
    dead = f"127.0.0.1:{free_port()}"
    srv = await router(router_config({"shop": app_config(
        {"blue": (1, [dead]), "green": (1, [live.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        results = [await get(s, srv) for _ in range(6)]
    assert [r[2] for r in results] == [b"green\n"] * 6


async def test_all_backends_dead_502_after_two_retries(router):
    from tests.conftest import free_port

    dead = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    srv = await router(router_config({"shop": app_config({"web": (1, dead)}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        status, _, body = await get(s, srv)
    assert status == 502
    assert body == b"no backend could be reached\n"
    svc = srv.ctx.table.apps["shop"].by_name["web"]
    # One attempt and at most two retries: three of the four backends were tried.
    assert sum(b.stats.errors.get("connect", 0) for b in svc.backends) == 3
    assert svc.stats.retries == 2
    assert sum(b.stats.codes.get(502, 0) for b in svc.backends) == 1


async def test_response_timeout_504(backend, router):
    be = await backend("slow")
    srv = await router(router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)},
                                     timeouts={"response": "300ms", "grace": "1s"}))
    async with aiohttp.ClientSession() as s:
        status, _, body = await get(s, srv, "/slow?delay=3")
        assert (status, body) == (504, b"backend did not answer in time\n")
        # The connection and the router still work afterwards.
        status, _, body = await get(s, srv, "/")
        assert (status, body) == (200, b"slow\n")
    web = srv.ctx.table.apps["shop"].by_name["web"]
    assert web.backends[0].stats.errors == {"timeout": 1}
    assert web.backends[0].stats.codes == {504: 1, 200: 1}


async def test_least_in_flight_inside_a_service(backend, router):
    a, b = await backend("a"), await backend("b")
    srv = await router(router_config({"shop": app_config({"web": (1, [a.addr, b.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(get(s, srv, "/slow?delay=1"))
        await until(lambda: a.requests == 1, 5, "the slow request at a")
        # One request is in flight on the first backend: the next ones all go to the other.
        fast = [(await get(s, srv))[2] for _ in range(5)]
        first = (await slow)[2]
    assert first == b"a\n"
    assert fast == [b"b\n"] * 5


async def test_keepalive_pool_reuses_connections(backend, router):
    be = await backend("blue")
    srv = await router(router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            assert (await get(s, srv))[0] == 200
    assert be.requests == 20
    assert be.connections == 1
