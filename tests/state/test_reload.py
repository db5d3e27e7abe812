"""SIGHUP reloads the process settings and never the routing state, on the real `router serve`
process: under load, after changes through the admin API, during an open release."""

from __future__ import annotations

import signal

import aiohttp
import yaml

from tests.conftest import RouterProcess, app_config, free_port
from tests.integration.test_admin_api import Api, _awaiting
from tests.load import Load
from tests.state.conftest import wait_log


async def _get(s: aiohttp.ClientSession, rp: RouterProcess, host: str,
               cookie: str | None = None) -> tuple[int, str, str | None]:
    headers = {"Host": host, **({"Cookie": cookie} if cookie else {})}
    async with s.get(rp.url + "/", headers=headers) as r:
        set_cookie = r.headers.get("Set-Cookie")
        return r.status, await r.text(), set_cookie.split(";")[0] if set_cookie else None


async def _apps(api: Api) -> tuple[dict, str]:
    """Every app and the global ETag."""
    status, body, headers = await api.call("GET", "/apps")
    assert status == 200
    return body, headers["etag"]


def _write(rp: RouterProcess, cfg: dict) -> None:
    """The file as given: listen addresses included (RouterProcess.write_config sets its own)."""
    with open(rp.config_path + ".tmp", "w") as f:
        yaml.safe_dump(cfg, f)
    import os

    os.replace(rp.config_path + ".tmp", rp.config_path)


async def test_sighup_under_load_keeps_api_changes_and_the_open_release(backend, router_process):
    blue, green, cart = await backend("blue"), await backend("green"), await backend("cart")
    file_apps = {"shop": app_config({"blue": (100, [blue.addr])})}
    rp = await router_process({"timeouts": {"grace": "1s"}, "apps": file_apps})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        api = Api(s, rp.admin_port)
        # The operator's work: an app created through the API, a release open, weights moved.
        assert (await api.call("PUT", "/apps/cart", {"routes": ["cart.test"], "services": {
            "web": {"backends": [cart.addr]}}}))[0] == 201
        assert (await api.call("POST", "/apps/shop/release", {
            "service": "green", "backends": [green.addr]}))[0] == 201
        await _awaiting(api)
        assert (await api.call("PUT", "/apps/shop/weights", {"blue": 50, "green": 50}))[0] == 200
        # A client pinned to the new version.
        pinned = None
        for _ in range(10):
            status, body, cookie = await _get(s, rp, "app.test")
            if body == "green\n":
                pinned = cookie
                break
        assert pinned is not None
        before = await _apps(api)
        history = (await api.call("GET", "/history"))[1]

        load = Load(rp.url + "/", clients=4, max_seconds=30)
        load.start()
        base = {"listen": f"127.0.0.1:{rp.port}", "admin": {"listen": f"127.0.0.1:{rp.admin_port}"},
                "timeouts": {"grace": "1s"}, "apps": file_apps}
        # A setting that takes effect; one that needs a restart, reported at each of 21 reloads
        # until the process restarts; then the file as the process runs it: nothing changed.
        base["timeouts"] = {"grace": "1s", "response": "30s"}
        _write(rp, base)
        rp.proc.send_signal(signal.SIGHUP)
        await wait_log(rp, "reload of " + rp.config_path + ": timeouts.response 1m -> 30s")
        new_port = free_port()
        _write(rp, {**base, "listen": f"127.0.0.1:{new_port}"})
        for i in range(21):  # one at a time: signals sent together may arrive as one
            rp.proc.send_signal(signal.SIGHUP)
            await wait_log(rp, f"listen 127.0.0.1:{rp.port} -> 127.0.0.1:{new_port} needs a "
                               "restart", i + 1)
        _write(rp, base)
        rp.proc.send_signal(signal.SIGHUP)
        log = await wait_log(rp, f"reload of {rp.config_path}: no setting changed")
        await load.wait_more(50)  # traffic after the last reload too
        await load.stop()

        # Nothing lost, nothing closed, nothing failed.
        assert load.failed == [] and load.sent > 100
        assert load.by_body.get("blue", 0) > 0 and load.by_body.get("green", 0) > 0
        assert await _apps(api) == before  # the same generation, the same ETag
        assert (await api.call("GET", "/history"))[1] == history  # no new entry
        assert (await api.call("GET", "/apps/shop/release"))[1]["status"] == "awaiting_confirmation"
        assert [(await _get(s, rp, "app.test", pinned))[1] for _ in range(5)] == ["green\n"] * 5
        assert (await _get(s, rp, "cart.test"))[:2] == (200, "cart\n")

    # The log says what a reload did, and what the file's apps would change.
    after_first_reload = log[log.index("reload of"):]
    assert "router.admin: generation" not in after_first_reload and "reloaded" not in log
    assert f"the apps in {rp.config_path} differ from the routing state" in log
    assert "shop: service green deleted" in log and "cart: app deleted" in log
    assert f"`routerctl apply {rp.config_path}` imports them" in log


