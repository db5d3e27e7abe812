"""The console over plain HTTP: its files (all in the package, none from elsewhere), and the
session that stands for the admin token: HttpOnly, SameSite=Strict, CSRF on every change."""

from __future__ import annotations

import glob
import os
import re
import time
import tomllib

import aiohttp
import pytest

from router.admin import console
from tests.conftest import ROOT, app_config, router_config

TOKEN = "console-http-token"


@pytest.fixture
async def guarded(backend, router, tmp_path):
    """A router with an admin token and one app."""
    (tmp_path / "token").write_text(TOKEN)
    blue = await backend("blue")
    return await router(router_config({"shop": app_config({"web": (100, [blue.addr])})},
                                      admin={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "token")}))


def _url(srv, path: str) -> str:
    return f"http://127.0.0.1:{srv.admin_port}{path}"


async def _sign_in(s: aiohttp.ClientSession, srv, token: str = TOKEN) -> tuple[int, dict, aiohttp.ClientResponse]:
    async with s.post(_url(srv, "/ui/session"), json={"token": token}) as r:
        return r.status, await r.json(), r


def test_every_console_file_is_package_data():
    """`pip install .` ships exactly what is listed in pyproject.toml: every file under
    router/admin/ui/ must match one of those patterns."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["router.admin"]
    admin = os.path.join(ROOT, "router", "admin")
    shipped = {os.path.relpath(p, admin) for pat in patterns for p in glob.glob(os.path.join(admin, pat))
               if os.path.isfile(p)}
    present = {os.path.relpath(os.path.join(d, f), admin)
               for d, _, files in os.walk(os.path.join(admin, "ui")) for f in files}
    assert present and present == shipped


async def test_files_served_with_their_headers(router):
    srv = await router(router_config({}))
    async with aiohttp.ClientSession() as s:
        async with s.get(_url(srv, "/ui"), allow_redirects=False) as r:
            assert r.status == 301 and r.headers["Location"] == "/ui/"
        async with s.get(_url(srv, "/ui/")) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            html = await r.text()
        # Everything the page loads is served here, by a relative URL: nothing from a CDN.
        refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
        assert refs and not [u for u in refs if "//" in u]
        todo = list(refs)
        seen = set()
        while todo:
            ref = todo.pop()
            if ref in seen:
                continue
            seen.add(ref)
            async with s.get(_url(srv, "/ui/" + ref)) as r:
                assert r.status == 200, ref
                body = await r.text()
            if ref.endswith(".js"):
                assert r.content_type == "text/javascript", ref
                base = os.path.dirname(ref)
                todo += [os.path.normpath(os.path.join(base, m)) for m in re.findall(r'from "(\./[^"]+)"', body)]
        assert "js/app.js" in seen and "js/traffic.js" in seen and "vendor/uplot/uPlot.iife.min.js" in seen
        for bad in ("/ui/nope.js", "/ui/%2e%2e/console.py", "/ui/../app.py", "/ui/js/../../console.py"):
            async with s.get(_url(srv, bad)) as r:
                assert r.status == 404, bad


async def test_session_cookie_and_csrf(guarded):
    srv = guarded
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.get(_url(srv, "/ui/session")) as r:
            assert await r.json() == {"auth": "token", "signed_in": False, "csrf": None}
        status, body, r = await _sign_in(s, srv, "wrong")
        assert status == 401 and body["error"]["message"] == "wrong admin token"
        assert r.cookies[console.COOKIE].value == "" and len(jar) == 0  # cleared, not set
        async with s.get(_url(srv, "/api/v1/apps")) as r:
            assert r.status == 401

        status, body, r = await _sign_in(s, srv)
        assert status == 200 and body["signed_in"] and body["csrf"]
        raw = r.headers["Set-Cookie"]
        assert "HttpOnly" in raw and "SameSite=Strict" in raw and "Path=/" in raw
        assert TOKEN not in raw  # the cookie names a session, not the token
        csrf = body["csrf"]
        async with s.get(_url(srv, "/api/v1/apps/shop")) as r:
            assert r.status == 200
            etag = r.headers["ETag"]
        # A change without the page's CSRF token, or with another one, or from another origin.
        patch = _url(srv, "/api/v1/apps/shop")
        for headers in ({}, {"X-CSRF-Token": ("y" if csrf[0] == "x" else "x") + csrf[1:]},
                        {"X-CSRF-Token": csrf, "Origin": "http://evil.test"}):
            async with s.patch(patch, json={"session_sticky": False}, headers=headers) as r:
                assert r.status == 403, headers
                assert (await r.json())["error"]["code"] == "forbidden"
        async with s.get(patch) as r:
            assert (await r.json())["session_sticky"] is True and r.headers["ETag"] == etag
        async with s.patch(patch, json={"session_sticky": False},
                           headers={"X-CSRF-Token": csrf, "If-Match": etag,
                                    "Origin": f"http://127.0.0.1:{srv.admin_port}"}) as r:
            assert r.status == 200 and (await r.json())["session_sticky"] is False
        async with s.get(_url(srv, "/ui/session")) as r:
            assert await r.json() == {"auth": "token", "signed_in": True, "csrf": csrf}
        async with s.delete(_url(srv, "/ui/session")) as r:
            assert r.status == 204
        async with s.get(_url(srv, "/api/v1/apps")) as r:
            assert r.status == 401


async def test_forged_expired_and_foreign_sessions_refused(guarded):
    srv = guarded
    now = time.time()
    good = console.new_session(TOKEN, now)
    cases = {
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "expired": console.new_session(TOKEN, now - console.SESSION_LIFE - 1),
        "other token": console.new_session("another-token", now),
        "garbage": "not-a-session",
    }
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.get(_url(srv, "/api/v1/apps"), headers={"Cookie": f"{console.COOKIE}={good}"}) as r:
            assert r.status == 200
        for what, cookie in cases.items():
            async with s.get(_url(srv, "/api/v1/apps"), headers={"Cookie": f"{console.COOKIE}={cookie}"}) as r:
                assert r.status == 401, what
                assert "sign in again" in (await r.json())["error"]["message"]
        # The bearer token still works next to any cookie; a wrong one is still refused.
        for token, want in ((TOKEN, 200), ("wrong", 401)):
            async with s.get(_url(srv, "/api/v1/apps"), headers={
                    "Cookie": f"{console.COOKIE}={cases['garbage']}", "Authorization": f"Bearer {token}"}) as r:
                assert r.status == want
        async with s.post(_url(srv, "/ui/session"), json={"token": TOKEN},
                          headers={"Origin": "http://evil.test"}) as r:
            assert r.status == 403 and "Set-Cookie" not in r.headers
        for body in (b"", b"[]", b'{"token": 1}'):
            async with s.post(_url(srv, "/ui/session"), data=body,
                              headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400


async def test_without_a_token_the_console_asks_for_none(backend, router):
    blue = await backend("blue")
    srv = await router(router_config({"shop": app_config({"web": (100, [blue.addr])})}))
    async with aiohttp.ClientSession() as s:
        async with s.get(_url(srv, "/ui/session")) as r:
            assert await r.json() == {"auth": "none", "signed_in": True, "csrf": None}
        async with s.put(_url(srv, "/api/v1/apps/shop/weights"), json={"web": 50}) as r:
            assert r.status == 200
