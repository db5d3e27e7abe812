"""The console driven by clicks in real Chromium against the real router process.

The release workflow of the product page, end to end, under continuous load through the data
plane: start a release (Update), wait for it to be ready, move the weights in two steps while
the live chart follows, confirm; again with roll back. After each click the state is read back
through the API, and the background load must see 0 failed requests. Also: a wrong token is
refused, a stale page cannot overwrite a newer change, the API's error text reaches the user,
the keyboard alone is enough, and a phone-width screen shows everything without sideways
scrolling. ``ROUTER_SCREENSHOTS=docs/screenshots`` keeps a picture of each page.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from tests.conftest import app_config
from tests.processes import until

from .conftest import REMOVED, TOKEN, screenshot, sign_in

pytest.importorskip("playwright", reason="the playwright package is not installed (pip install -e '.[test]')")
from playwright.async_api import expect  # noqa: E402


class Api:
    """The state as the API tells it, with the admin token."""

    def __init__(self, admin_url: str) -> None:
        self.url = admin_url + "/api/v1"
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    async def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, json=body,
                                 headers={**self.headers, **headers}) as r:
                return r.status, await r.json(content_type=None)

    async def app(self, name: str = "shop") -> dict[str, Any]:
        status, body = await self.call("GET", f"/apps/{name}")
        assert status == 200, body
        return body


def weights(app: dict[str, Any]) -> dict[str, int]:
    return {n: s["weight"] for n, s in app["services"].items()}


async def chart(page: Any, what: str, box: str = "traffic-chart") -> Any:
    """What the live traffic chart draws (chartNames, chartColours, chartRemoved, chartData)."""
    return await page.evaluate(f"(document.getElementById('{box}') || {{}}).{what} || null")


async def _shop(backend, router_process, monkeypatch, two: bool):
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", TOKEN)  # the router process reads it at start
    blue, green = await backend("blue"), await backend("green")
    services = ({"blue": (50, [blue.addr]), "green": (50, [green.addr])} if two
                else {"web": (100, [blue.addr])})
    rp = await router_process({"apps": {"shop": app_config(services)}})
    return rp, blue, green


@pytest.fixture
async def shop(backend, router_process, monkeypatch):
    """The router process with an admin token and the app ``shop`` (service web on blue);
    a second backend, green, for the new version."""
    return await _shop(backend, router_process, monkeypatch, two=False)


@pytest.fixture
async def two_services(backend, router_process, monkeypatch):
    """As ``shop``, with services blue and green at 50/50."""
    return await _shop(backend, router_process, monkeypatch, two=True)


async def traffic(page: Any, service: str) -> dict[str, float]:
    """What the live traffic shows for a service: the table's rates over the last seconds and
    the last point the chart drew (requests by weight; requests pinned at weight 0)."""
    return await page.evaluate("""(name) => {
        const row = document.querySelector(`#traffic-readout tr[data-service="${name}"]`);
        const chart = document.getElementById("traffic-chart");
        const i = (chart.chartNames || []).indexOf(name);
        const j = (chart.chartPinned || []).indexOf(name);
        const last = (a) => (a && a.length ? a[a.length - 1] : null);
        return {
            rps: row && row.dataset.rps ? Number(row.dataset.rps) : -1,
            pinned: row && row.dataset.pinned ? Number(row.dataset.pinned) : -1,
            chart: i < 0 ? null : last(chart.chartData[1 + i]),
            chart_pinned: j < 0 ? null : last(chart.chartData[1 + chart.chartNames.length + j]),
        };
    }""", service)


async def no_sideways_scroll(page: Any) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert width <= 0, f"the page is {width} px wider than the window"


async def set_weight(page: Any, service: str, value: int) -> None:
    await page.get_by_label(f"{service} weight", exact=True).fill(str(value))
    await page.get_by_role("button", name="Set service weight").click()


async def start_release(page: Any, service: str, backend_addr: str, http_check: bool) -> None:
    dlg = page.locator("dialog")
    await expect(dlg.get_by_role("heading")).to_have_text("Update shop")
    await dlg.get_by_label("New service name").fill(service)
    await dlg.get_by_label("Backends").fill(backend_addr)
    if http_check:
        await dlg.get_by_label("Check over HTTP").check()
        await dlg.get_by_label("Health check path").fill("/healthz")
        await dlg.get_by_label("Interval").fill("500ms")
        await screenshot(page, "update-dialog")
    await dlg.get_by_role("button", name="OK").click()
    await expect(dlg).to_be_hidden()


async def test_release_confirmed_by_clicks_under_load(shop, browser, load, capsys):
    rp, blue, green = shop
    api = Api(rp.admin_url)
    ld = load(rp.url + "/")
    await ld.wait_more(50)
    page = await browser.page()
    await page.goto(rp.admin_url + "/ui/")
    await expect(page.get_by_label("Admin token")).to_be_focused()
    await screenshot(page, "sign-in")
    await page.get_by_label("Admin token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()

    # Applications: shop with its service and no release; Update starts one.
    row = page.locator('tr[data-app="shop"]')
    await expect(row).to_contain_text("No release")
    await expect(row).to_contain_text("1/1 backends healthy")
    await no_sideways_scroll(page)
    await screenshot(page, "applications")
    await row.get_by_role("button", name="Update").click()
    await start_release(page, "web-v2", green.addr, http_check=True)
    await expect(page).to_have_url(re.compile(r"/ui/#/apps/shop$"))
    app = await api.app()
    assert app["release"]["new"] == "web-v2" and app["release"]["old"] == ["web"]
    assert weights(app) == {"web": 100, "web-v2": 0}
    assert app["services"]["web-v2"]["health_check"]["path"] == "/healthz"

    # Ready once green has passed its health checks.
    await expect(page.locator("#release-status")).to_have_text(
        "Blue-green release awaiting confirmation", timeout=20_000)
    assert (await api.app())["release"]["status"] == "awaiting_confirmation"
    await expect(page.locator('article[data-service="web-v2"]')).to_contain_text("new version")
    await expect(page.locator('article[data-service="web-v2"] li[data-health="healthy"]')).to_have_count(1)

    # Step 1: web-v2 0 -> 100 (50/50 of new clients); the chart shows web-v2 taking traffic.
    await set_weight(page, "web-v2", 100)
    await expect(page.locator("#app-status")).to_contain_text("web-v2 0 → 100")
    assert weights(await api.app()) == {"web": 100, "web-v2": 100}
    seen = await until(_rate_above(page, "web-v2", 1.0), 15, "the chart to show web-v2's traffic", 0.1)
    assert seen["chart"] > 0

    # Step 2: web 100 -> 0. New clients all go to web-v2; clients pinned by cookie keep web
    # (the drain), and the page shows that apart.
    await set_weight(page, "web", 0)
    await expect(page.locator("#app-status")).to_contain_text("web 100 → 0")
    assert weights(await api.app()) == {"web": 0, "web-v2": 100}
    drained = await until(_only_pinned(page, "web"), 15, "web's traffic to be only pinned clients", 0.1)
    assert drained["chart_pinned"] > 0 and drained["chart"] == 0
    await expect(page.locator("#drain-note")).to_contain_text("web still gets")
    await expect(page.locator('article[data-service="web"] .share')).to_contain_text("0%")
    await no_sideways_scroll(page)
    await screenshot(page, "application")

    # Confirm Release Completion, asked first; web-v2 has weight, so there is nothing to choose.
    colours = await chart(page, "chartColours")
    await page.get_by_role("button", name="Confirm Release Completion").click()
    dlg = page.locator("dialog")
    await expect(dlg.get_by_role("heading")).to_have_text("Confirm Release Completion")
    await expect(dlg.locator("#dialog-option")).to_have_count(0)
    await screenshot(page, "confirm-dialog")
    await dlg.get_by_role("button", name="Confirm release").click()
    await expect(page.locator("#app-status")).to_contain_text("Release of shop confirmed")
    app = await api.app()
    assert app["release"] is None and weights(app) == {"web-v2": 100}
    await expect(page.locator("#release-title")).to_have_text("Release")
    # web-v2 keeps its colour now that web is gone; web stays on the chart, greyed: removed.
    await until(lambda: chart(page, "chartRemoved"), 15, "web on the chart as removed", 0.1)
    after = await chart(page, "chartColours")
    assert after["web-v2"] == colours["web-v2"] and after["web"] == REMOVED != colours["web"]
    await expect(page.locator("#traffic-chart .u-legend")).to_contain_text("web (removed)")
    # ... and on the next visit.
    await page.reload()
    await until(lambda: chart(page, "chartNames"), 15, "the chart", 0.1)
    assert (await chart(page, "chartColours"))["web-v2"] == colours["web-v2"]
    await expect(page.locator("#release-outcome")).to_contain_text(
        "Release of web-v2 confirmed by 127.0.0.1")

    await left_alone(ld, "blue")  # the pinned clients followed the release
    await stop_and_report(ld, capsys, "confirm workflow")
    assert ld.by_body["blue"] > 0 and ld.by_body["green"] > 0


async def left_alone(ld: Any, backend_name: str) -> None:
    """After the requests in flight, the backend gets none of the next 200."""
    await ld.wait_more(40)
    before = ld.by_body[backend_name]
    await ld.wait_more(200)
    assert ld.by_body[backend_name] == before


async def stop_and_report(ld: Any, capsys: Any, what: str) -> None:
    await ld.stop()
    with capsys.disabled():
        print(f"\n  {what}: {ld.sent} requests under load, {len(ld.failed)} failed, "
              f"by backend {dict(ld.by_body)}")
    assert ld.failed == [], ld.failed[:5]


def _rate_above(page: Any, service: str, rps: float):
    async def check() -> dict[str, float] | None:
        t = await traffic(page, service)
        return t if t["rps"] > rps and (t["chart"] or 0) > 0 else None
    return check


def _only_pinned(page: Any, service: str):
    """Over the last seconds, every request the service got came by cookie."""
    async def check() -> dict[str, float] | None:
        t = await traffic(page, service)
        return t if t["pinned"] > 0 and abs(t["rps"] - t["pinned"]) < 1e-6 and t["chart"] == 0 else None
    return check


async def test_release_rolled_back_by_clicks_under_load(shop, browser, load, capsys):
    rp, blue, green = shop
    api = Api(rp.admin_url)
    ld = load(rp.url + "/")
    await ld.wait_more(50)
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.get_by_role("link", name="shop").click()
    await expect(page.locator("#release-title")).to_have_text("Release")

    # Update from the application page; no HTTP check: a TCP connect decides readiness.
    await page.locator("#release").get_by_role("button", name="Update").click()
    await start_release(page, "web-v2", green.addr, http_check=False)
    await expect(page.locator("#release-status")).to_have_text(
        "Blue-green release awaiting confirmation", timeout=20_000)
    app = await api.app()
    assert app["release"]["status"] == "awaiting_confirmation" and weights(app) == {"web": 100, "web-v2": 0}

    await set_weight(page, "web-v2", 100)
    await expect(page.locator("#app-status")).to_contain_text("web-v2 0 → 100")
    assert weights(await api.app()) == {"web": 100, "web-v2": 100}
    await until(_rate_above(page, "web-v2", 1.0), 15, "the chart to show web-v2's traffic", 0.1)

    # The stickiness switch, off and on again.
    switch = page.get_by_label("Session stickiness")
    await switch.uncheck()
    await expect(page.locator("#app-status")).to_have_text("Session stickiness off.")
    assert (await api.app())["session_sticky"] is False
    await expect(page.get_by_label("Session stickiness")).not_to_be_checked()
    await page.get_by_label("Session stickiness").check()
    await expect(page.locator("#app-status")).to_have_text("Session stickiness on.")
    assert (await api.app())["session_sticky"] is True

    # Roll back from the Applications list, as the product page does it, asked first.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Applications").click()
    row = page.locator('tr[data-app="shop"]')
    await expect(row).to_contain_text("Blue-green release awaiting confirmation")
    await row.get_by_role("button", name="Roll back").click()
    dlg = page.locator("dialog")
    await expect(dlg.get_by_role("heading")).to_have_text("Roll back the release")
    await expect(dlg).to_contain_text("old weights restored (web=100)")
    await screenshot(page, "rollback-dialog")
    await dlg.get_by_role("button", name="Roll back").click()
    await expect(page.locator("#apps-status")).to_contain_text("Release of shop rolled back")
    app = await api.app()
    assert app["release"] is None and weights(app) == {"web": 100}
    await expect(row).to_contain_text("No release")

    await left_alone(ld, "green")  # clients pinned to web-v2 came back to web
    await stop_and_report(ld, capsys, "rollback workflow")
    assert ld.by_body["green"] > 0


async def test_wrong_token_refused(shop, browser):
    rp, _, _ = shop
    page = await browser.page()
    await sign_in(page, rp.admin_url, "not-the-token")
    await expect(page.locator("#login-error")).to_have_text("Refused: wrong admin token.")
    assert await page.context.cookies() == []
    await expect(page.get_by_role("heading", name="Applications")).to_have_count(0)
    # Nothing of the API answers without a session, whatever the page tries.
    status = await page.evaluate("fetch('/api/v1/apps').then((r) => r.status)")
    assert status == 401

    await page.get_by_label("Admin token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator('tr[data-app="shop"]')).to_be_visible()
    (cookie,) = await page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    # Signed in, a change still needs the page's CSRF token: a request without it is refused.
    status = await page.evaluate("""fetch('/api/v1/apps/shop', {method: 'PATCH',
        headers: {'Content-Type': 'application/json'}, body: '{"session_sticky": false}'}).then((r) => r.status)""")
    assert status == 403
    assert (await Api(rp.admin_url).app())["session_sticky"] is True

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Admin token")).to_be_visible()
    assert await page.evaluate("fetch('/api/v1/apps').then((r) => r.status)") == 401


async def test_stale_page_cannot_overwrite(two_services, browser):
    rp, _, _ = two_services
    api = Api(rp.admin_url)
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    await expect(page.get_by_label("blue weight", exact=True)).to_have_value("50")
    generation = (await api.app())["generation"]

    # This operator starts to move blue to 0 ...
    await page.get_by_label("blue weight", exact=True).fill("0")
    await expect(page.locator("#ws-green")).to_have_text("100% of new requests")
    # ... while someone else gives green 20 through the API.
    status, body = await api.call("PUT", "/apps/shop/weights", {"green": 20},
                                  **{"If-Match": f'"{generation}"'})
    assert status == 200 and body["generation"] == generation + 1
    await expect(page.locator("#weights-stale")).to_contain_text(
        f"generation {generation} → {generation + 1}", timeout=10_000)
    await expect(page.get_by_label("blue weight", exact=True)).to_have_value("0")  # not overwritten by the poll
    await page.get_by_role("button", name="Set service weight").click()
    await expect(page.locator("#app-error")).to_contain_text("Not applied: shop was changed by someone else")
    assert weights(await api.app()) == {"blue": 50, "green": 20}
    # The page now shows the newer state, ready for a decision made on it.
    await expect(page.get_by_label("blue weight", exact=True)).to_have_value("50")
    await expect(page.get_by_label("green weight", exact=True)).to_have_value("20")
    await expect(page.locator('article[data-service="green"] .weight')).to_have_text("20")
    await screenshot(page, "stale-refused")
    await set_weight(page, "blue", 0)
    await expect(page.locator("#app-status")).to_contain_text("blue 50 → 0")
    assert weights(await api.app()) == {"blue": 0, "green": 20}


async def test_api_errors_are_shown(two_services, backend, browser):
    rp, _, _ = two_services
    api = Api(rp.admin_url)
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    status, _ = await api.call("GET", "/history?app=shop&limit=1")
    if status == 404:
        await expect(page.locator("#history-none")).to_have_text(
            "History of changes is not available on this router.")

    await set_weight(page, "blue", 150)
    await expect(page.locator("#app-error")).to_have_text(
        "Weights not set: must be an integer 0..100 (got 150)")
    await expect(page.get_by_label("blue weight", exact=True)).to_have_attribute("aria-invalid", "true")
    assert weights(await api.app()) == {"blue": 50, "green": 50}
    await screenshot(page, "api-error")

    # Confirm while the new version has weight 0: the router would refuse. The dialog says so,
    # and offers the one way it accepts -- giving v3 the weight first -- with what that does;
    # OK waits for that choice.
    v3 = await backend("v3")
    status, _ = await api.call("POST", "/apps/shop/release", {"service": "v3", "backends": [v3.addr]})
    assert status == 201
    await expect(page.locator("#release-status")).to_have_text(
        "Blue-green release awaiting confirmation", timeout=20_000)
    await page.get_by_role("button", name="Confirm Release Completion").click()
    dlg = page.locator("dialog")
    await expect(dlg).to_contain_text("v3 has weight 0: confirming as it is would leave shop with "
                                      "nothing to serve, so the router refuses it")
    await expect(dlg.get_by_role("button", name="Confirm release")).to_be_disabled()
    # Cancel asks nothing of the router.
    await dlg.get_by_role("button", name="Cancel").click()
    assert (await api.app())["release"]["status"] == "awaiting_confirmation"
    # With the choice ticked the new version first gets the weight, then the old ones go.
    await page.get_by_role("button", name="Confirm Release Completion").click()
    choice = dlg.get_by_label(re.compile("^Give v3 weight 100 first: all of shop's traffic moves "
                                         "to it at once, with no gradual shift"))
    await choice.check()
    await screenshot(page, "confirm-force")
    await dlg.get_by_role("button", name="Confirm release").click()
    await expect(page.locator("#app-status")).to_contain_text("Release of shop confirmed")
    app = await api.app()
    assert app["release"] is None and weights(app) == {"v3": 100}


async def test_history_panel_lists_changes(two_services, browser):
    rp, _, _ = two_services
    api = Api(rp.admin_url)
    status, _ = await api.call("GET", "/history?app=shop&limit=1")
    if status == 404:
        pytest.skip("this router has no GET /api/v1/history (the history of changes) yet")
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    await set_weight(page, "green", 0)
    await expect(page.locator("#app-status")).to_contain_text("green 50 → 0")
    generation = (await api.app())["generation"]
    row = page.locator(f'#history tr[data-generation="{generation}"]')
    await expect(row).to_contain_text("set_weights")
    await expect(row).to_contain_text("50->0")
    await screenshot(page, "history")


async def test_keyboard_only_at_phone_width(two_services, browser):
    rp, _, _ = two_services
    api = Api(rp.admin_url)
    page = await browser.page(width=390, height=844)
    await page.goto(rp.admin_url + "/ui/")
    await expect(page.get_by_label("Admin token")).to_be_focused()
    await page.keyboard.type(TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.locator('tr[data-app="shop"]')).to_be_visible()
    await no_sideways_scroll(page)
    await screenshot(page, "applications-phone")

    async def tab_to(element_id: str) -> None:
        for _ in range(80):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    await tab_to("link-shop")
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("green weight", exact=True)).to_be_visible()
    await tab_to("w-green")
    await page.keyboard.press("Control+A")
    await page.keyboard.type("80")
    await page.keyboard.press("Enter")
    await expect(page.locator("#app-status")).to_contain_text("green 50 → 80")
    assert weights(await api.app()) == {"blue": 50, "green": 80}
    # The focus stays where it was through the page's live updates.
    await page.wait_for_timeout(2000)
    assert await page.evaluate("document.activeElement.id") == "w-green"
    await tab_to("update")  # the release panel's Update, back round through the page
    await page.keyboard.press("Enter")
    await expect(page.locator("dialog")).to_be_visible()
    await expect(page.get_by_label("New service name")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("dialog")).to_be_hidden()
    await no_sideways_scroll(page)
    await screenshot(page, "application-phone")


async def test_release_panel_shows_the_guarded_ramp(shop, browser):
    rp, blue, green = shop
    api = Api(rp.admin_url)
    status, body = await api.call("POST", "/apps/shop/release",
                                  {"service": "web-v2", "backends": [green.addr]})
    assert status == 201, body
    status, body = await api.call("POST", "/apps/shop/release/ramp",
                                  {"steps": [10, 50, 100], "interval": "1h"})
    assert status == 201, body
    page = await browser.page()
    await sign_in(page, rp.admin_url)
    await page.goto(rp.admin_url + "/ui/#/apps/shop")
    # The first step is taken once the release is ready; nothing is judged within the hour.
    await expect(page.locator("#ramp")).to_contain_text(
        "Guarded ramp running, step 1 of 3: 10% of the traffic to web-v2 (steps 10%, 50%, 100%, "
        "each judged over 60 min).", timeout=20_000)
    await expect(page.locator("#ramp-progress")).to_have_attribute("value", "1")
    await expect(page.locator("#ramp-reason")).to_have_text("Last: the release is ready: first step")
    step = (await api.app())["generation"]
    await expect(page.locator(f'#history tr[data-generation="{step}"] .why')).to_have_text(
        "Why: the release is ready: first step")
    assert weights(await api.app()) == {"web": 90, "web-v2": 10}
    await expect(page.locator("#ramp-resume")).to_have_count(0)
    await page.click("#ramp-pause")
    await expect(page.locator("#ramp")).to_contain_text("Guarded ramp paused, step 1 of 3",
                                                       timeout=10_000)
    await expect(page.locator("#app-status")).to_have_text("Ramp of shop paused.")
    assert (await api.app())["release"]["ramp"]["status"] == "paused"
    await screenshot(page, "release-ramp")
    await page.click("#ramp-resume")
    await expect(page.locator("#ramp")).to_contain_text("Guarded ramp running, step 1 of 3",
                                                       timeout=10_000)
    assert (await api.app())["release"]["ramp"]["status"] == "running"
    # Abort asks first; Cancel changes nothing.
    await page.click("#ramp-abort")
    await expect(page.locator("dialog")).to_contain_text("the old weights come back (web=100)")
    await page.click("#dialog-cancel")
    assert (await api.app())["release"]["ramp"]["status"] == "running"
    await page.click("#ramp-abort")
    await page.click("#dialog-ok")
    await expect(page.locator("#ramp")).to_have_count(0, timeout=10_000)
    app = await api.app()
    assert app["release"]["new"] == "web-v2" and app["release"].get("ramp") is None
    assert weights(app) == {"web": 100, "web-v2": 0}
