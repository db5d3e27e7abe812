"""The guarded ramp's pure parts: the transition table (router.control.ramp) and the release's moves
(router.control.release), the settings, share -> weights, the quantile, the judgement from tables
(router.control.rampjudge), and the planner's windows on a clock the test sets (router.control.rampdriver)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from router.dataplane.counters import BUCKETS, BackendStats, ServiceStats, Stats
from router.control.ramp import (RAMP_TRANSITIONS, InvalidRamp, Ramp, RampAction, RampSettings,
                         RampStatus, ramp_settings, share_weights)
from router.control.rampdriver import Leadership, Planner
from router.control.rampjudge import (Counts, Measure, broken, counts, judge, measure, quantile,
                              waiting_over)
from router.control.release import Release, ReleaseConflict, Status

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
    # At the last step (4 of 4) the next move is FINISH; from step 1 it is ADVANCE.
    if action is RA.FINISH and r.ramp is not None and status is RS.RUNNING:
        r = replace(r, ramp=replace(r.ramp, step=4))
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
    for step in range(5):
        assert r.ramp is not None
        move = r.ramp.next_move()
        assert move is (RA.FINISH if step == 4 else RA.ADVANCE)
        with pytest.raises(ValueError):  # the other one is a mistake of the caller
            r.apply_ramp(RA.ADVANCE if move is RA.FINISH else RA.FINISH, T0)
        r = r.apply_ramp(move, T0, reason=f"step {step}")
        assert r is not None and r.ramp is not None
        shares.append((r.ramp.step, r.ramp.share, r.ramp.status, r.ramp.reason))
    # The last step is judged like the others: done only then.
    assert shares == [(1, 5, RS.RUNNING, "step 0"), (2, 25, RS.RUNNING, "step 1"),
                      (3, 50, RS.RUNNING, "step 2"), (4, 100, RS.RUNNING, "step 3"),
                      (4, 100, RS.DONE, "step 4")]


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
    from router.control.release import Action
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
    (0.99, hist(b0_00025=100), 0.0002475),      # inside the first bucket, from 0
    (0.5, hist(b0_001=50, b0_002=50), 0.001),     # a millisecond service: 1 ms, not 2.5
    (0.99, hist(b0_002=90, b0_003=10), 0.0029),   # 1..2 ms, a tenth 2..3 ms
    (0.5, hist(b0_005=50, b0_01=50), 0.005),      # the bound between two buckets
    (0.99, hist(b0_005=90, b0_01=10), 0.00975),   # 9 of 10 into the 7.5..10 ms bucket
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
    for svc, backend, codes, errors in [("web", "a", {200: 90, 503: 5, 404: 3, 499: 2},
                                         {"connect": 2}),
                                        ("web", "b", {200: 10}, {}),
                                        ("web-v2", "c", {500: 4, 200: 16}, {"reset": 1}),
                                        ("api", "d", {500: 50}, {})]:
        be = stats.backends[("shop", svc, backend)] = BackendStats()
        be.codes, be.errors = codes, errors
    st = stats.services[("shop", "web")] = ServiceStats()
    st.buckets[0], st.buckets[3] = 100, 8
    st.sticky = 30
    stats.waiting[("shop", "web")] = list(hist(b0_005=2, b2_5=1))
    other = Stats()  # another worker
    other.backends[("cart", "web", "a")] = BackendStats()
    other.backends[("cart", "web", "a")].codes = {500: 9}
    other.waiting[("shop", "web")] = list(hist(b99=3))
    stats.add(other)
    gone = Stats()  # a worker that is gone: its counts stay, it has nothing waiting
    gone.waiting[("shop", "web")] = list(hist(b99=50))
    stats.add(gone, inflight=False)
    # 404 is the client's: counted as a request, not an error; a request its client gave up
    # waiting for (499) is an error, as is a failed attempt.
    assert counts(stats, "shop", ["web"]) == Counts(112, 9, tuple(st.buckets), 30,
                                                    hist(b0_005=2, b2_5=1, b99=3))
    assert counts(stats, "shop", ["web-v2"]).requests == 21
    assert counts(stats, "shop", ["web-v2"]).errors == 5
    assert counts(stats, "shop", ["web", "api"]).errors == 59


def test_counts_since_a_start_and_backwards_counters() -> None:
    a = Counts(100, 3, hist(b0_005=100), 10, hist(b0_005=5))
    b = Counts(150, 4, hist(b0_005=140, b0_01=10), 12, hist(b1_0=2))
    # What waits is what waits now, not a difference.
    assert b.since(a) == Counts(50, 1, hist(b0_005=40, b0_01=10), 2, hist(b1_0=2))
    assert a.since(b) is None  # a worker replaced: counters went back
    assert Counts(150, 4, hist(b0_01=150)).since(a) is None


def test_requests_waiting_past_the_bound_count_as_failed() -> None:
    waiting = hist(b0_005=3, b0_025=2, b0_05=1, b10_0=4, b99=1)
    assert waiting_over(waiting, 0.02) == 6  # above the 10..25 ms bucket 0.02 falls in
    assert waiting_over(waiting, 0.025) == 6
    assert waiting_over(waiting, 0.026) == 5
    assert waiting_over(waiting, 100.0) == 0
    got = measure(Counts(20, 1, hist(b0_005=20), 0, waiting), 0.99, 0.02)
    assert (got.requests, got.errors, got.stuck, got.answered) == (26, 7, 6, 19)
    assert measure(Counts(20, 1, hist(b0_005=20), 0, waiting), 0.99).stuck == 0  # no bound yet


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


def hung(requests: int, stuck: int, errors: int = 0) -> Measure:
    """A version with ``stuck`` of its ``requests`` still waiting past the bound."""
    return Measure(requests, errors + stuck, None if requests == stuck else 0.004, stuck)


@pytest.mark.parametrize("new,old,waits,action,why", [
    # Nothing answered, requests waiting past the bound: a failure whatever the traffic.
    (hung(1, 1), m(1900), 0, RA.FAIL, "none of its requests answered, 1 waiting longer than 20 ms"),
    (hung(3, 3), m(5), 0, RA.FAIL, "none of its requests answered"),
    # Too few requests, but out of bounds already: 1 error is 5% of the 20 it should have had.
    (hung(6, 1), m(1900), 0, RA.FAIL, "error rate out of bounds"),
    (m(6, 1), m(1900), 0, RA.FAIL, "error rate out of bounds"),
    (m(6, 1), m(19), 0, RA.HOLD, "too little traffic to judge"),  # nothing to compare with
    # A request still waiting among many answered: one failure in the rate.
    (hung(200, 1), m(1900), 0, RA.ADVANCE, "within bounds"),
    (hung(100, 2), m(1900), 0, RA.FAIL, "error rate out of bounds"),
])
def test_judgement_of_hung_requests(new: Measure, old: Measure, waits: int, action: RampAction,
                                    why: str) -> None:
    j = judge(release(ramp(step=1, waits=waits)), new, old, 1.0, bound=0.02)
    assert j.action is action
    assert j.reason.startswith(f"step 1 (5%) over 1.0 s: {why}")
    if new.stuck:
        assert f"({new.errors} of {new.requests}, {new.stuck} waiting over 20 ms)" in j.reason


def test_failing_before_the_end_of_the_interval_only_when_out_of_bounds_for_sure() -> None:
    r = release(ramp(step=1))
    # 0.2 s of 3 s: 1 error in 20 requests is 1 in 300 at that pace: within 1 point, judged at
    # the end; after 0.5 s, 2 in 20 is out of bounds even if the 100 to come all succeed.
    assert broken(r, m(20, 1), m(200), 0.2, 3.0) is None
    j = broken(r, m(20, 2), m(200), 0.5, 3.0)
    assert j is not None and j.action is RA.FAIL
    assert j.reason.startswith("step 1 (5%) after 0.5 s of 3 s: error rate out of bounds "
                               "(more than 1 percentage point over web's), already for the "
                               "whole interval: web-v2 10.0% errors (2 of 20)")
    # A hung version: its requests wait past the bound, nothing else comes back.
    assert broken(r, hung(20, 20), m(40), 0.5, 3.0) is not None
    # Not before either version has had min_requests: judged at the end.
    assert broken(r, hung(19, 19), m(40), 2.9, 3.0) is None
    assert broken(r, hung(20, 20), m(19), 2.9, 3.0) is None
    assert broken(r, m(300), m(40), 0.2, 3.0) is None


def test_the_last_step_without_the_old_version_is_judged_against_no_errors() -> None:
    r = release(ramp(step=4))
    j = judge(r, m(100), None, 1.0)
    assert j.action is RA.FINISH
    assert j.reason.endswith("web-v2 0.0% errors (0 of 100), p99 4 ms; no figures of web (no "
                             "traffic at 100%)")
    assert judge(r, m(100, 2), None, 1.0).action is RA.FAIL
    j = judge(r, m(100, 2), m(300, 6), 1.0, old_name="web at step 3")
    assert j.action is RA.FINISH and "web at step 3 2.0% errors (6 of 300)" in j.reason


def test_too_little_traffic_because_the_old_version_keeps_its_pinned_clients() -> None:
    pinned = Measure(400, 0, 0.004, 0, 396)
    j = judge(release(ramp(step=1)), m(2), pinned, 1.0)
    assert j.action is RA.HOLD
    assert ("too little traffic to judge (at least 20 requests each); 396 of 400 requests to "
            "web came from clients pinned to it, whom the weights do not move: web-v2 gets its "
            "share of the others only, and the ramp cannot progress while those pins last "
            "(sticky.max_idle); one more interval") in j.reason
    some = Measure(400, 0, 0.004, 0, 250)
    j = judge(release(ramp(step=1, waits=2)), m(2), some, 1.0)
    assert j.action is RA.PAUSE
    assert "250 of 400 requests to web came from clients pinned" in j.reason
    assert "cannot progress" not in j.reason
    assert "pinned" not in judge(release(ramp(step=1)), m(2), m(400), 1.0).reason


def test_judgement_of_the_last_step_finishes() -> None:
    assert judge(release(ramp(step=3)), m(500), m(500), 1.0).action is RA.ADVANCE
    assert judge(release(ramp(step=4)), m(500), m(500), 1.0).action is RA.FINISH


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

    def wait(self, service: str, **at: int) -> Stats:
        """Requests of ``service`` waiting for an answer now (``hist``'s arguments)."""
        self.stats.waiting[("shop", service)] = list(hist(**at))
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


def test_planner_fails_a_hung_version_as_soon_as_it_is_out_of_bounds() -> None:
    p, t = Planner(), Traffic()
    r = release(ramp(step=1))
    plan(p, r, t.stats, 0.0)  # the window: 1 s
    t.add("web", 40)
    t.add("web-v2", 10)
    t.wait("web-v2", b0_005=1)  # just sent
    assert plan(p, r, t.stats, 0.1) == []
    t.add("web", 40)
    t.wait("web-v2", b0_005=1, b0_25=10)  # ten waiting 250 ms; the bound: 10 ms, the floor
    decisions = p.plan({"shop": r}, t.stats, 0.2)
    assert [(d.action, d.step) for d in decisions] == [(RA.FAIL, 1)]
    assert decisions[0].reason.startswith("step 1 (5%) after 0.2 s of 1 s: error rate out of "
                                          "bounds")
    assert "web-v2 50.0% errors (10 of 20, 10 waiting over 10 ms)" in decisions[0].reason


def test_planner_judges_the_last_step_against_the_old_version_at_the_step_before() -> None:
    p, t = Planner(), Traffic()
    r3 = release(ramp(step=3))
    plan(p, r3, t.stats, 0.0)
    t.add("web", 500, errors=5)
    t.add("web-v2", 500)
    assert plan(p, r3, t.stats, 1.0) == [(RA.ADVANCE, 3)]
    r4 = release(ramp(step=4))  # 100 %: the old version gets no traffic
    plan(p, r4, t.stats, 1.1)
    t.add("web-v2", 1000, errors=15)  # 1.5 %: within a point of web's 1 % at step 3
    decisions = p.plan({"shop": r4}, t.stats, 2.1)
    assert [d.action for d in decisions] == [RA.FINISH]
    assert "web at step 3 1.0% errors (5 of 500)" in decisions[0].reason
    # Without that step's figures (another process judged it): against no errors.
    p2 = Planner()
    plan(p2, r4, t.stats, 3.0)
    t.add("web-v2", 1000, errors=15)
    decisions = p2.plan({"shop": r4}, t.stats, 4.0)
    assert [d.action for d in decisions] == [RA.FAIL]
    assert "no figures of web (no traffic at 100%)" in decisions[0].reason


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


def test_pinned_requests_still_in_flight_are_not_more_than_the_requests() -> None:
    # Pins are counted when a request is routed, requests when they end.
    j = judge(release(ramp(step=1)), m(0), Measure(400, 0, 0.004, 0, 404), 1.0)
    assert "400 of 400 requests to web came from clients pinned" in j.reason
