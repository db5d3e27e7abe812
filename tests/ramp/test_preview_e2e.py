"""Preview routing end to end: a real ``router serve`` process, real backends, the admin API's
preview link followed by a browser-like client with a cookie jar, and load without markers
next to it. The new version stays at weight 0 throughout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.conftest import app_config, get, router_config
from tests.integration.test_admin_api import Api, _awaiting
from tests.load import Load
from tests.ramp.conftest import metric


def _cfg(blue: Any) -> dict[str, Any]:
    return {"apps": {"shop": app_config({"blue": (100, [blue.addr])},
                                        preview={"header": "X-Preview"})}}


async def _start(api: Api, new: Any) -> dict[str, Any]:
    status, body, _ = await api.call("POST", "/apps/shop/release",
                                     {"service": "green", "backends": [new.addr]})
    assert status == 201, body
    await _awaiting(api)
    return body


async def _preview(api: Api) -> dict[str, Any]:
    status, body, _ = await api.call("POST", "/apps/shop/release/preview", {"ttl": "10m"})
    assert status == 200, body
    return body


async def _get(s: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    async with s.get(url, headers={"Host": "app.test", **headers}) as r:
        return r.status, await r.text()


async def _follow_link(url: str, link: str) -> aiohttp.ClientSession:
    """A browser visiting the preview link: a session whose cookie jar now holds the cookie."""
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    path = "/" + link.split("/", 3)[3]  # http://app.test:PORT/...
    async with browser.get(url + path, headers={"Host": "app.test"},
                           allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
        assert "CONTAINERID_PREVIEW=" in r.headers["Set-Cookie"]
    return browser


async def test_preview_by_header_and_cookie_reaches_a_weight_0_version(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process(_cfg(blue), ("--workers", "2"))
    load = Load(rp.url + "/", expect=("blue\n",), max_seconds=60)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        release = await _start(api, green)
        assert release["ramp"] is None
        load.start()  # customers: no marker, no cookie
        pv = await _preview(api)
        assert pv["service"] == "green" and pv["header"] == {"name": "X-Preview", "value": "green"}
        assert pv["links"] == [f"http://app.test:{rp.port}/?router-preview={pv['cookie']['value']}"]
        # By header.
        for _ in range(10):
            assert await _get(s, rp.url + "/", **{"X-Preview": "green"}) == (200, "green\n")
        # By the cookie the link set: a browser session, pinned to blue first.
        browser = await _follow_link(rp.url, pv["links"][0])
        async with browser:
            async with browser.get(rp.url + "/", headers={"Host": "app.test"}) as r:
                assert await r.text() == "green\n" and "Set-Cookie" not in r.headers
            for _ in range(9):
                assert await _get(browser, rp.url + "/") == (200, "green\n")
        await load.wait_more(200)  # customers meanwhile
        await load.stop()
        previews = await metric(s, rp.admin_url,
                                'router_preview_requests_total{app="shop",service="green"}')
        status, app, _ = await api.call("GET", "/apps/shop")
    assert load.failed == [] and load.by_body == {"blue": load.sent} and load.sent > 200
    assert green.requests == 20  # the 10 by header and the 10 by cookie: nothing else
    assert previews == 20
    assert {n: svc["weight"] for n, svc in app["services"].items()} == {"blue": 100, "green": 0}
    print(f"\npreview: {load.sent} requests without a marker (0 reached green), 20 with one "
          f"(20 reached green)")


async def test_markers_do_nothing_after_rollback_or_confirm(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process(_cfg(blue))
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        await _start(api, green)
        pv = await _preview(api)
        cookie = {"Cookie": f"{pv['cookie']['name']}={pv['cookie']['value']}"}
        assert await _get(s, rp.url + "/", **cookie) == (200, "green\n")
        assert (await api.call("POST", "/apps/shop/release/rollback"))[0] == 200
        reached = green.requests
        for marker in (cookie, {"X-Preview": "green"}):
            for _ in range(5):
                assert await _get(s, rp.url + "/", **marker) == (200, "blue\n")
        async with s.get(rp.url + "/" + pv["links"][0].split("/", 3)[3],
                         headers={"Host": "app.test"}, allow_redirects=False) as r:
            assert r.status == 200 and await r.text() == "blue\n"  # no cookie, no redirect
        assert green.requests == reached
        assert (await api.call("POST", "/apps/shop/release/preview"))[0] == 404

        # The same version released again is another release: the old cookie does not open it.
        # (A release's identity is its start, in whole seconds.)
        await asyncio.sleep(1.0 - time.time() % 1.0 + 0.05)
        await _start(api, green)
        for _ in range(5):
            assert await _get(s, rp.url + "/", **cookie) == (200, "blue\n")
        assert green.requests == reached
        # Confirmed: the new version is all there is, and the cookie routes nothing by itself.
        fresh = {"Cookie": f"CONTAINERID_PREVIEW={(await _preview(api))['cookie']['value']}"}
        assert await _get(s, rp.url + "/", **fresh) == (200, "green\n")
        assert (await api.call("POST", "/apps/shop/release/confirm", {"force": True}))[0] == 200
        before = await metric(s, rp.admin_url,
                              'router_preview_requests_total{app="shop",service="green"}')
        for _ in range(5):
            assert await _get(s, rp.url + "/", **fresh) == (200, "green\n")
        after = await metric(s, rp.admin_url,
                             'router_preview_requests_total{app="shop",service="green"}')
    # The one request by preview of the second release (the first release's green and its
    # counters went with its rollback); none since the confirm: by weight now.
    assert before == after == 1


async def test_a_preview_token_opens_only_its_own_release(admin_api, backend):
    """Two releases of a service of the same name started within one second: the token of the
    first does not open the second."""
    blue, green, green2 = await backend("blue"), await backend("green"), await backend("green-2")
    api, srv = await admin_api(router_config({"shop": app_config({"blue": (100, [blue.addr])})}))

    async def release(new: Any) -> dict[str, Any]:
        status, body, _ = await api.call("POST", "/apps/shop/release",
                                         {"service": "green", "backends": [new.addr]})
        assert status == 201, body
        return body

    async def rollback() -> None:
        status, body, _ = await api.call("POST", "/apps/shop/release/rollback")
        assert status == 200, body

    for _ in range(20):  # until both start in the same second (the first try, nearly always)
        first = await release(green)
        old = (await _preview(api))["cookie"]
        await rollback()
        second = await release(green2)
        if second["started_at"] == first["started_at"]:
            break
        await rollback()
    else:
        raise AssertionError("no two releases started within one second in 20 tries")
    new = (await _preview(api))["cookie"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        for cookie, want in ((old, "blue\n"), (new, "green-2\n")):
            for _ in range(5):
                _, _, body = await get(s, srv, headers={"Cookie": f"{cookie['name']}={cookie['value']}"})
                assert body.decode() == want, cookie
    assert green2.requests == 5
