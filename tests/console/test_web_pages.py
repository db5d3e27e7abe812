"""Web pages against the admin listener, in real Chromium (router.admin.guard).

A page of another site tries to take over an app's traffic on a router whose admin listener has
no token (the loopback default; the browser reaches it as ``localhost``, as through ``ssh -L``):
by ``fetch`` (``text/plain`` and untyped bodies, ``no-cors``), by an HTML form, and by DNS
rebinding (Chromium's host resolver maps the attacker's name to the listener, and the page is
the attacker's own: same-origin with it). Nothing changes. The console itself keeps working
through ``localhost`` and behind a reverse proxy (nginx) once the proxy's name or origin is
allowed, and not before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import app_config, router_config, serve
from tests.processes import free_port, terminate, until

from .conftest import TOKEN, sign_in

pytest.importorskip("playwright", reason="the playwright package is not installed (pip install -e '.[test]')")
from playwright.async_api import expect  # noqa: E402

from .test_browser import set_weight  # noqa: E402

MAP = "--host-resolver-rules=MAP attacker.test 127.0.0.1, MAP evil.test 127.0.0.1, MAP router.test 127.0.0.1"


class State:
    """The app lab as the API shows it (read with the address, as routerctl does)."""

    def __init__(self, admin_port: int, token: str | None = None) -> None:
        self.url = f"http://127.0.0.1:{admin_port}/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def get(self, path: str = "/apps/lab") -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.url + path, headers=self.headers) as r:
                assert r.status == 200, await r.text()
                return await r.json()


@pytest.fixture
async def lab(backend, router) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A router without an admin token serving lab.test from the backend "lab"; the attacker's
    backend "evil" and a server for the attacker's pages (``pages[path] = html``)."""
    lab_be, evil = await backend("lab"), await backend("evil")
    srv = await router(router_config({"lab": app_config({"web": (100, [lab_be.addr])},
                                                        routes=["lab.test"])}))
    pages: dict[str, str] = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.path], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner, port = await serve(app)
    yield srv, evil, (pages, port)
    await runner.cleanup()


async def untouched(srv: Any, state: State, generation: int) -> None:
    app = await state.get()
    assert app["generation"] == generation and list(app["services"]) == ["web"]
    assert app["release"] is None
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{srv.port}/", headers={"Host": "lab.test"}) as r:
            assert await r.text() == "lab\n"


async def test_a_page_of_another_site_cannot_change_anything_by_fetch(lab, browser):
    srv, evil, (pages, port) = lab
    state = State(srv.admin_port)
    generation = (await state.get())["generation"]
    pages["/"] = "<!doctype html><title>cats</title><p>cats"
    page = await browser.page(args=(MAP,))
    await page.goto(f"http://attacker.test:{port}/")
    # Without reading the answers: what a page may send anywhere without asking first.
    sent = await page.evaluate("""async ([admin, evil]) => {
        const post = (path, body) => fetch(admin + path, {method: "POST", mode: "no-cors", body});
        const release = JSON.stringify({service: "evil", backends: [evil]});
        const force = JSON.stringify({force: true});
        await post("/api/v1/apps/lab/release", release);                // text/plain;charset=UTF-8
        await post("/api/v1/apps/lab/release/confirm", force);
        await post("/api/v1/apps/lab/release", new Blob([release]));     // no type at all
        await post("/api/v1/apps/lab/release/confirm", new Blob([force]));
        await post("/api/v1/apps/lab/release/rollback");                 // no body
        await fetch(admin + "/api/v1/apply?force=1", {method: "POST", mode: "no-cors",
            body: new URLSearchParams({apps: "{}"})});                   // a form's type
        return 6;
    }""", [f"http://localhost:{srv.admin_port}", evil.addr])
    assert sent == 6
    await untouched(srv, state, generation)
    assert evil.requests == 0


async def test_a_page_of_another_site_cannot_change_anything_by_form(lab, browser):
    srv, evil, (pages, port) = lab
    state = State(srv.admin_port)
    generation = (await state.get())["generation"]
    admin = f"http://localhost:{srv.admin_port}"
    # text/plain sends name=value as it is: a JSON body made of the field's name and value,
    # here one that makes the attacker's backend the only one of lab.test (the "=" falls in
    # "source"). The page asks for no referrer: Chromium then sends "Origin: null".
    apps = json.dumps({"lab": app_config({"evil": (100, [evil.addr])}, routes=["lab.test"])})
    pages["/"] = f"""<!doctype html><meta name="referrer" content="no-referrer">
        <form method="post" enctype="text/plain" action="{admin}/api/v1/apply?force=1">
        <input type="hidden" name='{{"apps": {apps}, "source": "' value='"}}'></form>
        <script>document.forms[0].submit()</script>"""
    # The same with the page's own origin sent, and a body-less change by an empty form.
    pages["/origin"] = pages["/"].replace('<meta name="referrer" content="no-referrer">', "")
    pages["/plain"] = f"""<!doctype html><form method="post" action="{admin}/api/v1/apps/lab/release/rollback">
        </form><script>document.forms[0].submit()</script>"""
    page = await browser.page(args=(MAP,))
    for path in ("/", "/origin", "/plain"):
        async with page.expect_response(lambda r: r.url.startswith(admin)) as answered:
            await page.goto(f"http://attacker.test:{port}{path}")
        answer = await answered.value
        assert answer.status in (403, 415), (path, answer.status)
    await untouched(srv, state, generation)
    assert evil.requests == 0


