"""The admin API against a real router: status codes, bodies, ETags, persistence.

In-process routers are reached through pytest-aiohttp's test client (``aiohttp_client``) on
their admin application; ``router serve`` processes through a plain session.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import pytest
import yaml

from router.admin.app import create_app
from router.config import config_from_dict
from router.process.server import Server
from tests.conftest import app_config, get, router_config
from tests.processes import until


class Api:
    """The admin API at ``where``: a port on loopback, or a base URL."""

    def __init__(self, session: aiohttp.ClientSession, where: int | str,
                 token: str | None = None) -> None:
        self.s = session
        self.root = f"http://127.0.0.1:{where}" if isinstance(where, int) else where.rstrip("/")
        self.base = self.root + "/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def metrics(self) -> str:
        async with self.s.get(self.root + "/metrics") as r:
            return await r.text()

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        typed = {"Content-Type": "application/json"} if data is not None else {}
        async with self.s.request(method, self.base + path, data=data,
                                  headers={**self.headers, **typed, **(headers or {})}) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None), {k.lower(): v for k, v in r.headers.items()}


async def _awaiting(api: Api, app: str = "shop") -> None:
    async def ready() -> bool:
        release = (await api.call("GET", f"/apps/{app}/release"))[1]
        return release["status"] == "awaiting_confirmation"
    await until(ready, 10, f"the release of {app} awaiting confirmation")


@pytest.fixture
async def admin_api(aiohttp_client):
    """Starts an in-process router without an admin listener of its own: its admin application
    is served by pytest-aiohttp's test server. ``start(cfg, store, token)`` -> (Api, Server)."""
    servers: list[Server] = []

    async def start(cfg: dict[str, Any], store: str | None = None,
                    token: str | None = None) -> tuple[Api, Server]:
        srv = Server(config_from_dict(cfg), store)
        await srv.start()
        servers.append(srv)
        client = await aiohttp_client(create_app(srv))
        return Api(client.session, str(client.make_url("/")), token), srv

    yield start
    for srv in servers:
        await srv.stop()


@pytest.fixture
async def api_router(backend, admin_api, tmp_path):
    blue, green = await backend("blue"), await backend("green")
    store = str(tmp_path / "state.yaml")
    api, srv = await admin_api(router_config({"shop": app_config(
        {"blue": (100, [blue.addr])}, sticky=True)}), store=store)
    yield api, srv, blue, green, store


async def test_app_crud_and_etag(api_router):
    api, srv, blue, green, store = api_router
    status, body, h = await api.call("GET", "/apps/shop")
    assert status == 200 and h["etag"] == '"1"'
    assert body == {"name": "shop", "routes": ["app.test"], "session_sticky": True, "drain_timeout": None,
                    "preview": None,
                    "services": {"blue": {"weight": 100, "backends": [blue.addr], "health_check": None,
                                          "healthy_backends": [blue.addr],
                                          "backend_health": {blue.addr: {"state": "unchecked",
                                                                         "reason": None}}}},
                    "release": None, "generation": 1}
    new = {"routes": ["cart.test", "shop.test/cart"], "services": {
        "web": {"weight": 10, "backends": [green.addr], "health_check": {"path": "/status/200", "interval": 1}}}}
    status, body, h = await api.call("PUT", "/apps/cart", new)
    assert status == 201 and body["generation"] == 2 and h["etag"] == '"2"'
    assert body["services"]["web"]["health_check"] == {"path": "/status/200", "interval": 1.0, "timeout": 1.0,
                                                       "rise": 2, "fall": 3}
    status, body, _ = await api.call("PUT", "/apps/cart", {**new, "session_sticky": False})
    assert status == 200 and body["session_sticky"] is False and body["generation"] == 3
    # GET -> PUT round trip: read-only fields are accepted back; the same app again is no
    # change, so no new generation.
    status, got, _ = await api.call("GET", "/apps/cart")
    status, body, h = await api.call("PUT", "/apps/cart", got)
    assert status == 200 and body == got and h["etag"] == '"3"'
    status, body, _ = await api.call("PATCH", "/apps/cart", {"drain_timeout": "10m"}, headers={"If-Match": '"3"'})
    assert status == 200 and body["drain_timeout"] == 600.0 and body["generation"] == 4
    # A stale If-Match is refused and changes nothing.
    status, body, _ = await api.call("PATCH", "/apps/cart", {"session_sticky": True}, headers={"If-Match": '"3"'})
    assert status == 412 and body["error"]["code"] == "precondition_failed"
    # The shop app's ETag is untouched by changes to cart.
    assert (await api.call("GET", "/apps/shop"))[2]["etag"] == '"1"'
    async with aiohttp.ClientSession() as s:
        assert (await get(s, srv, host="cart.test"))[2] == b"green\n"
    assert (await api.call("DELETE", "/apps/cart"))[0] == 204
    assert (await api.call("GET", "/apps/cart"))[0] == 404
    status, body, _ = await api.call("GET", "/apps")
    assert [a["name"] for a in body["apps"]] == ["shop"]
    async with aiohttp.ClientSession() as s:
        assert (await get(s, srv, host="cart.test"))[0] == 404


