"""The routing-state store failing under a release: a rollback decided while the store cannot
be written takes effect at once; no acknowledged change is lost when etcd loses its data."""

from __future__ import annotations

import os

import pytest

from tests.integration.test_etcd import ETCD
from tests.reliability import store as S

pytestmark = pytest.mark.slow  # ramps, outages and etcd restarts, seconds each


@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_ramp_rollback_while_disk_full(workers):
    if os.geteuid() != 0:
        pytest.skip("a full disk is a tmpfs this test mounts: needs root")
    _check(await S.ramp_while_disk_full(1, workers))


@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_ramp_rollback_while_etcd_down(workers):
    if ETCD is None:
        pytest.skip("etcd is not installed")
    _check(await S.ramp_while_etcd_down(1, workers))


async def test_etcd_emptied_under_a_replica_that_was_behind():
    if ETCD is None:
        pytest.skip("etcd is not installed")
    _check(await S.etcd_emptied_lagging_replica(1, 1))


def _check(r: S.Result) -> None:
    print(f"\n{r.scenario} (--workers {r.workers}): sent {r.sent}, failed {r.failed}, "
          f"expected {r.expected}. {r.notes}")
    assert r.problems == []
    assert r.failed == r.expected


async def test_an_operators_rollback_and_abort_while_the_disk_is_full():
    """Through the admin API of the real router: a rollback asked while the state disk is full
    is in effect at once (202), shown as not stored, and stored once there is room; an abort
    likewise; other changes get 503 meanwhile."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is a tmpfs this test mounts: needs root")
    await S.operator_moves_while_disk_full()
