"""The guarded ramp end to end, under continuous load: a real ``router serve`` process (two
worker processes: the counters judged are summed across them), real backends on loopback, four
clients sending requests back to back (bounded in count and time, no cookies: every request is
routed by weight).

The numbers of each run are printed (``pytest -s`` shows them)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import ROOT, RouterProcess, answering, app_config, terminate
from tests.integration.test_admin_api import Api, _awaiting
from tests.load import Load
from tests.ramp.conftest import follow_ramp, history

pytestmark = pytest.mark.slow  # ramps of 1 s steps under load

# Intervals of a second keep the tests short. The latency floor is far above what loopback
# backends take, so that a scheduling hiccup of this shared machine is not judged as the new
# version's latency (tests/unit/test_ramp.py judges latency from tables;
# test_slow_version_rolled_back_for_its_latency below, end to end).
RAMP = {"steps": [5, 25, 50, 100], "interval": "1s", "min_requests": 10,
        "latency_floor": "250ms"}
WORKERS = ("--workers", "2")


def _apps(blue: Any) -> dict[str, Any]:
    return {"apps": {"shop": app_config({"blue": (100, [blue.addr])})}}


async def _release(api: Api, new: Any, ramp: dict[str, Any] = RAMP) -> None:
    status, body, _ = await api.call("POST", "/apps/shop/release",
                                     {"service": "green", "backends": [new.addr]})
    assert status == 201, body
    await _awaiting(api)
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp", ramp)
    assert status == 201, body
    assert body["ramp"]["status"] == "running" and body["ramp"]["step"] == 0


def _steps(entries: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["operation"], e.get("reason")) for e in entries if e["operation"].startswith("ramp")]


async def test_healthy_version_ramped_to_100_percent_with_zero_failed_requests(
        backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process(_apps(blue), WORKERS)
    load = Load(rp.url + "/", max_seconds=90)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        load.start()
        started = time.monotonic()
        await _release(api, green)
        seen = await follow_ramp(api, timeout=60)
        took = time.monotonic() - started
        await load.wait_more(100)  # and traffic at 100 %
        green_at_end = load.by_body.get("green", 0)
        await load.stop()
        status, app, _ = await api.call("GET", "/apps/shop")
        entries = await history(api)
    assert seen.end == "done"
    assert [(step, status) for step, status, _ in seen.steps if step] == [
        (1, "running"), (2, "running"), (3, "running"), (4, "running"), (4, "done")]
    assert load.failed == []
    assert {n: svc["weight"] for n, svc in app["services"].items()} == {"blue": 0, "green": 100}
    assert app["release"]["ramp"]["status"] == "done"
    ramp = _steps(entries)
    assert ramp[0] == ("ramp_start", None)
    assert ramp[1] == ("ramp_step", "the release is ready: first step")
    judged = [r for op, r in ramp[2:] if op == "ramp_step"]
    # Every step judged, the last (100 %) too.
    assert len(judged) == 4 and all(r is not None and ": within bounds: " in r for r in judged)
    assert all(op in ("ramp_step", "ramp_wait") for op, _ in ramp[1:])
    assert blue.requests > 0 and green.requests > 0 and green_at_end > 0
    print(f"\nhealthy ramp: {load.sent} requests, {len(load.failed)} failed, "
          f"{load.by_body}, done in {took:.1f} s, "
          f"{sum(op == 'ramp_wait' for op, _ in ramp)} waits for traffic")


async def test_version_failing_one_request_in_five_is_rolled_back_at_the_first_step(
        backend, flaky, router_process):
    blue, green = await backend("blue"), await flaky("green", every=5)
    rp = await router_process(_apps(blue), WORKERS)
    load = Load(rp.url + "/", max_seconds=90)
    sent_at: dict[int, int] = {}

    async def mark(step: int, status: str) -> None:
        sent_at[step] = load.sent

    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        load.start()
        await _release(api, green)
        seen = await follow_ramp(api, timeout=60, on_step=mark)
        sent_at[-1] = load.sent
        green_after = green.requests
        await load.wait_more(100)  # the old version alone again
        await load.stop()
        status, app, _ = await api.call("GET", "/apps/shop")
        entries = await history(api)
    assert seen.end == "gone" and max(step for step, _, _ in seen.steps) == 1
    assert {n: svc["weight"] for n, svc in app["services"].items()} == {"blue": 100}
    assert app["release"] is None
    assert green.requests == green_after  # nothing reaches it once rolled back
    # Every failed request is one of the new version's 500s, and there are at most as many as
    # its share of the step's traffic (here about a fifth of that: 1 in 5 of its 5 %).
    assert load.failed == ["500 'failed\\n'"] * green.failed and green.failed > 0
    step_traffic = sent_at[-1] - sent_at[1]
    assert len(load.failed) <= 0.05 * step_traffic, (len(load.failed), step_traffic)
    last = entries[-1]
    assert last["operation"] == "ramp_rollback" and last["client"] == "router"
    assert last["changes"] == ["service green deleted", "weights blue 95->100",
                               "release of green rolled back (green deleted)"]
    assert "step 1 (5%)" in last["reason"] and "error rate out of bounds" in last["reason"]
    print(f"\nfailing version: {load.sent} requests, {len(load.failed)} failed "
          f"({green.requests} reached it), {step_traffic} during its step "
          f"(bound {0.05 * step_traffic:.0f}); reason: {last['reason']}")


async def test_slow_version_rolled_back_for_its_latency(backend, flaky, router_process):
    blue, green = await backend("blue"), await flaky("green", delay=0.4)
    rp = await router_process(_apps(blue))
    load = Load(rp.url + "/", clients=6, max_seconds=60)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        load.start()
        await _release(api, green, {**RAMP, "steps": [20, 100], "min_requests": 5,
                                    "latency_floor": "100ms"})
        seen = await follow_ramp(api, timeout=60)
        await load.stop()
        entries = await history(api)
    assert seen.end == "gone" and load.failed == []  # slow, not failing
    last = entries[-1]
    assert last["operation"] == "ramp_rollback"
    # Its requests waiting past the bound count as failed as soon as they do; or, answered,
    # its p99 is out of bounds at the end of the interval.
    assert ("latency out of bounds (more than 2x blue's)" in last["reason"]
            or "waiting over 100 ms" in last["reason"]), last["reason"]


async def _restart(rp: RouterProcess) -> None:
    """Stop the router (SIGTERM) and start it again on the same ports, state and log."""
    terminate(rp.proc, 15)
    assert rp.proc.returncode == 0, rp.log()
    logf = open(rp.log_path, "ab")
    rp.proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config",
                                rp.config_path], cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    await answering(rp.admin_url + "/readyz", rp.proc, rp.log_path, 15)


async def test_ramp_interrupted_by_a_restart_continues(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process(_apps(blue))
    ramp = {**RAMP, "steps": [10, 40, 70, 100]}
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        before = Load(rp.url + "/", max_seconds=60)
        before.start()
        await _release(api, green, ramp)

        assert (await follow_ramp(api, timeout=60, until_step=2)).end == "step"
        await before.stop()
        stopped_at = (await history(api))[-1]["generation"]
        await _restart(rp)
        status, rel, _ = await api.call("GET", "/apps/shop/release")
        assert status == 200 and rel["ramp"]["step"] == 2 and rel["ramp"]["status"] == "running"
        after = Load(rp.url + "/", max_seconds=60)
        after.start()
        seen = await follow_ramp(api, timeout=60)
        await after.stop()
        entries = await history(api)
    assert seen.end == "done"
    assert before.failed == [] and after.failed == []
    steps = [(e["generation"], e["changes"][-1]) for e in entries if e["operation"] == "ramp_step"]
    assert [c.split(" -> ")[1] for _, c in steps] == ["step 1 (10%)", "step 2 (40%)",
                                                      "step 3 (70%)", "step 4 (100%)", "done"]
    # The first two before the restart, the rest by the restarted router.
    assert [gen > stopped_at for gen, _ in steps] == [False, False, True, True, True]
    log = rp.log()
    assert log.count("seeded ") == 1 and log.count("routing state from") == 1  # read back
    print(f"\nrestart: {before.sent} requests before, {after.sent} after, 0 failed; the ramp "
          f"went on from step 2 at generation {stopped_at}")