BAD_WEIGHTS = [
    (b'{"blue": 101}', 422, "blue"),
    (b'{"blue": -1}', 422, "blue"),
    (b'{"blue": true}', 422, "blue"),
    (b'{"blue": 50.0}', 422, "blue"),
    (b'{"blue": "50"}', 422, "blue"),
    (b'{"blue": null}', 422, "blue"),
    (b'{"blue": NaN}', 400, None),
    (b'{"blue": Infinity}', 400, None),
    (b'{"blue": 1e400}', 422, "blue"),
    (b'{"nope": 5}', 404, "service"),
    (b'{"blue": 5, "nope": 5}', 404, "service"),
    (b'{}', 422, "weights"),
    (b'[1, 2]', 422, None),
    (b'null', 422, None),  # JSON null is not an empty body
    (b'{"blue": 5', 400, None),
    (b'', 400, None),
    (b'\xff\xfe', 400, None),
]


@pytest.mark.parametrize(("raw", "status", "field"), BAD_WEIGHTS)
async def test_bad_weights_rejected_state_untouched(api_router, raw, status, field):
    api, srv, blue, green, store = api_router
    assert (await api.call("PUT", "/apps/shop/weights", {"blue": 50}))[0] == 200
    before = (await api.call("GET", "/apps"))[1]
    with open(store, "rb") as f:
        disk = f.read()
    got, body, _ = await api.call("PUT", "/apps/shop/weights", raw=raw)
    assert got == status, body
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["field"] == field
    assert (await api.call("GET", "/apps"))[1] == before
    with open(store, "rb") as f:
        assert f.read() == disk


async def test_patch_with_a_null_body_is_422_even_with_a_stale_if_match(api_router):
    """A body the request would be refused for is the answer, not the stale precondition."""
    api, srv, blue, green, store = api_router
    got, body, _ = await api.call("PATCH", "/apps/shop", raw=b"null", headers={"If-Match": '"0"'})
    assert (got, body["error"]["field"]) == (422, None), body
    got, body, _ = await api.call("PATCH", "/apps/shop", raw=b"{}", headers={"If-Match": '"0"'})
    assert got == 412, body


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 40 + b"]" * 40,
                                 b'{"routes": ' + b"[" * 33 + b"]" * 33 + b"}"])
async def test_json_nested_too_deep_is_a_400(api_router, raw):
    api, srv, blue, green, store = api_router
    for method, path in (("PUT", "/apps/deep"), ("PUT", "/apps/shop/weights"),
                         ("POST", "/apps/shop/release"), ("PATCH", "/apps/shop")):
        got, body, _ = await api.call(method, path, raw=raw)
        assert got == 400 and "nested more than 32 levels" in body["error"]["message"], body


