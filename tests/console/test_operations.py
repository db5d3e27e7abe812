"""The console's operations beyond moving weights, by clicks in real Chromium against the real
router process: a guarded ramp started from the console (its settings filled in with the
router's defaults) that rolls a failing version back, and the evidence the page keeps of it --
the version's past greyed on the chart, the outcome with its reason until dismissed; the ramp's
live numbers and the weights it locks; a preview link; an application created and deleted; and
the page itself: times in UTC, no focus ring around the page, a stale notice that goes."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.conftest import app_config
from tests.load import Load

from tests.ramp.conftest import flaky  # noqa: F401  (a fixture)

from tests.processes import until

from .conftest import REMOVED, TOKEN, screenshot, sign_in
from .test_browser import Api, chart, weights

pytest.importorskip("playwright", reason="the playwright package is not installed (pip install -e '.[test]')")
from playwright.async_api import expect  # noqa: E402


async def _router(backend, router_process, monkeypatch, routes: list[str] | None = None):
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", TOKEN)
    blue = await backend("blue")
    rp = await router_process({"apps": {"shop": app_config({"web": (100, [blue.addr])}, routes=routes)}})
    return rp, blue


async def _release(api: Api, new: str, addr: str) -> None:
    status, body = await api.call("POST", "/apps/shop/release", {"service": new, "backends": [addr]})
    assert status == 201, body

    async def ready() -> bool:
        return (await api.app())["release"]["status"] == "awaiting_confirmation"
    await until(ready, 20, "the release to be ready", 0.1)


async def test_a_ramp_started_by_clicks_rolls_back_and_the_page_keeps_the_evidence(
        backend, flaky, router_process, monkeypatch, browser, load):
    rp, _ = await _router(backend, router_process, monkeypatch)
    bad = await flaky("bad", every=2)  # every other answer a 500
    api = Api(rp.admin_url)
    ld: Load = load(rp.url + "/", expect=("blue\n", "bad\n"))
    await _release(api, "web-v2", bad.addr)
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    await until(lambda: chart(page, "chartNames"), 15, "the chart", 0.1)
    before = await chart(page, "chartColours")

    # The ramp's form, every setting filled in with the router's default.
    await page.get_by_role("button", name="Start guarded ramp").click()
    dlg = page.locator("dialog")
    await expect(dlg.get_by_role("heading")).to_have_text("Guarded ramp of web-v2")
    for label, default in (("Interval$", "1m"), ("Error rate over the old version's", "1"),
                           ("Latency, at most", "2"), ("Latency quantile", "p99"),
                           ("Latency floor", "10ms"), ("Requests each version needs", "20"),
                           ("Intervals to wait", "10"), ("Steps", "5, 25, 50, 100")):
        await expect(dlg.get_by_label(re.compile("^" + label))).to_have_value(default)
    await screenshot(page, "ramp-dialog")
    await dlg.get_by_label(re.compile("^Steps")).fill("20, 100")
    await dlg.get_by_label("Interval", exact=True).fill("3s")
    await dlg.get_by_label(re.compile("^Requests each version needs")).fill("5")
    await dlg.get_by_role("button", name="Start ramp").click()
    await expect(dlg).to_be_hidden()
    await expect(page.locator("#app-status")).to_have_text("Guarded ramp of web-v2 started.")
    settings = (await api.app())["release"]["ramp"]
    assert (settings["steps"], settings["interval"], settings["min_requests"],
            settings["max_error_rate"], settings["quantile"]) == ([20, 100], 3.0, 5, 0.01, 0.99)

    # While it runs it sets the weights: the form says so and takes no input.
    await expect(page.locator("#weights-locked")).to_contain_text(
        "The guarded ramp of web-v2 sets these weights while it runs", timeout=10_000)
    await expect(page.get_by_label("web weight", exact=True)).to_be_disabled()
    await expect(page.get_by_role("button", name="Set service weight")).to_be_disabled()

    # Half of web-v2's answers fail: rolled back at its first step, and the page says why.
    outcome = page.locator("#release-outcome")
    await expect(outcome).to_contain_text("Last release: web-v2 rolled back", timeout=20_000)
    await expect(outcome).to_contain_text("Release of web-v2 rolled back by the guarded ramp")
    await expect(page.locator("#outcome-reason")).to_contain_text("out of bounds")
    await expect(outcome.locator("time")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    history = (await api.call("GET", "/history?app=shop&limit=5"))[1]["history"]
    assert history[0]["operation"] == "ramp_rollback"
    await expect(page.locator("#outcome-reason")).to_have_text(f"Why: {history[0]['reason']}")
    app = await api.app()
    assert app["release"] is None and weights(app) == {"web": 100}
    await expect(page.locator("#release-title")).to_have_text("Release")

    # The chart keeps web-v2's past, greyed and named, with the 5xx that got it rolled back.
    removed = await until(lambda: chart(page, "chartRemoved"), 15, "web-v2 on the chart as removed", 0.1)
    assert removed == ["web-v2"]
    colours = await chart(page, "chartColours")
    assert colours == {"web": before["web"], "web-v2": REMOVED}
    names, errors = await chart(page, "chartNames", "error-chart"), await chart(page, "chartData", "error-chart")
    assert max(v for v in errors[1 + names.index("web-v2")] if v is not None) > 10  # % 5xx
    await expect(page.locator("#error-chart .u-legend")).to_contain_text("web-v2 (removed)")
    await screenshot(page, "release-outcome")
    await ld.stop()
    assert bad.failed > 0 and all(f.startswith("500 ") for f in ld.failed), ld.failed[:3]

    # Dismissed, the banner is gone, and stays gone on the next visit; the history keeps it all.
    await page.get_by_role("button", name="Dismiss").click()
    await expect(outcome).to_have_count(0)
    await page.reload()
    await expect(page.locator(f'#history tr[data-generation="{history[0]["generation"]}"] .why')).to_have_text(
        f"Why: {history[0]['reason']}")
    await expect(outcome).to_have_count(0)


async def test_ramp_live_numbers(backend, router_process, monkeypatch, browser, load):
    rp, _ = await _router(backend, router_process, monkeypatch)
    green = await backend("green")
    api = Api(rp.admin_url)
    ld = load(rp.url + "/")
    await _release(api, "web-v2", green.addr)
    status, body = await api.call("POST", "/apps/shop/release/ramp", {"steps": [10, 100], "interval": "1h"})
    assert status == 201, body
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    # The step so far, both versions, as routerctl release ramp --wait shows them.
    window = page.locator("#ramp-window")
    await expect(window.locator("caption")).to_contain_text("This step so far:", timeout=20_000)

    async def counted() -> dict[str, int] | None:
        rows = await page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
            '#ramp-window tbody tr')].map((r) => [r.dataset.version, Number(r.cells[1].textContent)]))""")
        return rows if rows.get("new", 0) > 0 and rows.get("old", 0) > 0 else None
    rows = await until(counted, 15, "requests of both versions in the step's numbers", 0.1)
    progress = (await api.call("GET", "/apps/shop/release/ramp"))[1]
    assert progress["window"]["new"]["requests"] >= rows["new"]
    await expect(window).to_contain_text("web-v2")
    await expect(page.locator("#ramp-bounds")).to_have_text(
        "Bounds: errors at most 1 points over the old version's; p99 latency at most 2× the old "
        "version's (above 10ms); at least 20 requests a version.")
    await until(lambda: page.evaluate("document.getElementById('traffic-chart').chartData[0].length > 5"),
                15, "a few seconds of traffic on the chart", 0.1)
    await screenshot(page, "ramp-live")
    await ld.stop()


