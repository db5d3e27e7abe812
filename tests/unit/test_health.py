"""The health objects without sockets: what a data plane reports, what the router decides."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from router.config import PassiveHealthConfig, config_from_dict
from router.counters import BUCKETS, ServiceStats
from router.health import (HEALTHY, STALL_FACTOR, STALL_MIN, UNCHECKED, UNHEALTHY, Health,
                           PassiveHealth, stall_limit)
from router.sticky import TokenCodec
from router.table import TableBuilder

A, B, C = ("shop", "web", "10.0.0.1:80"), ("shop", "web", "10.0.0.2:80"), ("shop", "v2", "10.0.0.3:80")


def _apps() -> tuple:
    return config_from_dict({"apps": {"shop": {"routes": ["shop.test"], "services": {
        "web": {"weight": 1, "backends": [A[2], B[2]]},
        "v2": {"weight": 0, "backends": [C[2]]}}}}}).apps


class Recorder:
    def __init__(self) -> None:
        self.notes: list[tuple] = []

    def failure(self, key, run):  # type: ignore[no-untyped-def]
        self.notes.append(("failure", key, run))

    def success(self, key):  # type: ignore[no-untyped-def]
        self.notes.append(("success", key))

    def stalled(self, key, reason):  # type: ignore[no-untyped-def]
        self.notes.append(("stalled", key, reason))


class Waiting:
    """What the sweep reads of an exchange waiting for its response head."""

    def __init__(self, backend, stats: ServiceStats) -> None:  # type: ignore[no-untyped-def]
        self.backend = backend
        self.service = SimpleNamespace(stats=stats)


def _plane(failures: int = 3) -> tuple[PassiveHealth, Recorder, dict]:
    rec = Recorder()
    builder = TableBuilder(TokenCodec(b"k" * 32, 1800, 28800))
    builder.build(_apps(), 1)
    passive = PassiveHealth(rec, failures)
    passive.follow(builder.all_backends(), {})
    return passive, rec, {be.ident: be for be in builder.all_backends()}


def test_passive_reports_failures_in_a_row_and_first_successes():
    passive, rec, be = _plane()
    assert set(passive.watching) == set(be.values())  # unchecked: the first response matters
    passive.success(be[A])
    passive.success(be[A])  # known to work: not reported again
    passive.failure(be[B])
    passive.failure(be[B])
    passive.success(be[B])  # the run ends
    passive.failure(be[B])
    assert rec.notes == [("success", A), ("failure", B, 1), ("failure", B, 2), ("success", B),
                         ("failure", B, 1)]
    assert passive.watching == {be[B]: 1, be[C]: 0}


def test_passive_follows_the_decided_states():
    passive, rec, be = _plane()
    passive.failure(be[A])
    passive.success(be[C])
    passive.follow(be.values(), {A: HEALTHY, B: UNHEALTHY, C: HEALTHY})
    # A keeps its run; B (ejected) starts afresh when back; C is known to work.
    assert passive.watching == {be[A]: 1}
    passive.follow([be[A], be[B]], {A: HEALTHY, B: UNCHECKED})
    assert passive.watching == {be[A]: 1, be[B]: 0}


def test_passive_off_still_learns_what_works():
    passive, rec, be = _plane(failures=0)
    passive.failure(be[A])
    passive.success(be[A])
    assert rec.notes == [("success", A)]


def test_stall_limit_from_the_services_latency():
    st = ServiceStats()
    assert stall_limit(st) == STALL_MIN  # nothing known yet: the floor
    for _ in range(99):
        st.observe(0.004)
    st.observe(0.3)
    assert stall_limit(st) == max(STALL_MIN, STALL_FACTOR * 0.005)
    slow = ServiceStats()
    for _ in range(100):
        slow.observe(0.6)
    assert stall_limit(slow) == STALL_FACTOR * 0.75
    long_poll = ServiceStats()
    for _ in range(100):
        long_poll.observe(30.0)  # beyond the last bucket: never judged stalled
    assert stall_limit(long_poll) is None
    assert BUCKETS[-1] < 30.0


def test_sweep_reports_a_backend_stuck_with_nothing_coming_back():
    passive, rec, be = _plane()
    stuck = Waiting(be[A], ServiceStats())
    timeout = 60.0
    waiting = {stuck: 100.0 + timeout}  # sent at t=100
    passive.sweep(waiting, timeout, 100.5)
    passive.sweep(waiting, timeout, 101.9)
    assert rec.notes == []
    passive.sweep(waiting, timeout, 102.6)  # waited > 2 s and nothing completed for > 2 s
    assert rec.notes == [("stalled", A, "ejected: 1 request waiting over 2 s with no response")]


def test_sweep_spares_a_backend_that_still_answers():
    passive, rec, be = _plane()
    slow = Waiting(be[A], ServiceStats())
    waiting = {slow: 100.0 + 60}
    passive.sweep(waiting, 60, 100.5)
    be[A].stats.codes[200] = 1  # another request to A completed meanwhile
    passive.sweep(waiting, 60, 102.6)
    passive.sweep(waiting, 60, 104.0)
    assert rec.notes == []
    passive.sweep(waiting, 60, 104.7)  # then nothing for over 2 s
    assert [n[0] for n in rec.notes] == ["stalled"]
    # A response timeout that ends it first: left to the timeout.
    rec.notes.clear()
    passive.sweep(waiting, 1.5, 110.0)
    assert rec.notes == []


async def test_health_decides_ejects_and_readmits():
    changes: list[dict] = []
    health = Health(lambda: changes.append(health.states()),
                    PassiveHealthConfig(failures=3, cooldown=0.05), asyncio.get_running_loop())
    health.update(_apps())
    assert health.states() == {A: UNCHECKED, B: UNCHECKED, C: UNCHECKED}
    health.success(A)
    assert health.state(A) == (HEALTHY, None)
    # Failures from two data planes count together.
    assert health.failure(B, 1) is False
    assert health.failure(B, 1) is False
    assert health.failure(B, 2) is True
    assert health.state(B) == (UNHEALTHY, "ejected: 3 requests failed in a row")
    assert changes == [{A: HEALTHY, B: UNHEALTHY, C: UNCHECKED}]
    # The last backend of its service that takes requests stays.
    for _ in range(5):
        assert health.failure(A, 5) is False
    assert health.failure(C, 3) is False and health.state(C) == (UNCHECKED, None)
    assert health.stalled(C, "stuck") is False
    await asyncio.sleep(0.1)
    # Back after the cooldown, on probation: unchecked until something shows it works.
    assert health.state(B) == (UNCHECKED, None)
    assert changes[-1] == {A: HEALTHY, B: UNCHECKED, C: UNCHECKED}
    health.worked(C)
    assert health.state(C) == (HEALTHY, None)
    health.stop()


async def test_a_success_ends_the_run():
    health = Health(lambda: None, PassiveHealthConfig(failures=3, cooldown=10),
                    asyncio.get_running_loop())
    health.update(_apps())
    health.failure(A, 1)
    health.failure(A, 2)
    health.success(A)
    assert health.failure(A, 1) is False and health.state(A) == (HEALTHY, None)
    health.stop()
