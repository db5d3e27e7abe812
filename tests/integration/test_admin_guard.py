"""The admin listener against requests a web page could make (router.admin.guard), the exposure of
/metrics, and the answers to wrong tokens (router.admin.auth): a real router with its admin listener,
raw requests with exactly the fields a browser would send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from router.config import ConfigError, config_from_dict
from tests.conftest import app_config, router_config

TOKEN = "guard-test-token"


class Admin:
    """Requests to one admin listener, every field as given (no automatic Content-Type)."""

    def __init__(self, s: aiohttp.ClientSession, port: int) -> None:
        self.s = s
        self.port = port

    async def send(self, method: str, path: str, body: bytes | None = None,
                   **fields: str) -> tuple[int, Any]:
        headers = {k.replace("_", "-"): v for k, v in fields.items()}
        async with self.s.request(method, f"http://127.0.0.1:{self.port}{path}", data=body,
                                  headers=headers,
                                  skip_auto_headers=["Content-Type"]) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def generation(self, **fields: str) -> int:
        status, body = await self.send("GET", "/api/v1/apps/shop", **fields)
        assert status == 200, body
        return body["generation"]


def _code(answer: tuple[int, Any]) -> tuple[int, str, str]:
    status, body = answer
    return status, body["error"]["code"], body["error"]["field"]


@pytest.fixture
async def shop(backend, router, monkeypatch):
    """``start(token, **admin settings)``: a router with the app shop; an Admin client."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(token: str | None = None, **admin: Any) -> tuple[Admin, Any]:
        blue = await backend("blue")
        cfg = router_config({"shop": app_config({"blue": (100, [blue.addr])})})
        cfg["admin"].update(admin)
        if token is not None:
            monkeypatch.setenv("ROUTER_ADMIN_TOKEN", token)  # read when the config is
        srv = await router(cfg)
        monkeypatch.delenv("ROUTER_ADMIN_TOKEN", raising=False)
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        sessions.append(session)
        return Admin(session, srv.admin_port), srv

    yield start
    for s in sessions:
        await s.close()


WEIGHTS = b'{"blue": 50}'


async def test_a_change_needs_a_json_body(shop):
    admin, _ = await shop()
    before = await admin.generation()
    path = "/api/v1/apps/shop/weights"
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/octet-stream", "application/jsonx",
                  "application/json-patch+json", ""):
        assert _code(await admin.send("PUT", path, WEIGHTS, Content_Type=ctype)) == (
            415, "unsupported_media_type", "Content-Type"), ctype
    # A body with no type at all (a fetch of a Blob).
    assert _code(await admin.send("PUT", path, WEIGHTS))[0] == 415
    # An empty form, an empty text/plain body: refused too.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        assert (await admin.send("POST", "/api/v1/apps/shop/release/rollback", b"",
                                 Content_Type=ctype))[0] == 415
    assert await admin.generation() == before
    # JSON, in any spelling of its type.
    for i, ctype in enumerate(("application/json", "Application/JSON; charset=utf-8")):
        status, body = await admin.send("PUT", path, b'{"blue": %d}' % (10 + i), Content_Type=ctype)
        assert status == 200 and body["services"]["blue"]["weight"] == 10 + i
    # No body needs no type (routerctl ramp pause, confirm, rollback, delete); the answer is
    # the call's own.
    assert _code(await admin.send("POST", "/api/v1/apps/shop/release/rollback")) == (
        404, "not_found", "release")
    assert _code(await admin.send("POST", "/api/v1/apps/shop/release/ramp/pause",
                                  Content_Type="application/octet-stream")) == (
        404, "not_found", "release")
    assert (await admin.send("DELETE", "/api/v1/apps/shop/services/nope"))[0] == 404