async def test_preview_link_by_clicks(backend, router_process, monkeypatch, browser):
    rp, _ = await _router(backend, router_process, monkeypatch, routes=["localhost"])
    green = await backend("green")
    api = Api(rp.admin_url)
    await _release(api, "web-v2", green.addr)  # at weight 0: no customer sees it
    page = await browser.page(timezone_id="Asia/Tokyo")
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    await page.get_by_role("button", name="Preview link").click()
    dlg = page.locator("dialog")
    await dlg.get_by_label("Valid for").fill("2h")
    await dlg.get_by_role("button", name="Create link").click()
    link = dlg.locator("a.preview-link")
    await expect(link).to_have_text(re.compile(rf"^http://localhost:{rp.port}/\?router-preview=\S+$"))
    await expect(dlg.locator("#preview-expires")).to_have_text(re.compile(r" UTC$"))
    await screenshot(page, "preview-dialog")
    url = await link.get_attribute("href")
    # The tester's browser: the link sets the cookie, then the new version answers.
    tester = await browser.page()
    await tester.goto(url)
    await expect(tester.locator("body")).to_have_text("green")
    await tester.goto(f"http://localhost:{rp.port}/")
    await expect(tester.locator("body")).to_have_text("green")
    # Anyone else: the old version.
    other = await browser.page()
    await other.goto(f"http://localhost:{rp.port}/")
    await expect(other.locator("body")).to_have_text("blue")
    assert weights(await api.app()) == {"web": 100, "web-v2": 0}


