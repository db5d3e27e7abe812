"""``routerctl release ramp|pause|resume|abort|preview`` against a real ``router serve``: exit
codes, what they print, and what the admin API says afterwards."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import app_config
from tests.integration.test_admin_api import Api, _awaiting
from tests.integration.test_ctl import ctl
from tests.load import Load
from tests.processes import until

QUICK = ("--interval", "1s", "--max-error-rate", "1%", "--max-latency-ratio", "2",
         "--min-requests", "5", "--latency-floor", "250ms")


async def _released(rp: Any, api: Api, new: Any) -> None:
    status, body, _ = await api.call("POST", "/apps/shop/release",
                                     {"service": "green", "backends": [new.addr]})
    assert status == 201, body
    await _awaiting(api)


async def _ramp_waited(backend: Any, router_process: Any, new: Any,
                       steps: str) -> tuple[Any, Load, dict[str, Any]]:
    """``release ramp --wait`` of ``new`` under load: its result, the load, the app after."""
    blue = await backend("blue")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    load = Load(rp.url + "/", clients=2, max_seconds=60)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        await _released(rp, api, new)
        load.start()
        r = await ctl(rp.admin_url, "release", "ramp", "shop", "--steps", steps, *QUICK,
                      "--wait", timeout=60)
        await load.stop()
        status, app, _ = await api.call("GET", "/apps/shop")
    return r, load, app


async def test_ramp_wait_follows_a_healthy_ramp_to_the_end(backend, router_process):
    r, load, app = await _ramp_waited(backend, router_process, await backend("green"),
                                      "10,50,100")
    assert r.rc == 0, r.err
    assert r.out.startswith("shop: ramp done\n") and "RAMP         done, step 3/3 (100%)" in r.out
    progress = r.err.splitlines()
    assert progress[0].startswith("running: step ")
    assert any(line.startswith("running: step 1/3 (10%), ") and "green 0.0% errors of " in line
               and "; blue 0.0% errors of " in line for line in progress), progress
    assert progress[-1] == "done: step 3/3 (100%)"
    assert load.failed == []
    assert {n: svc["weight"] for n, svc in app["services"].items()} == {"blue": 0, "green": 100}


async def test_ramp_wait_says_why_it_rolled_back(backend, flaky, router_process):
    r, _, app = await _ramp_waited(backend, router_process, await flaky("green", every=2),
                                   "20,100")
    assert r.rc == 1, (r.out, r.err)
    assert app["release"] is None
    last = r.err.splitlines()[-1]
    # Judged as soon as it is out of bounds, before the interval ends if it is so already.
    assert last.startswith("routerctl: shop: the ramp rolled green back: step 1 (20%) ")
    assert "error rate out of bounds" in last


async def test_pause_resume_abort_status_and_preview(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])},
                                                           preview={"header": "X-Preview"})}})
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        await _released(rp, api, green)
        # No traffic: the first step is taken, then nothing can be judged.
        r = await ctl(rp.admin_url, "release", "ramp", "shop", "--steps", "5,100",
                      "--interval", "1h")
        assert r.rc == 0 and r.out.startswith("shop: ramp started\n"), r.err
        assert "STEPS        5%, 100% every 1h" in r.out

        async def at_step_1() -> bool:
            return (await api.call("GET", "/apps/shop/release"))[1]["ramp"]["step"] == 1
        await until(at_step_1, 5, "the ramp at step 1")
        r = await ctl(rp.admin_url, "weights", "shop", "green=50")
        assert r.rc == 1 and "the ramp of green sets the weights of green" in r.err
        r = await ctl(rp.admin_url, "release", "pause", "shop")
        assert r.rc == 0 and "RAMP         paused, step 1/2 (5%)" in r.out, r.err
        assert (await ctl(rp.admin_url, "weights", "shop", "green=50")).rc == 0  # by hand now
        r = await ctl(rp.admin_url, "release", "resume", "shop")
        assert r.rc == 0 and "RAMP         running, step 1/2 (5%)" in r.out
        status = await ctl(rp.admin_url, "release", "status", "shop")
        assert "RAMP         running, step 1/2 (5%)" in status.out
        assert (await api.call("GET", "/apps/shop"))[1]["services"]["green"]["weight"] == 5
        r = await ctl(rp.admin_url, "release", "preview", "shop", "--ttl", "5m")
        assert r.rc == 0, r.err
        lines = r.out.splitlines()
        assert lines[0].startswith("shop: preview of green until ")
        assert lines[2].startswith(f"  http://app.test:{rp.port}/?router-preview=")
        assert lines[3].startswith("or send the cookie: CONTAINERID_PREVIEW=")
        assert lines[4] == "or the header: X-Preview: green"
        r = await ctl(rp.admin_url, "release", "abort", "shop")
        assert r.rc == 0 and "RAMP" not in r.out and "shop: ramp aborted" in r.out
        app = (await api.call("GET", "/apps/shop"))[1]
        assert {n: svc["weight"] for n, svc in app["services"].items()} == {"blue": 100, "green": 0}
        assert app["release"]["ramp"] is None
        r = await ctl(rp.admin_url, "release", "resume", "shop")
        assert r.rc == 1 and "409 conflict: cannot resume the ramp of green: the release has " \
                             "no ramp" in r.err


async def test_bad_command_lines_send_nothing(backend, router_process):
    blue = await backend("blue")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    for args, says in [(("--steps", "5,x"), "--steps: a list of percentages"),
                       (("--steps", "5", "--max-error-rate", "2"), "--max-error-rate:"),
                       (("--steps", "5", "--quantile", "high"), "--quantile:"),
                       (("--steps", "5", "--min-requests", "0"), "--min-requests")]:
        r = await ctl(rp.admin_url, "release", "ramp", "shop", *args)
        assert r.rc == 2 and says in r.err, (args, r.err)
    r = await ctl(rp.admin_url, "release", "ramp", "shop", "--steps", "5,100")
    assert r.rc == 1 and "404 not_found: app 'shop' has no open release" in r.err
    async with aiohttp.ClientSession() as s:
        await _released(rp, Api(s, rp.admin_port), await backend("green"))
    r = await ctl(rp.admin_url, "release", "ramp", "shop", "--steps", "50,25")
    assert r.rc == 1 and "422 invalid: the steps must increase (got [50, 25]) (field: steps)" \
        in r.err, r.err


def test_export_keeps_the_preview_setting():
    from admin.ctl.state import exported_app
    from router.config import PreviewConfig, config_from_dict

    app = {"name": "shop", "routes": ["shop.test"], "session_sticky": True,
           "drain_timeout": None, "preview": {"header": "X-Preview", "value": None},
           "services": {"web": {"weight": 100, "backends": ["10.0.0.1:80"],
                                "health_check": None}}}
    out = exported_app(app)
    assert out["preview"] == {"header": "X-Preview"}
    assert config_from_dict({"apps": {"shop": out}}).apps[0].preview == PreviewConfig("X-Preview")
    assert "preview" not in exported_app({**app, "preview": None})