async def test_another_origin_is_refused(shop):
    admin, srv = await shop(allowed_origins=["https://router.example.com"])
    port = srv.admin_port
    before = await admin.generation()
    for origin in ("http://evil.test", "null", f"http://127.0.0.1:{port + 1}",
                   f"https://127.0.0.1:{port}", f"http://localhost:{port}", "http://router.example.com",
                   "https://router.example.com:8443", "garbage"):
        for method, path, body in (("PUT", "/api/v1/apps/shop/weights", WEIGHTS),
                                   ("GET", "/api/v1/apps", None), ("GET", "/metrics", None),
                                   ("POST", "/ui/session", b'{"token": "x"}')):
            assert _code(await admin.send(method, path, body, Content_Type="application/json",
                                          Origin=origin)) == (403, "forbidden", "Origin"), (origin, path)
    assert await admin.generation() == before
    # Its own origin, as the Host names it, and the allowed one.
    for host, origin in ((f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
                         (f"localhost:{port}", f"http://localhost:{port}"),
                         ("localhost:8000", "http://localhost:8000"),  # ssh -L 8000:localhost:9090
                         ("localhost", "http://localhost:80"),
                         (f"127.0.0.1:{port}", "https://router.example.com"),
                         (f"127.0.0.1:{port}", "https://Router.Example.com:443")):
        status, _ = await admin.send("PUT", "/api/v1/apps/shop/weights", WEIGHTS, Host=host,
                                     Origin=origin, Content_Type="application/json")
        assert status == 200, (host, origin)


async def test_a_host_the_listener_does_not_answer_to_is_misdirected(shop):
    """DNS rebinding: a page of evil.test reaches the listener as evil.test."""
    admin, srv = await shop(allowed_hosts=["router.internal", ".admin.example.com"])
    port = srv.admin_port
    before = await admin.generation()
    for host in (f"evil.test:{port}", "evil.test", "localhost.evil.test", "router.internal.evil.test",
                 "example.com", "admin.example.com.evil.test", "127.0.0.1.nip.io", f"[::1:{port}",
                 "a@127.0.0.1", "127.0.0.1:x"):
        for method, path, body in (("PUT", "/api/v1/apps/shop/weights", WEIGHTS),
                                   ("GET", "/api/v1/apps", None), ("GET", "/metrics", None),
                                   ("GET", "/ui/", None), ("GET", "/api/v1/openapi.json", None),
                                   ("POST", "/ui/session", b'{"token": "x"}')):
            assert _code(await admin.send(method, path, body, Host=host,
                                          Content_Type="application/json")) == (
                421, "misdirected", "Host"), (host, path)
    assert await admin.generation() == before
    # Health probes send the address they dial (or anything): always answered.
    for path in ("/healthz", "/readyz"):
        assert (await admin.send("GET", path, Host="evil.test", Origin="http://evil.test"))[0] == 200
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"[::1]:{port}", "10.1.2.3:9090", "LOCALHOST:1",
                 "localhost.", "router.internal", "Router.Internal.:9090", "admin.example.com",
                 "eu.admin.example.com:9090"):
        assert await admin.generation(Host=host) == before, host


async def test_the_token_is_proof_enough(shop):
    """A request with the admin token was not sent by a page: any Host, any Origin."""
    admin, srv = await shop(TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await admin.send("GET", "/api/v1/apps", Host="router.internal:9090", **auth))[0] == 200
    assert (await admin.send("PUT", "/api/v1/apps/shop/weights", WEIGHTS, Host="x.test",
                             Origin="http://x.test", Content_Type="application/json", **auth))[0] == 200
    assert (await admin.send("PUT", "/api/v1/apps/shop/weights", WEIGHTS, Content_Type="text/plain",
                             **auth))[0] == 415  # the body rule holds for everyone
    # Without it, the browser rules come first; a wrong one is a 401 wherever it goes.
    assert _code(await admin.send("GET", "/api/v1/apps", Host="router.internal")) == (
        421, "misdirected", "Host")
    assert _code(await admin.send("GET", "/api/v1/apps")) == (401, "unauthorized", "Authorization")
    for path in ("/api/v1/apps", "/metrics", "/ui/"):
        assert _code(await admin.send("GET", path, Authorization="Bearer wrong")) == (
            401, "unauthorized", "Authorization")


