"""A router replaced by a successor (``--takeover``) or upgraded in place (SIGUSR2) under
keep-alive load that never retries: 0 failed, 0 connections closed, nothing answered twice,
the state and the sticky secret unchanged (docs/upgrade.md). ``python -m benchmarks.upgrade``
runs 20 of each beside nginx and HAProxy."""

from __future__ import annotations

import pytest

from tests.reliability import lifecycle as T

pytestmark = pytest.mark.slow  # takeovers, upgrades and stops of real routers under load

# Three of each per worker count keeps the test under a minute on a loaded 2-core machine.
COUNT = 3


@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_takeovers_and_upgrades_under_load(workers):
    r = await T.takeovers_under_load(COUNT, COUNT, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}. {r.notes}")
    assert r.problems == []
    assert r.failed == 0


@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_sigterm_loses_no_request_on_open_connections(workers):
    r = await T.stops_under_load(COUNT, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}. {r.notes}")
    assert r.problems == []
    assert r.failed == 0