async def test_dns_rebinding_reads_and_changes_nothing(lab, browser):
    """The attacker's page is at http://evil.test:<admin port>/; then evil.test resolves to the
    listener, and the page's requests are same-origin with it, naming evil.test. (Its script
    runs here in a page the listener served under that name: the health probe answers any.)"""
    srv, evil, _ = lab
    state = State(srv.admin_port)
    generation = (await state.get())["generation"]
    page = await browser.page(args=(MAP,))
    await page.goto(f"http://evil.test:{srv.admin_port}/healthz")
    got = await page.evaluate("""async (evil) => {
        const read = await fetch("/api/v1/apps");
        const change = await fetch("/api/v1/apps/lab/release", {method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({service: "evil", backends: [evil]})});
        const metrics = await fetch("/metrics");
        const console = await fetch("/ui/session");
        return [[read.status, await read.text()], [change.status, await change.text()],
                [metrics.status, await metrics.text()], [console.status, await console.text()]];
    }""", evil.addr)
    for status, body in got:
        assert status == 421, (status, body)
        assert json.loads(body)["error"]["field"] == "Host" and "lab" not in body
    await untouched(srv, state, generation)


async def test_the_console_through_localhost(backend, router, browser, monkeypatch):
    """``ssh -L 9090:localhost:9090``: the browser asks for localhost; with a token and
    without."""
    blue, green = await backend("blue"), await backend("green")
    for token in (TOKEN, None):
        if token:
            monkeypatch.setenv("ROUTER_ADMIN_TOKEN", token)
        else:
            monkeypatch.delenv("ROUTER_ADMIN_TOKEN", raising=False)
        srv = await router(router_config({"shop": app_config(
            {"blue": (50, [blue.addr]), "green": (50, [green.addr])})}))
        admin = f"http://localhost:{srv.admin_port}"
        page = await browser.page()
        if token:
            await sign_in(page, admin)
        await page.goto(admin + "/ui/#/apps/shop")
        await set_weight(page, "blue", 0)
        await expect(page.locator("#app-status")).to_contain_text("blue 50 → 0")
        app = await State(srv.admin_port, token).get("/apps/shop")
        assert {n: s["weight"] for n, s in app["services"].items()} == {"blue": 0, "green": 50}


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_NGINX_CONF = """worker_processes 1;
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{servers}
}}
"""
# The two usual ways: the name the browser asked for passed on, or the upstream's address.
_KEEPS_HOST = """    server {{ listen 127.0.0.1:{port}; location / {{
        proxy_pass http://127.0.0.1:{admin}; proxy_set_header Host $http_host; }} }}
"""
_OWN_HOST = """    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://127.0.0.1:{admin}; }} }}
"""


@pytest.fixture
async def nginx(tmp_path: Any) -> AsyncIterator[Any]:
    if not os.access(NGINX, os.X_OK):
        pytest.skip("nginx is not installed (Debian package nginx-light)")
    procs: list[subprocess.Popen[bytes]] = []

    async def start(servers: str) -> None:
        prefix = tmp_path / f"nginx{len(procs)}"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(_NGINX_CONF.format(prefix=prefix, servers=servers))
        procs.append(subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                                       "-c", str(prefix / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

    yield start
    for p in procs:
        terminate(p, 10)


async def test_the_console_behind_a_reverse_proxy(backend, router, browser, nginx, monkeypatch):
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", TOKEN)
    blue, green = await backend("blue"), await backend("green")
    keeps, own = free_port(), free_port()
    configured = await router(router_config(
        {"shop": app_config({"blue": (50, [blue.addr]), "green": (50, [green.addr])})},
        admin={"listen": "127.0.0.1:0", "allowed_hosts": ["router.test"],
               "allowed_origins": [f"http://router.test:{own}"]}))
    bare = await router(router_config({"shop": app_config({"blue": (50, [blue.addr])})}))
    bare_keeps, bare_own = free_port(), free_port()
    await nginx(_KEEPS_HOST.format(port=keeps, admin=configured.admin_port)
                + _OWN_HOST.format(port=own, admin=configured.admin_port)
                + _KEEPS_HOST.format(port=bare_keeps, admin=bare.admin_port)
                + _OWN_HOST.format(port=bare_own, admin=bare.admin_port))

    async def up() -> bool:
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{bare_own}/healthz") as r:
                    return r.status == 200
        except aiohttp.ClientError:
            return False
    await until(up, 10, "nginx to answer")
    state = State(configured.admin_port, TOKEN)
    for port, weight in ((keeps, 0), (own, 10)):
        page = await browser.page(args=(MAP,))
        console = f"http://router.test:{port}"
        await sign_in(page, console)
        await page.goto(console + "/ui/#/apps/shop")
        await set_weight(page, "blue", weight)
        await expect(page.locator("#app-status")).to_contain_text(f"→ {weight}")
        app = await state.get("/apps/shop")
        assert app["services"]["blue"]["weight"] == weight
    # Not allowed: the name is misdirected; the origin is refused (the console's scripts,
    # which Chromium fetches with an Origin, as they would be at sign-in).
    page = await browser.page(args=(MAP,))
    resp = await page.goto(f"http://router.test:{bare_keeps}/ui/")
    assert resp is not None and resp.status == 421
    async with page.expect_response(lambda r: r.url.endswith("/ui/js/main.js")) as answered:
        await page.goto(f"http://router.test:{bare_own}/ui/")
    assert (await answered.value).status == 403