BAD_APPS = [
    ({"routes": ["x.test"], "services": {"web": {"weight": 1, "backends": ["1.2.3.4:80", "1.2.3.4:80"]}}}, 422),
    ({"routes": ["x.test"], "services": {"web": {"weight": 1, "backends": ["not an address"]}}}, 422),
    ({"routes": ["x.test"], "services": {"Web": {"weight": 1, "backends": []}}}, 422),
    ({"routes": ["x.test"], "services": {}}, 422),
    ({"routes": ["x.test"], "services": {"web": {"backends": []}}, "color": "red"}, 422),
    ({"routes": ["app.test"], "services": {"web": {"backends": []}}}, 409),  # shop's route
    ({"routes": ["x.test"], "services": {"web": {"backends": [], "labels": {}}}}, 422),
]


@pytest.mark.parametrize(("body", "status"), BAD_APPS)
async def test_bad_apps_rejected(api_router, body, status):
    api, *_ = api_router
    got, err, _ = await api.call("PUT", "/apps/new", body)
    assert got == status, err
    assert (await api.call("GET", "/apps/new"))[0] == 404


async def test_bad_names_and_unknowns(api_router):
    api, *_ = api_router
    assert (await api.call("PUT", "/apps/Bad_Name", {"routes": ["y.test"], "services": {"w": {"backends": []}}}))[0] == 422
    assert (await api.call("GET", "/apps/nope"))[0] == 404
    assert (await api.call("PUT", "/apps/nope/weights", {"a": 1}))[0] == 404
    assert (await api.call("DELETE", "/apps/shop/services/nope"))[0] == 404
    assert (await api.call("GET", "/apps/shop/release"))[0] == 404
    status, body, _ = await api.call("POST", "/apps")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body, _ = await api.call("PUT", "/apps/shop", raw=b"x" * (3 * 1024 * 1024))
    assert status == 413


async def test_service_put_delete(api_router):
    api, srv, blue, green, store = api_router
    status, body, _ = await api.call("PUT", "/apps/shop/services/green", {"weight": 100, "backends": [green.addr]})
    assert status == 201 and list(body["services"]) == ["blue", "green"]
    status, body, _ = await api.call("PUT", "/apps/shop/services/green", {"weight": 0, "backends": [green.addr]})
    assert status == 200 and body["services"]["green"]["weight"] == 0
    assert (await api.call("DELETE", "/apps/shop/services/green"))[0] == 204
    status, body, _ = await api.call("DELETE", "/apps/shop/services/blue")
    assert status == 409  # the last service


async def test_release_lifecycle_confirm(api_router):
    api, srv, blue, green, store = api_router
    status, rel, _ = await api.call("POST", "/apps/shop/release", {"service": "green", "backends": [green.addr]})
    assert status == 201
    assert rel["old"] == ["blue"] and rel["new"] == "green" and rel["old_weights"] == {"blue": 100}
    assert rel["status"] in ("in_progress", "awaiting_confirmation")
    assert (await api.call("GET", "/apps/shop"))[1]["services"]["green"]["weight"] == 0
    # One open release per app; the new service cannot be deleted meanwhile.
    assert (await api.call("POST", "/apps/shop/release", {"service": "v3", "backends": [green.addr]}))[0] == 409
    assert (await api.call("DELETE", "/apps/shop/services/green"))[0] == 409
    assert (await api.call("DELETE", "/apps/shop/services/blue"))[0] == 409
    await _awaiting(api)
    # Confirming with the new service at weight 0 would leave no traffic: refused.
    status, body, _ = await api.call("POST", "/apps/shop/release/confirm")
    assert status == 409 and "weight 0" in body["error"]["message"]
    status, app, _ = await api.call("POST", "/apps/shop/release/confirm", {"force": True})
    assert status == 200
    # The release's readiness check connected to green: it is known to work.
    assert app["services"] == {"green": {"weight": 100, "backends": [green.addr], "health_check": None,
                                         "healthy_backends": [green.addr],
                                         "backend_health": {green.addr: {"state": "healthy",
                                                                          "reason": None}}}}
    assert app["release"] is None
    assert (await api.call("GET", "/apps/shop/release"))[0] == 404