async def test_metrics_exposure(shop):
    admin, _ = await shop(TOKEN)  # on loopback: public by default
    status, text = await admin.send("GET", "/metrics")
    assert status == 200 and "router_requests_total" in text
    admin, _ = await shop(TOKEN, metrics_public=False)
    assert _code(await admin.send("GET", "/metrics")) == (401, "unauthorized", "Authorization")
    status, text = await admin.send("GET", "/metrics", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and "router_requests_total" in text
    # Off loopback (every address here; reached on loopback): it needs the token by default.
    admin, _ = await shop(TOKEN, listen="0.0.0.0:0")
    assert (await admin.send("GET", "/metrics"))[0] == 401
    assert (await admin.send("GET", "/metrics", Authorization=f"Bearer {TOKEN}"))[0] == 200
    admin, _ = await shop(TOKEN, listen="0.0.0.0:0", metrics_public=True)
    assert (await admin.send("GET", "/metrics"))[0] == 200


@pytest.mark.parametrize(("admin", "key", "reason"), [
    ({"metrics_public": False}, "admin.metrics_public", "needs an admin token"),
    ({"metrics_public": "yes"}, "admin.metrics_public", "true or false"),
    ({"allowed_hosts": ["*"]}, "admin.allowed_hosts", "needs an admin token"),
    ({"allowed_hosts": "router.internal"}, "admin.allowed_hosts", "list of strings"),
    ({"allowed_hosts": ["router.internal:9090"]}, "admin.allowed_hosts[0]", "without scheme or port"),
    ({"allowed_hosts": ["a", "http://b"]}, "admin.allowed_hosts[1]", "without scheme or port"),
    ({"allowed_origins": ["router.example.com"]}, "admin.allowed_origins[0]", "an origin"),
    ({"allowed_origins": ["https://router.example.com/ui/"]}, "admin.allowed_origins[0]", "no path"),
    ({"allowed_origins": ["null"]}, "admin.allowed_origins[0]", "an origin"),
    ({"allowed_origins": ["ftp://x"]}, "admin.allowed_origins[0]", "an origin"),
])
def test_bad_settings_are_refused_at_load(admin, key, reason):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"admin": {"listen": "127.0.0.1:9090", **admin}})
    assert e.value.path == key and reason in str(e.value)


def test_settings_are_normalised():
    cfg = config_from_dict({"admin": {"allowed_hosts": ["Router.Internal.", ".Example.COM"],
                                      "allowed_origins": ["HTTPS://Router.Example.com:443",
                                                          "http://[::1]:8080/"]}})
    assert cfg.admin.allowed_hosts == ("router.internal", ".example.com")
    assert cfg.admin.allowed_origins == ("https://router.example.com", "http://[::1]:8080")
    assert cfg.admin.metrics_public is True


async def test_wrong_tokens_are_answered_slowly_a_right_one_at_once(shop):
    from router.admin.auth import MAX_WAITING, THROTTLE

    admin, srv = await shop(TOKEN)
    throttle = srv._admin_runner.app[THROTTLE]
    wrong = [asyncio.ensure_future(admin.send("GET", "/api/v1/apps", Authorization=f"Bearer no{i}"))
             for i in range(MAX_WAITING)]
    for _ in range(500):  # each is checked at once, and its answer waits its turn
        if throttle.busy("127.0.0.1"):
            break
        await asyncio.sleep(0.01)
    # The next try from this source is refused unchecked (the right token too), until the
    # queue drains; a request without a token goes on as ever.
    assert _code(await admin.send("GET", "/api/v1/apps", Authorization=f"Bearer {TOKEN}")) == (
        429, "too_many_requests", "Authorization")
    status, _ = await admin.send("POST", "/ui/session", json.dumps({"token": "no"}).encode(),
                                 Content_Type="application/json")
    assert status == 429
    assert (await admin.send("GET", "/healthz"))[0] == 200
    assert [status for status, _ in await asyncio.gather(*wrong)] == [401] * MAX_WAITING
    # Two more wrong ones wait 1.6 s and 2 s more; the right token is answered at once.
    slow = [asyncio.ensure_future(admin.send("GET", "/api/v1/apps", Authorization="Bearer no"))
            for _ in range(2)]
    await asyncio.sleep(0.05)
    assert (await admin.send("GET", "/api/v1/apps", Authorization=f"Bearer {TOKEN}"))[0] == 200
    assert not slow[1].done()
    assert [status for status, _ in await asyncio.gather(*slow)] == [401, 401]
    # A wrong token at the console's sign-in counts the same.
    failures = throttle._sources["127.0.0.1"].failures
    status, _ = await admin.send("POST", "/ui/session", json.dumps({"token": "no"}).encode(),
                                 Content_Type="application/json")
    assert status == 401 and throttle._sources["127.0.0.1"].failures == failures + 1
