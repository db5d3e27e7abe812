"""The sticky cookies of two apps on one host, in real Chromium: each app keeps its own pin
while a browser goes back and forth between them (docs/routing.md, "The cookie")."""

from __future__ import annotations

import pytest

from tests.conftest import app_config, router_config

pytest.importorskip("playwright", reason="the playwright package is not installed (pip install -e '.[test]')")


async def test_two_sticky_apps_on_one_host_keep_their_pins(backend, router, browser):
    names = ("home-blue", "home-green", "admin-blue", "admin-green")
    home_blue, home_green, admin_blue, admin_green = [await backend(n) for n in names]
    srv = await router(router_config({
        "home": app_config({"blue": (50, [home_blue.addr]), "green": (50, [home_green.addr])},
                           routes=["shop.test"]),
        "admin": app_config({"blue": (50, [admin_blue.addr]), "green": (50, [admin_green.addr])},
                            routes=["shop.test/admin"])}))
    page = await browser.page(args=("--host-resolver-rules=MAP shop.test 127.0.0.1",))
    seen: dict[str, list[tuple[str, bool]]] = {"/": [], "/admin/": []}
    for _ in range(4):
        for path in seen:
            resp = await page.goto(f"http://shop.test:{srv.port}{path}")
            assert resp is not None and resp.status == 200
            pinned = await resp.header_value("set-cookie") is not None
            seen[path].append(((await resp.text()).strip(), pinned))
    for path, visits in seen.items():
        # Pinned on the first visit, to one backend, and never again.
        assert [pinned for _, pinned in visits] == [True, False, False, False], (path, visits)
        assert len({name for name, _ in visits}) == 1, (path, visits)
    cookies = {(c["name"], c["path"]) for c in await page.context.cookies()}
    assert cookies == {("CONTAINERID", "/"), ("CONTAINERID", "/admin")}
