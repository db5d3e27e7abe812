"""The guarded ramp with replicas sharing one etcd: exactly one drives it (the holder of the
store's lease, router_ramp_driver 1), the other follows the stored state; when the driver dies
the other takes the lease and carries the ramp on from the stored step."""

from __future__ import annotations

import signal

import aiohttp
import pytest

from router.control.rampdriver import LEASE_TTL
from tests.conftest import app_config
from tests.integration.test_admin_api import Api
from tests.integration.test_etcd import _replicas, etcd  # noqa: F401  (etcd: a fixture)
from tests.load import Load
from tests.processes import until
from tests.ramp.conftest import follow_ramp, history, metric

pytestmark = pytest.mark.slow  # a ramp of 1 s steps, and a lease that must expire


async def _ready(api: Api) -> bool:
    status, release, _ = await api.call("GET", "/apps/shop/release")
    return status == 200 and release["status"] == "awaiting_confirmation"


async def _has_ramp(api: Api) -> bool:
    return (await api.call("GET", "/apps/shop/release/ramp"))[0] == 200


RAMP = {"steps": [10, 30, 50, 70, 100], "interval": "1s", "min_requests": 10,
        "latency_floor": "250ms"}


async def test_one_replica_drives_and_another_takes_over_when_it_dies(
        backend, router_process, etcd):  # noqa: F811
    blue, green = await backend("blue"), await backend("green")
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config(
        {"blue": (100, [blue.addr])})})
    loads = [Load(rp.url + "/", clients=2, max_seconds=90) for rp in (a, b)]
    async with aiohttp.ClientSession() as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)
        for load in loads:
            load.start()
        assert (await api_a.call("POST", "/apps/shop/release",
                                 {"service": "green", "backends": [green.addr]}))[0] == 201
        await until(lambda: _ready(api_b), 5, "the release ready on the other replica")
        assert (await api_b.call("POST", "/apps/shop/release/ramp", RAMP))[0] == 201
        # The other replica learns of the ramp through etcd's watch, a moment later.
        await until(lambda: _has_ramp(api_a), 5, "the ramp seen by the other replica")

        assert (await follow_ramp(api_a, timeout=60, until_step=2)).end == "step"
        drivers = [await metric(s, rp.admin_url, "router_ramp_driver ") for rp in (a, b)]
        assert sorted(drivers) == [0.0, 1.0], drivers
        driver, follower = (a, b) if drivers[0] == 1.0 else (b, a)
        line = 'router_ramp_decisions_total{app="shop",decision="advance"}'
        assert (await metric(s, driver.admin_url, line) or 0) >= 2
        assert await metric(s, follower.admin_url, line) == 0  # it decided nothing
        # Both replicas see the same ramp, and the progress says who drives.
        for rp, driving in ((driver, True), (follower, False)):
            status, progress, _ = await Api(s, rp.admin_port).call("GET",
                                                                   "/apps/shop/release/ramp")
            assert status == 200 and progress["driving"] is driving
            assert progress["ramp"]["step"] >= 2

        # The driver dies without a word: its lease runs out and the other one takes over.
        driver.proc.send_signal(signal.SIGKILL)
        driver.proc.wait(10)
        survivor = Api(s, follower.admin_port)
        seen = await follow_ramp(survivor, timeout=LEASE_TTL + 30)
        assert await metric(s, follower.admin_url, "router_ramp_driver ") == 1.0
        took_over = await metric(s, follower.admin_url, line) or 0
        for load in loads:
            await load.stop()
        entries = await history(survivor)
    assert seen.end == "done" and took_over >= 1, (seen, took_over, entries[-2:])
    steps = [e["changes"][-1] for e in entries if e["operation"] == "ramp_step"]
    # Every step once: no decision made twice, whoever made it.
    # (The last judged within bounds: "running -> done".)
    assert [c.split(" -> ")[1] for c in steps] == ["step 1 (10%)", "step 2 (30%)", "step 3 (50%)",
                                                  "step 4 (70%)", "step 5 (100%)", "done"]
    survivor_load = loads[0] if follower is a else loads[1]
    assert survivor_load.failed == []
    print(f"\netcd: driver killed at step 2; the survivor decided {took_over:.0f} steps; "
          f"{survivor_load.sent} requests through it, 0 failed")