async def test_restart_keeps_the_state_and_reports_the_file(backend, router_process):
    blue = await backend("blue")
    cfg = {"timeouts": {"grace": "1s"}, "apps": {"shop": app_config({"blue": (100, [blue.addr])})}}
    rp = await router_process(cfg)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        assert (await api.call("PATCH", "/apps/shop", {"session_sticky": False}))[0] == 200
        before = await _apps(api)
    rp.proc.send_signal(signal.SIGTERM)
    assert rp.proc.wait(15) == 0
    assert "differ from the routing state" not in rp.log()  # the store was seeded from the file
    # The file gains an app; the restarted router serves the store's state and says so.
    cfg["apps"]["blog"] = app_config({"w": (100, [blue.addr])}, routes=["blog.test"])
    rp2 = await router_process(cfg)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp2.admin_port)
        assert await _apps(api) == before
    log = await wait_log(rp2, "differ from the routing state")
    assert ("shop: session_sticky off -> on; blog: app added (routes blog.test; session_sticky on; "
            "drain_timeout none); blog: service w added") in log
    assert f"`routerctl apply {rp2.config_path}`" in log


async def test_reload_applies_each_setting_it_reports(tmp_path, backend):
    """What the log says changed is what the running process now uses (with the pool's connect
    timeout, which a reload used to leave as it was), and the routing state is as it was."""
    from router.config import load_config
    from router.process.server import Server

    be = await backend("blue")
    path = tmp_path / "router.yaml"
    cfg = {"listen": "127.0.0.1:0", "timeouts": {"grace": "1s"},
           "apps": {"shop": app_config({"blue": (100, [be.addr])})}}
    path.write_text(yaml.safe_dump(cfg))
    srv = Server(load_config(str(path)), str(tmp_path / "router-state.yaml"))
    await srv.start()
    try:
        state = srv.manager.state
        cfg.update(timeouts={"grace": "1s", "connect": "250ms", "client_idle": "5s"},
                   limits={"max_header": "4KiB"}, passive_health={"failures": 0},
                   sticky={"cookie": "SID"}, apps={})
        path.write_text(yaml.safe_dump(cfg))
        srv.reload()
        ctx = srv.plane.ctx
        assert srv.plane.pool.connect_timeout == 0.25
        assert (ctx.client_idle_timeout, ctx.max_header, ctx.passive.failures) == (5.0, 4096, 0)
        assert srv.health.failures == 0  # the decision too, not only the data plane's count
        assert srv.plane.table.lookup(b"app.test", b"/").cookie_eq == b"SID="  # type: ignore[union-attr]
        assert srv.manager.state is state  # the file has no apps now: nothing else changes
        assert [a.name for a in srv.plane.table.apps.values()] == ["shop"]
    finally:
        await srv.stop()


async def test_notes_are_logged_once_not_at_each_reload_and_worker(backend, router_process):
    """What is normal and does not change -- the connection cap the file-descriptor limit
    imposes, a file whose apps the API has changed since -- is said once, at INFO."""
    blue = await backend("blue")
    cfg = {"limits": {"max_connections": 1_000_000},  # beyond any RLIMIT_NOFILE here
           "apps": {"shop": app_config({"blue": (100, [blue.addr])})}}
    rp = await router_process(cfg, ("--workers", "2"))
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        assert (await api.call("PATCH", "/apps/shop", {"session_sticky": False}))[0] == 200
    for i in range(3):
        rp.proc.send_signal(signal.SIGHUP)
        await wait_log(rp, "reload of", i + 1)
    log = rp.log()
    assert log.count("limits.max_connections 1000000 lowered to") == 1
    assert log.count("differ from the routing state") == 1
    assert f"INFO router: the apps in {rp.config_path} differ from the routing state" in log
