"""A release must not turn into an outage because the new version died: with every weighted
service unable to serve, a service at weight 0 that can serves (docs/routing.md, "The
fallback"); and repeated backend warnings are summarised, not logged per request."""

from __future__ import annotations

import logging

import aiohttp

from tests.conftest import app_config, router_config
from tests.load import Load


async def _metric(srv, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{srv.admin_port}/metrics") as r:
            text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{")
               and all(f'{k}="{v}"' in line for k, v in labels.items()))


async def test_the_new_version_killed_under_load_falls_back_to_the_old_with_no_failure(backend, router):
    blue, green = await backend("blue"), await backend("green")
    # The release moved all the weight to green; blue, the old version, is at weight 0.
    srv = await router(router_config({"shop": app_config(
        {"blue": (0, [blue.addr]), "green": (100, [green.addr])}, sticky=False)},
        passive_health={"failures": 3, "cooldown": "30s"}))
    load = Load(f"http://127.0.0.1:{srv.port}/", clients=4, max_requests=3000, max_seconds=30)
    load.start()
    await load.wait_more(300)
    assert blue.requests == 0  # weight 0: nothing while green serves
    await green.runner.cleanup()  # the new version's only backend dies
    await load.wait_more(600)
    await load.stop()
    assert load.failed == [], load.failed[:5]
    assert load.by_body.get("blue", 0) >= 500  # every request after the death went to blue
    fallback = await _metric(srv, "router_fallback_requests_total", app="shop", service="blue")
    assert fallback == blue.requests  # each one counted
    # The weights did not change: green is still the one the operator chose.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{srv.admin_port}/api/v1/apps/shop") as r:
            app = await r.json()
    assert {n: svc["weight"] for n, svc in app["services"].items()} == {"blue": 0, "green": 100}


async def test_all_weights_zero_is_no_fallback(backend, router):
    blue = await backend("blue")
    srv = await router(router_config({"shop": app_config({"blue": (0, [blue.addr])})}))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{srv.port}/", headers={"Host": "app.test"}) as r:
            assert (r.status, await r.text()) == (503, "all weights of this app are 0\n")
    assert blue.requests == 0


async def test_a_backend_down_is_one_warning_and_a_summary_not_one_per_request(backend, router, caplog):
    blue = await backend("blue")
    dead = "127.0.0.1:9"  # discard port: nothing listens on loopback
    srv = await router(router_config({"shop": app_config(
        {"blue": (1, [blue.addr]), "gone": (1, [dead])}, sticky=False)},
        passive_health={"failures": 0}))  # never ejected: every other request tries it
    caplog.set_level(logging.WARNING, logger="router.error")
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(f"http://127.0.0.1:{srv.port}/", headers={"Host": "app.test"}) as r:
                assert r.status == 200  # retried on blue
    lines = [r.getMessage() for r in caplog.records
             if r.name == "router.error" and dead in r.getMessage()]
    # One line at once; the rest summarised when the window closes (not within this test).
    assert len(lines) == 1 and "cannot connect" in lines[0], lines
    throttled = srv.ctx.throttled
    window = next(w for k, w in throttled._windows.items() if k[0] == dead)
    assert window[1] == 99  # the 99 others, counted for the summary line
    throttled._close_window((dead, "connect"), window[0])
    summary = [r.getMessage() for r in caplog.records if "more like it" in r.getMessage()]
    assert summary == [f"backend {dead}: cannot connect: " + lines[0].split("cannot connect: ", 1)[1]
                       + " (99 more like it in 10 s)"]