async def test_create_and_delete_an_application(backend, router_process, monkeypatch, browser):
    rp, blue = await _router(backend, router_process, monkeypatch)
    api = Api(rp.admin_url)
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.get_by_role("button", name="New application").click()
    dlg = page.locator("dialog")
    await dlg.get_by_label("Application name").fill("shop")
    await dlg.get_by_label("Routes").fill("blog.test")
    await dlg.get_by_label("Backends").fill(blue.addr)
    await dlg.get_by_role("button", name="Create").click()
    await expect(page.locator("#dialog-error")).to_have_text("Application name: shop exists already.")
    await dlg.get_by_label("Application name").fill("blog")
    await dlg.get_by_label("Service name").fill("v1")
    await dlg.get_by_label("Session stickiness").uncheck()
    await screenshot(page, "create-app")
    await dlg.get_by_role("button", name="Create").click()
    await expect(page).to_have_url(re.compile(r"/ui/#/apps/blog$"))
    status, blog = await api.call("GET", "/apps/blog")
    assert status == 200 and blog["routes"] == ["blog.test"] and blog["session_sticky"] is False
    assert {n: (s["weight"], s["backends"]) for n, s in blog["services"].items()} == {"v1": (100, [blue.addr])}

    # Deleting asks for the name first.
    await page.get_by_role("button", name="Delete application").click()
    ok = dlg.get_by_role("button", name="Delete application")
    await expect(ok).to_be_disabled()
    await dlg.get_by_label("Type blog to confirm").fill("blo")
    await expect(ok).to_be_disabled()
    await dlg.get_by_label("Type blog to confirm").fill("blog")
    await ok.click()
    await expect(page.locator("#apps-status")).to_have_text("Application blog deleted.")
    assert (await api.call("GET", "/apps/blog"))[0] == 404
    await expect(page.locator('tr[data-app="blog"]')).to_have_count(0)
    await expect(page.locator('tr[data-app="shop"]')).to_be_visible()


async def test_times_in_utc_no_page_outline_and_a_stale_notice_that_goes(
        backend, router_process, monkeypatch, browser):
    rp, _ = await _router(backend, router_process, monkeypatch)
    api = Api(rp.admin_url)
    page = await browser.page(timezone_id="America/New_York")  # not UTC: local times would show
    await sign_in(page, rp.admin_url)
    # Opening a page by the keyboard gives its content the focus, without a ring around it.
    await page.locator("#link-shop").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="shop", exact=True)).to_be_visible()
    assert await page.evaluate("document.activeElement.id") == "main"
    assert await page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "none"
    # History times as routerctl prints them, in UTC, saying so.
    (entry,) = (await api.call("GET", "/history?app=shop&limit=1"))[1]["history"]
    cell = page.locator(f'#history tr[data-generation="{entry["generation"]}"] time')
    await expect(cell).to_have_text(entry["time"].replace("T", " ").replace("Z", " UTC"))

    # A change refused because someone else changed the app: said, with the state now shown; it
    # goes once the app changes again (it would no longer be true).
    gen = (await api.app())["generation"]
    await page.get_by_label("web weight", exact=True).fill("60")
    status, _ = await api.call("PATCH", "/apps/shop", {"session_sticky": False}, **{"If-Match": f'"{gen}"'})
    assert status == 200
    await page.get_by_role("button", name="Set service weight").click()
    alert = page.locator("#app-error")
    await expect(alert).to_contain_text(f"Not applied: shop was changed by someone else since this page "
                                        f"read it (stale If-Match: {gen} is not the current "
                                        f"generation {gen + 1})")
    await expect(alert).to_contain_text(f"The page now shows generation {gen + 1}")
    await expect(page.get_by_label("Session stickiness")).not_to_be_checked()
    await asyncio.sleep(2)  # a refresh or more: the notice stays while it is true
    await expect(alert).not_to_be_empty()
    status, _ = await api.call("PATCH", "/apps/shop", {"session_sticky": True})
    assert status == 200
    await expect(alert).to_be_empty(timeout=10_000)
    assert weights(await api.app()) == {"web": 100}
