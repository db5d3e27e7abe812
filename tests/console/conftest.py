"""Fixtures for the web console: real Chromium through Playwright, a bounded background load
through the data plane, and screenshots when ``ROUTER_SCREENSHOTS`` names a directory.

The browser is Debian's ``chromium`` (``scripts/system-deps.sh`` installs it as root); Playwright
never downloads one. Without either, the browser tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import pytest

from tests.load import Load

CHROMIUM = os.environ.get("ROUTER_CHROMIUM", "/usr/bin/chromium")
# No network here: nothing in the browser may try to reach outside (updates, sync, QUIC probes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "console-test-token"
REMOVED = "#9ca3af"  # the colour of a version the router no longer has (router/admin/ui/js/traffic.js)


def browser_missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        return (f"no Chromium at {CHROMIUM}" + (f" (one is at {found}: set ROUTER_CHROMIUM)" if found else "")
                + "; install Debian's chromium package (scripts/system-deps.sh does, as root)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


@dataclass
class Browser:
    """Pages in fresh Chromium profiles; errors the pages raise are collected for the test."""

    root: str
    pw: Any = None
    contexts: list[Any] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def page(self, width: int = 1280, height: int = 800, args: tuple[str, ...] = (),
                   timezone_id: str | None = None) -> Any:
        """A page in a fresh profile; ``args``: more Chromium switches (names resolved to
        loopback: ``--host-resolver-rules=MAP shop.test 127.0.0.1``); ``timezone_id``: the
        browser's time zone (the machine's otherwise)."""
        profile = os.path.join(self.root, f"profile-{len(self.contexts)}")
        ctx = await self.pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(args),
            viewport={"width": width, "height": height}, timezone_id=timezone_id)
        self.contexts.append(ctx)
        page = ctx.pages[0] if ctx.pages else await ctx.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda e: self.page_errors.append(f"page error: {e}"))
        # A Content-Security-Policy violation means a file the console needs would not run.
        page.on("console", lambda m: self.page_errors.append(f"console: {m.text}")
                if "Content Security Policy" in m.text else None)
        return page


@pytest.fixture
async def browser(tmp_path: Any) -> AsyncIterator[Browser]:
    why = browser_missing()
    if why:
        pytest.skip(why)
    from playwright.async_api import async_playwright, expect

    # Generous on a loaded machine; a wait that passes returns as soon as its condition holds.
    expect.set_options(timeout=15_000)
    b = Browser(str(tmp_path))
    b.pw = await async_playwright().start()
    try:
        yield b
    finally:
        for ctx in b.contexts:
            await ctx.close()
        await b.pw.stop()
    assert not b.page_errors, b.page_errors


async def screenshot(page: Any, name: str) -> None:
    """Write ``<name>.png`` into ``$ROUTER_SCREENSHOTS`` when set (the README's pictures)."""
    where = os.environ.get("ROUTER_SCREENSHOTS")
    if where:
        os.makedirs(where, exist_ok=True)
        await page.screenshot(path=os.path.join(where, f"{name}.png"), full_page=True)


async def sign_in(page: Any, admin_url: str, token: str = TOKEN) -> None:
    await page.goto(admin_url + "/ui/")
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


@pytest.fixture
async def load() -> AsyncIterator[Callable[..., Load]]:
    started: list[Load] = []

    def make(url: str, **kw: Any) -> Load:
        # A browser-like client among them, and a pause: the console's chart, not a stress test.
        ld = Load(url, **{"pinned": 1, "pause": 0.01, "max_seconds": 300.0, **kw})
        ld.start()
        started.append(ld)
        return ld

    yield make
    for ld in started:
        await ld.stop()
