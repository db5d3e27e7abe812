"""GET /api/v1/apps/{app}/stats: the live counters the console draws, exact after a known
number of requests, summed across worker processes, behind the admin token; a deleted
service's last counters under ``removed``."""

from __future__ import annotations

import aiohttp

from tests.conftest import app_config, free_port, get, router_config
from tests.integration.test_admin_api import Api
from tests.integration.test_workers import PATIENT, _through_each_worker

BUCKET_KEYS = ["0.00025", "0.0005", "0.001", "0.002", "0.003", "0.005", "0.0075", "0.01", "0.025",
               "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0",
               "+Inf"]


async def _stats(admin_port: int, app: str, **kw: object) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{admin_port}/api/v1/apps/{app}/stats", **kw) as r:
            return r.status, await r.json()


async def test_counts_are_exact(backend, router):
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config(
        {"web": (100, [blue.addr]), "web-v2": (0, [green.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        for _ in range(7):
            assert (await get(s, srv, "/"))[0] == 200
        for _ in range(3):
            assert (await get(s, srv, "/status/502"))[0] == 502
        assert (await get(s, srv, "/status/404"))[0] == 404
    status, body = await _stats(srv.admin_port, "shop")
    assert status == 200
    assert body["app"] == "shop" and isinstance(body["time"], float)
    web = body["services"]["web"]
    assert {k: v for k, v in web.items() if k != "duration"} == {
        "requests": 11, "errors": 3, "codes": {"200": 7, "404": 1, "502": 3},
        "upstream_errors": 0, "sticky": 0, "preview": 0, "inflight": 0, "weight": 100}
    assert web["duration"]["count"] == 11
    assert list(web["duration"]["buckets"]) == BUCKET_KEYS
    assert web["duration"]["buckets"]["+Inf"] == 11
    counts = list(web["duration"]["buckets"].values())
    assert counts == sorted(counts)  # cumulative
    assert 0 < web["duration"]["sum"] < 11 * 10
    assert body["services"]["web-v2"] == {
        "requests": 0, "errors": 0, "codes": {}, "upstream_errors": 0, "sticky": 0, "preview": 0, "inflight": 0,
        "weight": 0, "duration": {"count": 0, "sum": 0.0, "buckets": dict.fromkeys(BUCKET_KEYS, 0)}}


async def test_sticky_requests_and_weight_zero(backend, router):
    """Requests routed by cookie are counted apart: after the weight moves to 0 the pinned
    client's requests are the service's whole traffic (what the console shows as the drain)."""
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config(
        {"web": (100, [blue.addr]), "web-v2": (0, [green.addr])}, sticky=True)}))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        _, headers, _ = await get(s, srv, "/")
        cookie = headers["Set-Cookie"].split(";")[0]
        async with s.put(f"http://127.0.0.1:{srv.admin_port}/api/v1/apps/shop/weights",
                         json={"web": 0, "web-v2": 100}) as r:
            assert r.status == 200
        for _ in range(5):
            assert (await get(s, srv, "/", headers={"Cookie": cookie}))[2] == b"blue\n"
        for _ in range(2):
            assert (await get(s, srv, "/"))[2] == b"green\n"
    _, body = await _stats(srv.admin_port, "shop")
    web, v2 = body["services"]["web"], body["services"]["web-v2"]
    assert (web["requests"], web["sticky"], web["weight"]) == (6, 5, 0)
    assert (v2["requests"], v2["sticky"], v2["weight"]) == (2, 0, 100)


async def test_upstream_errors_match_the_metrics(backend, router):
    blue = await backend("blue")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every connect is refused
    srv = await router(router_config({"shop": app_config({"web": (100, [dead, blue.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            assert (await get(s, srv, "/"))[0] == 200  # retried on the live backend
        async with s.get(f"http://127.0.0.1:{srv.admin_port}/metrics") as r:
            metrics = await r.text()
    _, body = await _stats(srv.admin_port, "shop")
    web = body["services"]["web"]
    assert web["requests"] == 4 and web["errors"] == 0
    line = f'router_upstream_errors_total{{app="shop",backend="{dead}",reason="connect",service="web"}}'
    assert web["upstream_errors"] >= 1
    assert f"{line} {float(web['upstream_errors'])}" in metrics


async def _call(admin_port: int, method: str, path: str, body: object = None) -> int:
    async with aiohttp.ClientSession() as s:
        return (await Api(s, admin_port).call(method, path, body))[0]


async def test_a_deleted_service_keeps_its_last_counts(backend, router):
    """The reading after a rollback still has the version's numbers, however short its last
    step: without them a client reading every second never sees the errors that had it
    rolled back a fraction of a second after its step began."""
    blue, green = await backend("blue"), await backend("green")
    srv = await router(router_config({"shop": app_config(
        {"web": (0, [blue.addr]), "web-v2": (100, [green.addr])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/", "/", "/status/502", "/status/502"):
            await get(s, srv, path)
    assert await _call(srv.admin_port, "PUT", "/apps/shop/weights", {"web": 100, "web-v2": 0}) == 200
    assert await _call(srv.admin_port, "DELETE", "/apps/shop/services/web-v2") == 204
    _, body = await _stats(srv.admin_port, "shop")
    assert list(body["services"]) == ["web"]
    assert {k: v for k, v in body["removed"]["web-v2"].items() if k != "duration"} == {
        "requests": 5, "errors": 2, "codes": {"200": 3, "502": 2}, "upstream_errors": 0,
        "sticky": 0, "preview": 0, "inflight": 0, "weight": 0}
    assert body["removed"]["web-v2"]["duration"]["count"] == 5
    # Made again, it counts afresh and is no longer a removed one.
    assert await _call(srv.admin_port, "PUT", "/apps/shop/services/web-v2",
                       {"weight": 0, "backends": [green.addr]}) == 201
    _, body = await _stats(srv.admin_port, "shop")
    assert body["removed"] == {} and body["services"]["web-v2"]["requests"] == 0


async def test_unknown_app_and_token(backend, router, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    blue = await backend("blue")
    srv = await router(router_config({"shop": app_config({"web": (100, [blue.addr])})},
                                     admin={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "token")}))
    status, body = await _stats(srv.admin_port, "shop")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    auth = {"headers": {"Authorization": "Bearer s3cret"}}
    status, body = await _stats(srv.admin_port, "nope", **auth)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await _stats(srv.admin_port, "shop", **auth)
    assert status == 200 and body["services"]["web"]["requests"] == 0


async def test_summed_across_workers(backend, router_process):
    blue = await backend("blue")
    # upstream.reuse always: each fresh client connection takes its worker's pooled connection.
    rp = await router_process({**PATIENT, "upstream": {"reuse": "always"}, "apps": {"shop": app_config(
        {"web": (100, [blue.addr])}, sticky=False)}}, ("--workers", "2"))
    assert await _through_each_worker(rp, 15) == [[b"blue\n"] * 15] * 2
    assert blue.connections == 2  # one pool per worker: both served
    status, body = await _stats(rp.admin_port, "shop")
    assert status == 200
    web = body["services"]["web"]
    assert (web["requests"], web["codes"], web["duration"]["count"]) == (30, {"200": 30}, 30)


async def test_a_deleted_service_summed_across_workers(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({**PATIENT, "apps": {"shop": app_config(
        {"web": (0, [blue.addr]), "web-v2": (100, [green.addr])}, sticky=False)}}, ("--workers", "2"))
    assert await _through_each_worker(rp, 15) == [[b"green\n"] * 15] * 2
    assert await _call(rp.admin_port, "PUT", "/apps/shop/weights", {"web": 100, "web-v2": 0}) == 200
    assert await _call(rp.admin_port, "DELETE", "/apps/shop/services/web-v2") == 204
    _, body = await _stats(rp.admin_port, "shop")
    gone = body["removed"]["web-v2"]
    assert (gone["requests"], gone["codes"], gone["duration"]["count"], gone["weight"]) == (
        30, {"200": 30}, 30, 0)
