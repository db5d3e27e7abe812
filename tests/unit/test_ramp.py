"""The guarded ramp's pure parts: the transition table and the release's moves
(router.release), the settings, share -> weights, the quantile, the judgement from tables, and
the planner's windows on a clock the test sets (router.ramp)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from router.counters import BUCKETS, BackendStats, ServiceStats, Stats
from router.ramp import Counts, Leadership, Measure, Planner, counts, judge, quantile
from router.release import (
    RAMP_TRANSITIONS,
    InvalidRamp,
    Ramp,
    RampAction,
    RampSettings,
    RampStatus,
    Release,
    ReleaseConflict,
    Status,
    ramp_settings,
    share_weights,
)

RA, RS = RampAction, RampStatus
T0 = datetime(2026, 11, 26, 14, 33, 18, tzinfo=timezone.utc)

# The ramp's lifecycle written out once more, independently of RAMP_TRANSITIONS: every pair.
EXPECTED: dict[tuple[RampStatus | None, RampAction], RampStatus | None | str] = {
    **{(s, a): "refused" for s in (None, *RS) for a in RA},
    (None, RA.START): RS.RUNNING,
    (RS.RUNNING, RA.ADVANCE): RS.RUNNING,
    (RS.RUNNING, RA.FINISH): RS.DONE,
    (RS.RUNNING, RA.HOLD): RS.RUNNING,
    (RS.RUNNING, RA.PAUSE): RS.PAUSED,
    (RS.RUNNING, RA.RESUME): RS.RUNNING,
    (RS.RUNNING, RA.ABORT): None,
    (RS.RUNNING, RA.FAIL): None,
    (RS.PAUSED, RA.PAUSE): RS.PAUSED,
    (RS.PAUSED, RA.RESUME): RS.RUNNING,
    (RS.PAUSED, RA.ABORT): None,
    (RS.DONE, RA.START): RS.RUNNING,
    (RS.DONE, RA.ABORT): None,
}

SETTINGS = RampSettings(steps=(5, 25, 50, 100), interval=1.0, min_requests=20, max_waits=2)


def release(ramp: Ramp | None = None, status: Status = Status.AWAITING_CONFIRMATION,
            **kw: Any) -> Release:
    return Release(old=kw.get("old", ("web",)), new="web-v2", status=status,
                   started_at="2026-11-26T14:33:18Z",
                   old_weights=kw.get("old_weights", (("web", 100),)), ramp=ramp)


def ramp(status: RampStatus = RS.RUNNING, step: int = 1, waits: int = 0,
         settings: RampSettings = SETTINGS) -> Ramp:
    return Ramp(settings, status, step, waits, "2026-11-26T14:33:18Z")


def test_table_is_the_expected_lifecycle() -> None:
    got = {(s, a): RAMP_TRANSITIONS[s].get(a, "refused") for s in (None, *RS) for a in RA}
    assert got == EXPECTED


@pytest.mark.parametrize("status,action", [k for k, v in EXPECTED.items()])
def test_every_move_of_the_table(status: RampStatus | None, action: RampAction) -> None:
    r = release(None if status is None else ramp(status, step=4 if status is RS.DONE else 1))
    # From step 3 of 4 the next move is FINISH; from step 1 it is ADVANCE.
    if action is RA.FINISH and r.ramp is not None and status is RS.RUNNING:
        r = replace(r, ramp=replace(r.ramp, step=3))
    expected = EXPECTED[(status, action)]
    if expected == "refused":
        with pytest.raises(ReleaseConflict):
            r.apply_ramp(action, T0, settings=SETTINGS)
        return
    after = r.apply_ramp(action, T0, settings=SETTINGS, reason="why")
    if action is RA.FAIL:
        assert after is None  # the release is rolled back
    elif expected is None:
        assert after is not None and after.ramp is None
    else:
        assert after is not None and after.ramp is not None and after.ramp.status is expected


def test_moves_that_add_weight_need_a_ready_release() -> None:
    r = release(ramp(step=1), status=Status.IN_PROGRESS)
    with pytest.raises(ReleaseConflict, match="in_progress: wait until every backend of web-v2"):
        r.apply_ramp(RA.ADVANCE, T0)
    # Everything else works on an in_progress release.
    for action in (RA.HOLD, RA.PAUSE, RA.ABORT):
        assert r.apply_ramp(action, T0) is not None
    assert r.apply_ramp(RA.FAIL, T0) is None


def test_steps_count_up_and_the_last_one_finishes() -> None:
    r = release().apply_ramp(RA.START, T0, settings=SETTINGS)
    assert r is not None and r.ramp is not None
    shares = []
    for step in range(4):
        assert r.ramp is not None
        move = r.ramp.next_move()
        assert move is (RA.FINISH if step == 3 else RA.ADVANCE)
        with pytest.raises(ValueError):  # the other one is a mistake of the caller
            r.apply_ramp(RA.ADVANCE if move is RA.FINISH else RA.FINISH, T0)
        r = r.apply_ramp(move, T0, reason=f"step {step}")
        assert r is not None and r.ramp is not None
        shares.append((r.ramp.step, r.ramp.share, r.ramp.status, r.ramp.reason))
    assert shares == [(1, 5, RS.RUNNING, "step 0"), (2, 25, RS.RUNNING, "step 1"),
                      (3, 50, RS.RUNNING, "step 2"), (4, 100, RS.DONE, "step 3")]


def test_hold_counts_waits_and_a_step_or_resume_clears_them() -> None:
    r = release(ramp(step=2))
    for _ in range(3):
        r = r.apply_ramp(RA.HOLD, T0)  # type: ignore[assignment]
    assert r.ramp is not None and (r.ramp.step, r.ramp.waits) == (2, 3)
    paused = r.apply_ramp(RA.PAUSE, T0, reason="thin")
    assert paused is not None and paused.ramp is not None
    assert (paused.ramp.status, paused.ramp.waits, paused.ramp.reason) == (RS.PAUSED, 0, "thin")
    assert paused.apply_ramp(RA.PAUSE, T0) is paused  # idempotent: no change at all
    resumed = paused.apply_ramp(RA.RESUME, T0)
    assert resumed is not None and resumed.ramp is not None
    assert (resumed.ramp.status, resumed.ramp.step) == (RS.RUNNING, 2)
    assert resumed.apply_ramp(RA.RESUME, T0) is resumed


def test_readiness_moves_keep_the_ramp() -> None:
    from router.release import Action
    r = release(ramp(step=2))
    back = r.apply(Action.NOT_READY)
    assert back is not None and back.ramp == r.ramp and back.status is Status.IN_PROGRESS


# -- settings ---------------------------------------------------------------------------------
def test_settings_defaults_and_durations() -> None:
    s = ramp_settings({"steps": [5, 25, 50, 100]})
    assert s == RampSettings((5, 25, 50, 100), 60.0, 0.01, 2.0, 0.99, 0.01, 20, 10)
    s = ramp_settings({"steps": [100], "interval": "1m30s", "latency_floor": "50ms",
                       "max_error_rate": 0, "max_latency_ratio": 1, "quantile": 0.5,
                       "min_requests": 1, "max_waits": 0})
    assert (s.interval, s.latency_floor, s.max_error_rate, s.max_latency_ratio) == (90.0, 0.05,
                                                                                    0.0, 1.0)


@pytest.mark.parametrize("body,field", [
    ({}, "steps"),
    ({"steps": []}, "steps"),
    ({"steps": "5,25"}, "steps"),
    ({"steps": [5, 5]}, "steps"),
    ({"steps": [50, 25]}, "steps"),
    ({"steps": [0, 100]}, "steps"),
    ({"steps": [5, 101]}, "steps"),
    ({"steps": [True]}, "steps"),
    ({"steps": [5.0]}, "steps"),
    ({"steps": list(range(1, 23))}, "steps"),
    ({"steps": [5], "interval": "0s"}, "interval"),
    ({"steps": [5], "interval": "2d"}, "interval"),
    ({"steps": [5], "interval": "10"}, "interval"),
    ({"steps": [5], "interval": -1}, "interval"),
    ({"steps": [5], "max_error_rate": 1.5}, "max_error_rate"),
    ({"steps": [5], "max_error_rate": "1%"}, "max_error_rate"),
    ({"steps": [5], "max_error_rate": float("nan")}, "max_error_rate"),
    ({"steps": [5], "max_latency_ratio": 0.5}, "max_latency_ratio"),
    ({"steps": [5], "max_latency_ratio": True}, "max_latency_ratio"),
    ({"steps": [5], "quantile": 1}, "quantile"),
    ({"steps": [5], "min_requests": 0}, "min_requests"),
    ({"steps": [5], "min_requests": 1.5}, "min_requests"),
    ({"steps": [5], "max_waits": -1}, "max_waits"),
    ({"steps": [5], "latency_floor": "soon"}, "latency_floor"),
    ({"steps": [5], "confirm": True}, "confirm"),
])
def test_bad_settings_name_their_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRamp) as e:
        ramp_settings(body)
    assert e.value.field == field and "got" in str(e.value)


def test_stored_ramp_round_trips_and_is_checked() -> None:
    r = ramp(RS.RUNNING, step=2, waits=1)
    r = replace(r, reason="because")
    d = r.to_dict()
    assert d["share"] == 25 and d["status"] == "running"
    assert Ramp.from_dict(d) == r
    rel = release(r)
    assert Release.from_dict(rel.to_dict()) == rel
    legacy = rel.to_dict()
    del legacy["ramp"]  # a state stored before there were ramps
    assert Release.from_dict(legacy).ramp is None
    for bad, where in [({**d, "step": 5}, "ramp.step"), ({**d, "share": 50}, "ramp.share"),
                       ({**d, "status": "done"}, "ramp.step"),
                       ({**d, "status": "failed"}, "ramp.status"),
                       ({**d, "since": "yesterday"}, "ramp.since"),
                       ({**d, "waits": -1}, "ramp.waits"), ({**d, "steps": [9, 1]}, "ramp.steps"),
                       ({k: v for k, v in d.items() if k != "step"}, "ramp.step")]:
        with pytest.raises(ValueError, match=where):
            Ramp.from_dict(bad)


@pytest.mark.parametrize("old,share,expected", [
    ((("web", 100),), 5, {"web": 95, "web-v2": 5}),
    ((("web", 100),), 100, {"web": 0, "web-v2": 100}),
    ((("a", 100), ("b", 100)), 5, {"a": 48, "b": 48, "web-v2": 5}),
    ((("a", 30), ("b", 10)), 50, {"a": 38, "b": 12, "web-v2": 50}),
    ((("a", 100), ("b", 0)), 25, {"a": 75, "b": 0, "web-v2": 25}),
])
def test_share_weights_keep_the_old_proportions(old: tuple[tuple[str, int], ...], share: int,
                                                expected: dict[str, int]) -> None:
    assert share_weights(old, "web-v2", share) == expected


# -- measurements -----------------------------------------------------------------------------
def hist(**at: int) -> tuple[int, ...]:
    """Buckets with ``n`` requests at bound ``b``: hist(b0_005=10) -> 10 in the 5 ms bucket."""
    buckets = [0] * (len(BUCKETS) + 1)
    for name, n in at.items():
        bound = float(name[1:].replace("_", "."))
        buckets[BUCKETS.index(bound) if bound in BUCKETS else len(BUCKETS)] += n
    return tuple(buckets)


@pytest.mark.parametrize("q,buckets,expected", [
    (0.99, hist(b0_005=100), 0.00495),          # inside the first bucket, from 0
    (0.5, hist(b0_005=50, b0_01=50), 0.005),      # the bound between two buckets
    (0.99, hist(b0_005=90, b0_01=10), 0.0095),    # 9 of 10 into the 5..10 ms bucket
    (0.99, hist(b0_1=99, b0_25=1), 0.1),          # exactly at the 99th
    (0.99, hist(b0_1=98, b0_25=2), 0.175),
    (0.99, hist(b0_005=1, b99=99), BUCKETS[-1]),   # in +Inf: the highest finite bound
    (0.99, hist(), None),
])
def test_quantile_is_prometheus_histogram_quantile(q: float, buckets: tuple[int, ...],
                                                   expected: float | None) -> None:
    got = quantile(q, buckets)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_counts_add_up_a_version_from_the_counters() -> None:
    stats = Stats()
    for svc, backend, codes, errors in [("web", "a", {200: 90, 503: 5, 404: 3}, {"connect": 2}),
                                        ("web", "b", {200: 10}, {}),
                                        ("web-v2", "c", {500: 4, 200: 16}, {"reset": 1}),
                                        ("api", "d", {500: 50}, {})]:
        be = stats.backends[("shop", svc, backend)] = BackendStats()
        be.codes, be.errors = codes, errors
    st = stats.services[("shop", "web")] = ServiceStats()
    st.buckets[0], st.buckets[3] = 100, 8
    other = Stats()
    other.backends[("cart", "web", "a")] = BackendStats()
    other.backends[("cart", "web", "a")].codes = {500: 9}
    stats.add(other)
    # 404 is the client's: counted as a request, not an error; a failed attempt is both.
    assert counts(stats, "shop", ["web"]) == Counts(110, 7, tuple(st.buckets))
    assert counts(stats, "shop", ["web-v2"]).requests == 21
    assert counts(stats, "shop", ["web-v2"]).errors == 5
    assert counts(stats, "shop", ["web", "api"]).errors == 57


def test_counts_since_a_start_and_backwards_counters() -> None:
    a = Counts(100, 3, hist(b0_005=100))
    b = Counts(150, 4, hist(b0_005=140, b0_01=10))
    assert b.since(a) == Counts(50, 1, hist(b0_005=40, b0_01=10))
    assert a.since(b) is None  # a worker replaced: counters went back
    assert Counts(150, 4, hist(b0_01=150)).since(a) is None


# -- the judgement ----------------------------------------------------------------------------
def m(requests: int, errors: int = 0, latency: float | None = 0.004) -> Measure:
    return Measure(requests, errors, latency if requests else None)


@pytest.mark.parametrize("new,old,waits,action,why", [
    (m(100), m(1900), 0, RA.ADVANCE, "within bounds"),
    # Too little traffic: hold, then pause after max_waits (2) holds.
    (m(19), m(1900), 0, RA.HOLD, "too little traffic to judge"),
    (m(100), m(19), 1, RA.HOLD, "too little traffic to judge"),
    (m(5), m(1900), 2, RA.PAUSE, "too little traffic to judge after 3 intervals"),
    # Errors: at most one point over the old version's.
    (m(100, 1), m(1000, 0), 0, RA.ADVANCE, "within bounds"),
    (m(100, 2), m(1000, 0), 0, RA.FAIL, "error rate out of bounds"),
    (m(100, 20), m(1000, 195), 0, RA.ADVANCE, "within bounds"),  # the old one fails too
    (m(100, 20), m(1000, 150), 0, RA.FAIL, "error rate out of bounds"),
    (m(100, 20), m(1000, 0), 0, RA.FAIL, "error rate out of bounds"),
    (m(20, 20), m(1000, 0), 0, RA.FAIL, "error rate out of bounds"),
    # Latency: over the floor (10 ms) and over twice the old one's.
    (m(100, latency=0.009), m(1000, latency=0.001), 0, RA.ADVANCE, "within bounds"),
    (m(100, latency=0.030), m(1000, latency=0.016), 0, RA.ADVANCE, "within bounds"),
    (m(100, latency=0.033), m(1000, latency=0.016), 0, RA.FAIL, "latency out of bounds"),
    (m(100, latency=0.3), m(1000, latency=0.004), 0, RA.FAIL, "latency out of bounds"),
])
def test_judgement(new: Measure, old: Measure, waits: int, action: RampAction, why: str) -> None:
    j = judge(release(ramp(step=1, waits=waits)), new, old, 1.0)
    assert j.action is action
    assert j.reason.startswith(f"step 1 (5%) over 1.0 s: {why}")
    assert f"web-v2 {new.error_rate * 100:.1f}% errors ({new.errors} of {new.requests})" in j.reason
    assert f"web {old.error_rate * 100:.1f}% errors ({old.errors} of {old.requests})" in j.reason


def test_judgement_at_the_step_before_the_last_finishes() -> None:
    assert judge(release(ramp(step=3)), m(500), m(500), 1.0).action is RA.FINISH


def test_judgement_names_several_old_services() -> None:
    j = judge(release(ramp(), old=("web", "api"), old_weights=(("web", 1), ("api", 1))),
              m(100, 10), m(100, 0), 1.0)
    assert j.action is RA.FAIL and "over web,api's" in j.reason


# -- the planner, on a clock the test sets ----------------------------------------------------
class Traffic:
    """Counters that grow as the test says: requests (and errors) per version."""

    def __init__(self) -> None:
        self.stats = Stats()

    def add(self, service: str, requests: int, errors: int = 0, seconds: float = 0.004) -> Stats:
        be = self.stats.backends.setdefault(("shop", service, "b"), BackendStats())
        be.codes[200] = be.codes.get(200, 0) + requests - errors
        be.codes[500] = be.codes.get(500, 0) + errors
        st = self.stats.services.setdefault(("shop", service), ServiceStats())
        for _ in range(requests):
            st.observe(seconds)
        return self.stats

    def reset(self) -> Stats:
        self.stats = Stats()
        return self.stats


def plan(p: Planner, r: Release, stats: Stats, now: float) -> list[tuple[RampAction, int]]:
    return [(d.action, d.step) for d in p.plan({"shop": r}, stats, now)]


def test_planner_first_step_then_one_window_per_step() -> None:
    p, t = Planner(), Traffic()
    r = release(ramp(step=0))
    assert plan(p, r, t.stats, 0.0) == [(RA.ADVANCE, 0)]  # no judgement for the first step
    assert plan(p, replace(r, status=Status.IN_PROGRESS), t.stats, 0.0) == []  # not ready yet
    r = release(ramp(step=1))
    t.add("web", 1000)
    assert plan(p, r, t.stats, 10.0) == []      # the window starts now, from these counters
    t.add("web", 1900)
    t.add("web-v2", 100)
    assert plan(p, r, t.stats, 10.9) == []      # not due before the interval
    assert plan(p, r, t.stats, 11.0) == [(RA.ADVANCE, 1)]
    j = p.plan({"shop": r}, t.stats, 11.05)[0].judgement
    assert j is not None and (j.new.requests, j.old.requests) == (100, 1900)  # not the 1000 before
    # The next step: a new window, from the counters at that moment.
    r2 = release(ramp(step=2))
    assert plan(p, r2, t.stats, 11.1) == []
    t.add("web", 100)
    t.add("web-v2", 100, errors=10)
    assert plan(p, r2, t.stats, 12.1) == [(RA.FAIL, 2)]


def test_planner_hold_extends_the_window_and_keeps_counting_from_its_start() -> None:
    p, t = Planner(), Traffic()
    r = release(ramp(step=1))
    plan(p, r, t.stats, 0.0)
    t.add("web", 300)
    t.add("web-v2", 15)
    assert plan(p, r, t.stats, 1.0) == [(RA.HOLD, 1)]
    held = release(ramp(step=1, waits=1))  # the stored ramp after the hold: same window
    assert plan(p, held, t.stats, 1.5) == []
    t.add("web-v2", 10)
    decisions = p.plan({"shop": held}, t.stats, 2.0)
    assert [d.action for d in decisions] == [RA.ADVANCE]
    assert decisions[0].judgement is not None
    assert decisions[0].judgement.new.requests == 25 and decisions[0].judgement.seconds == 2.0


def test_planner_starts_over_when_counters_go_back_or_the_ramp_stops_running() -> None:
    p, t = Planner(), Traffic()
    r = release(ramp(step=1))
    t.add("web", 5000)
    plan(p, r, t.stats, 0.0)
    t.reset()
    t.add("web", 100)
    t.add("web-v2", 100, errors=100)
    assert plan(p, r, t.stats, 1.0) == []  # a replaced worker: no judgement on torn counters
    t.add("web", 100)
    t.add("web-v2", 100)
    assert plan(p, r, t.stats, 1.5) == []
    assert plan(p, r, t.stats, 2.0) == [(RA.ADVANCE, 1)]
    # Paused, or the release back in progress: the window goes; judged afresh on return.
    assert plan(p, release(ramp(RS.PAUSED, step=1)), t.stats, 2.1) == []
    assert plan(p, r, t.stats, 2.2) == []
    assert plan(p, r, t.stats, 3.1) == []
    assert plan(p, r, t.stats, 3.2) == [(RA.HOLD, 1)]  # nothing happened since 2.2


def test_planner_ignores_releases_without_a_running_ramp() -> None:
    p, t = Planner(), Traffic()
    t.add("web", 100)
    for r in (release(), release(ramp(RS.PAUSED)), release(ramp(RS.DONE, step=4))):
        assert plan(p, r, t.stats, 0.0) == [] and plan(p, r, t.stats, 100.0) == []


async def test_leadership_asks_the_store_at_most_once_a_period() -> None:
    now = [0.0]
    answers = itertools.chain([True, True, False], itertools.repeat(False))
    asked = []

    async def campaign() -> bool:
        asked.append(now[0])
        return next(answers)

    lead = Leadership(campaign, every=1.0, clock=lambda: now[0])
    got = []
    for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 2.5):
        now[0] = t
        got.append(await lead.check())
    assert asked == [0.0, 1.0, 2.0]
    assert got == [True, True, True, True, True, False, False]
    assert await Leadership(None).check()
