"""The promise: a whole blue-green release under continuous traffic fails not one request."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import aiohttp
import yaml

from router.control.state import State
from tests.conftest import app_config
from tests.integration.test_admin_api import Api, _awaiting
from tests.load import Load
from tests.processes import until


async def _step(api: Api, load: Load, method: str, path: str, body=None) -> dict:
    status, out, _ = await api.call(method, path, body)
    assert status in (200, 201), (path, status, out)
    await load.wait_more(80)  # traffic between steps
    return out


async def test_release_confirm_under_load_zero_failures(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    load = Load(rp.url + "/")
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        # A sticky client pinned to blue before the release.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as sticky:
            async with sticky.get(rp.url + "/", headers={"Host": "app.test"}) as r:
                assert await r.text() == "blue\n"
            load.start()
            await _step(api, load, "POST", "/apps/shop/release",
                        {"service": "green", "backends": [green.addr]})
            await _awaiting(api)
            await _step(api, load, "PUT", "/apps/shop/weights", {"green": 100})  # 100/100
            async with sticky.get(rp.url + "/", headers={"Host": "app.test"}) as r:
                assert await r.text() == "blue\n"  # pinned
            await _step(api, load, "PUT", "/apps/shop/weights", {"blue": 0})  # 0/100
            async with sticky.get(rp.url + "/", headers={"Host": "app.test"}) as r:
                assert await r.text() == "blue\n"  # drained, not dropped
            await _step(api, load, "PUT", "/apps/shop/weights", {"blue": 50, "green": 50})  # both
            await _step(api, load, "PUT", "/apps/shop/weights", {"blue": 0, "green": 100})
            await _step(api, load, "POST", "/apps/shop/release/confirm")
            await load.stop()
            # The pinned client follows the release in the very next response.
            async with sticky.get(rp.url + "/", headers={"Host": "app.test"}) as r:
                assert await r.text() == "green\n"
                assert "CONTAINERID=" in r.headers["Set-Cookie"]
            async with sticky.get(rp.url + "/", headers={"Host": "app.test"}) as r:
                assert await r.text() == "green\n" and "Set-Cookie" not in r.headers
    assert load.failed == []
    assert load.sent > 300 and load.by_body["blue"] > 0 and load.by_body["green"] > 0
    assert sum(load.by_body.values()) == load.sent


async def test_release_rollback_under_load_zero_failures(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    load = Load(rp.url + "/")
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        load.start()
        await _step(api, load, "POST", "/apps/shop/release",
                    {"service": "green", "backends": [green.addr]})
        await _awaiting(api)
        await _step(api, load, "PUT", "/apps/shop/weights", {"blue": 0, "green": 100})
        app = await _step(api, load, "POST", "/apps/shop/release/rollback")
        assert {n: x["weight"] for n, x in app["services"].items()} == {"blue": 100}
        await load.stop()
    assert load.failed == []
    assert load.sent > 200 and load.by_body["green"] > 0


async def test_sigkill_during_admin_writes_leaves_old_or_new_state(backend, router_process):
    blue = await backend("blue")
    rp = await router_process({"apps": {"shop": app_config({"blue": (100, [blue.addr])})}})
    store = os.path.join(os.path.dirname(rp.config_path), "router-state.yaml")
    acked = 0

    async def writer(api: Api) -> None:
        nonlocal acked
        for i in range(10_000):
            try:
                # 1..100: every weight 0 would be refused (409) and break the count.
                status, body, _ = await api.call("PUT", "/apps/shop/weights", {"blue": 1 + i % 100})
            except aiohttp.ClientError:
                return
            if status == 200:
                acked = max(acked, body["generation"])

    async with aiohttp.ClientSession() as s:
        task = asyncio.ensure_future(writer(Api(s, rp.admin_port)))
        await until(lambda: acked >= 2, 10, "two writes acknowledged")
        await asyncio.sleep(random.uniform(0, 1))  # time is the subject: a kill at any moment
        rp.proc.send_signal(signal.SIGKILL)
        rp.proc.wait(10)
        await asyncio.wait_for(task, 10)
    with open(store) as f:
        data = yaml.safe_load(f)
    state = State.from_dict(data, store)
    # Every acknowledged write is on disk; at most the one in flight went further.
    assert state.generation in (acked, acked + 1)
    assert state.app("shop").services[0].weight == 1 + (state.generation - 2) % 100