async def test_release_in_progress_cannot_confirm_and_rolls_back(api_router):
    api, srv, blue, green, store = api_router
    await api.call("PUT", "/apps/shop/weights", {"blue": 60})
    # A health check that never passes keeps the release in progress.
    status, rel, _ = await api.call("POST", "/apps/shop/release", {
        "service": "green", "backends": [green.addr],
        "health_check": {"path": "/status/500", "interval": "50ms"}})
    assert status == 201
    await until(lambda: [s["path"] for s in green.seen].count("/status/500") >= 3, 5,
                "three failed checks")
    assert (await api.call("GET", "/apps/shop/release"))[1]["status"] == "in_progress"
    status, body, _ = await api.call("POST", "/apps/shop/release/confirm", {"force": True})
    assert status == 409 and body["error"]["code"] == "conflict"
    await api.call("PUT", "/apps/shop/weights", {"blue": 0, "green": 100})
    status, app, _ = await api.call("POST", "/apps/shop/release/rollback")
    assert status == 200
    assert {n: s["weight"] for n, s in app["services"].items()} == {"blue": 60}
    assert app["release"] is None


async def test_release_errors(api_router):
    api, srv, blue, green, store = api_router
    cases = [
        ({"service": "blue", "backends": [green.addr]}, 409),  # the name exists
        ({"service": "green", "backends": []}, 422),
        ({"service": "green"}, 422),
        ({"backends": [green.addr]}, 422),
        ({"service": "Green", "backends": [green.addr]}, 422),
        ({"service": "green", "backends": [green.addr], "weight": 5}, 422),
    ]
    for body, status in cases:
        got, err, _ = await api.call("POST", "/apps/shop/release", body)
        assert got == status, (body, err)
    assert (await api.call("POST", "/apps/shop/release/confirm"))[0] == 404
    assert (await api.call("POST", "/apps/shop/release/rollback"))[0] == 404


async def test_auth_required_with_token(admin_api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    cfg = router_config({}, admin={"listen": "127.0.0.1:0", "token_file": str(token_file)})
    api, srv = await admin_api(cfg)
    status, body, h = await api.call("GET", "/apps")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert (await Api(api.s, api.root, "wrong").call("GET", "/apps"))[0] == 401
    assert (await Api(api.s, api.root, "s3cret").call("GET", "/apps"))[0] == 200
    assert "router_requests_total" in await api.metrics()  # scrapes need no token


async def test_openapi_document(api_router):
    api, *_ = api_router
    async with api.s.get(api.base + "/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/v1/apps", "/api/v1/apps/{app}", "/api/v1/apps/{app}/weights",
        "/api/v1/apps/{app}/services/{svc}", "/api/v1/apps/{app}/release",
        "/api/v1/apps/{app}/release/confirm", "/api/v1/apps/{app}/release/rollback",
        "/api/v1/apps/{app}/release/ramp", "/api/v1/apps/{app}/release/ramp/pause",
        "/api/v1/apps/{app}/release/ramp/resume", "/api/v1/apps/{app}/release/ramp/abort",
        "/api/v1/apps/{app}/release/preview",
        "/api/v1/apps/{app}/stats", "/api/v1/history", "/api/v1/apply", "/api/v1/conflicts",
        "/api/v1/conflicts/{name}"}


async def test_request_that_is_not_http_is_a_documented_400(backend, router_process):
    """The HTTP layer answers a request it cannot parse itself, before any operation, with a
    plain-text 400: the document says so for every operation (a client generated from it
    expects nothing else), and the log has one warning line for it, not a traceback."""
    be = await backend("blue")
    rp = await router_process({"apps": {"shop": app_config({"web": (100, [be.addr])})}})
    for raw in (b"GET /api/v1/apps HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
                b"G\x01T /api/v1/apps HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", rp.admin_port)
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert head.split(b" ")[1] == b"400", (raw, head)
        assert b"Content-Type: text/plain" in head, (raw, head)
    async with aiohttp.ClientSession() as s:
        async with s.get(rp.admin_url + "/api/v1/openapi.json") as r:
            doc = await r.json()
        for path, ops in doc["paths"].items():
            for method in ops.keys() & {"get", "put", "patch", "post", "delete"}:
                assert "text/plain" in ops[method]["responses"]["400"]["content"], (method, path)
        async with s.get(rp.admin_url + "/api/v1/apps") as r:
            assert r.status == 200  # the listener serves on
    warnings = [ln for ln in rp.log().splitlines() if "not valid HTTP" in ln]
    assert len(warnings) == 1 and "WARNING" in warnings[0], rp.log()  # the others: throttled
    assert "Invalid header token" in warnings[0] and "Traceback" not in rp.log(), rp.log()


async def test_concurrent_weight_changes_one_consistent_state(api_router):
    api, srv, blue, green, store = api_router
    await api.call("PUT", "/apps/shop/services/green", {"weight": 0, "backends": [green.addr]})
    gen0 = (await api.call("GET", "/apps/shop"))[1]["generation"]
    results = await asyncio.gather(*[
        api.call("PUT", "/apps/shop/weights", {"blue": i, "green": 100 - i}) for i in range(50)])
    assert [r[0] for r in results] == [200] * 50
    gens = sorted(r[1]["generation"] for r in results)
    assert gens == list(range(gen0 + 1, gen0 + 51))  # serialised: one generation each
    app = (await api.call("GET", "/apps/shop"))[1]
    weights = {n: s["weight"] for n, s in app["services"].items()}
    assert weights["blue"] + weights["green"] == 100
    last = max(results, key=lambda r: r[1]["generation"])[1]
    assert {n: s["weight"] for n, s in last["services"].items()} == weights
    with open(store) as f:
        disk = yaml.safe_load(f)
    assert disk["generation"] == gens[-1]
    assert {n: s["weight"] for n, s in disk["apps"]["shop"]["services"].items()} == weights
    text = await api.metrics()
    assert f'router_service_weight{{app="shop",service="blue"}} {float(weights["blue"])}' in text
    assert f"router_config_generation {float(gens[-1])}" in text
    table = srv.ctx.table.apps["shop"]
    assert {s.name: s.weight for s in table.services} == weights


async def test_state_survives_restart(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        assert (await api.call("POST", "/apps/shop/release", {"service": "green", "backends": [green.addr]}))[0] == 201
        assert (await api.call("PUT", "/apps/shop/weights", {"blue": 30, "green": 70}))[0] == 200
        await _awaiting(api)
        before = (await api.call("GET", "/apps"))[1]
    rp.proc.terminate()
    assert rp.proc.wait(15) == 0
    assert os.path.exists(os.path.join(os.path.dirname(rp.config_path), "router-state.yaml"))
    rp2 = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    # Same directory: the store wins over the configuration's apps.
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp2.admin_port)
        after = (await api.call("GET", "/apps"))[1]
        # Health is what this process has seen, not state: a restarted router starts unchecked.
        for body in (before, after):
            for svc in body["apps"][0]["services"].values():
                svc.pop("backend_health")
        assert after == before
        # ... and the release goes on from where it was.
        status, app, _ = await api.call("POST", "/apps/shop/release/confirm")
        assert status == 200 and list(app["services"]) == ["green"]


async def test_sticky_switched_at_runtime(api_router):
    api, srv, blue, green, store = api_router
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        _, h, _ = await get(s, srv)
        cookie = h["Set-Cookie"].split(";")[0]
        assert (await api.call("PATCH", "/apps/shop", {"session_sticky": False}))[0] == 200
        _, h, _ = await get(s, srv, headers={"Cookie": cookie})
        assert "Set-Cookie" not in h
        assert srv.ctx.table.apps["shop"].by_name["blue"].stats.sticky == 0
        assert (await api.call("PATCH", "/apps/shop", {"session_sticky": True}))[0] == 200
        _, h, _ = await get(s, srv, headers={"Cookie": cookie})
        assert "Set-Cookie" not in h  # the old cookie is honoured again
        assert srv.ctx.table.apps["shop"].by_name["blue"].stats.sticky == 1


def test_admin_off_loopback_needs_token(tmp_path):
    from tests.integration.test_process import run_cli

    path = tmp_path / "router.yaml"
    path.write_text("admin: {listen: 0.0.0.0:9999}\n")
    r = run_cli("serve", "--config", str(path))
    assert r.returncode == 2
    assert "admin.token_file" in r.stderr and "loopback" in r.stderr
