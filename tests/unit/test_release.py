"""router.control.release: the transition table, the release object, start()."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.control.release import (
    TRANSITIONS,
    Action,
    Release,
    ReleaseConflict,
    Status,
    start,
)

S, A = Status, Action
IP, AC, CL = S.IN_PROGRESS, S.AWAITING_CONFIRMATION, S.CLOSED
C = ReleaseConflict

# The lifecycle written out once more, independently of TRANSITIONS: every pair, legal or not.
EXPECTED: dict[tuple[Status, Action], Status | type[ReleaseConflict]] = {
    (IP, A.READY): AC,
    (IP, A.NOT_READY): IP,
    (IP, A.CONFIRM): C,
    (IP, A.ROLLBACK): CL,
    (AC, A.READY): AC,
    (AC, A.NOT_READY): IP,
    (AC, A.CONFIRM): CL,
    (AC, A.ROLLBACK): CL,
    (CL, A.READY): C,
    (CL, A.NOT_READY): C,
    (CL, A.CONFIRM): C,
    (CL, A.ROLLBACK): C,
}

T0 = datetime(2026, 11, 26, 14, 33, 18, tzinfo=timezone.utc)


def release(status: Status = IP, **kw: Any) -> Release:
    fields: dict[str, Any] = dict(old=("web",), new="web-v2", status=status,
                                  started_at="2026-11-26T14:33:18Z", old_weights=(("web", 100),))
    fields.update(kw)
    return Release(**fields)


def good_dict(**overrides: object) -> dict[str, object]:
    d: dict[str, object] = {"old": ["web", "api"], "new": "web-v2", "status": "in_progress",
                            "started_at": "2026-11-26T14:33:18Z",
                            "old_weights": {"web": 100, "api": 0}}
    d.update(overrides)
    return d


# --- the table ---------------------------------------------------------------------------


def test_expected_covers_every_pair() -> None:
    assert set(EXPECTED) == set(itertools.product(Status, Action))


def test_table_has_exactly_the_legal_pairs() -> None:
    legal = {pair: to for pair, to in EXPECTED.items() if to is not C}
    table = {(s, a): to for s, row in TRANSITIONS.items() for a, to in row.items()}
    assert table == legal
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("status", "action"), sorted(EXPECTED, key=str))
def test_apply(status: Status, action: Action) -> None:
    expected = EXPECTED[(status, action)]
    r = release(status)
    if expected is C:
        with pytest.raises(ReleaseConflict) as info:
            r.apply(action)
        assert (info.value.status, info.value.action) == (status, action)
        assert status.value in str(info.value)
    elif expected is CL:
        assert r.apply(action) is None
    else:
        after = r.apply(action)
        assert after == release(expected)
        assert r.status is status  # the original is untouched


def test_confirm_in_progress_message_names_the_new_service() -> None:
    with pytest.raises(ReleaseConflict) as info:
        release(IP).apply(A.CONFIRM)
    assert str(info.value) == (
        "cannot confirm a release that is in_progress: wait until every backend of web-v2 has"
        " passed its health check (or roll back)")


@pytest.mark.parametrize(("action", "verb"), [(A.READY, "mark ready"),
                                              (A.NOT_READY, "mark not ready"),
                                              (A.CONFIRM, "confirm"),
                                              (A.ROLLBACK, "roll back")])
def test_closed_messages(action: Action, verb: str) -> None:
    with pytest.raises(ReleaseConflict) as info:
        release(CL).apply(action)
    assert str(info.value) == (
        f"cannot {verb} a release that is closed: it was already confirmed or rolled back")


def test_walkthrough() -> None:
    r: Release | None = start([("web", 100)], "web-v2", T0)
    assert r is not None and r.status is IP
    for action, status in [(A.NOT_READY, IP), (A.READY, AC), (A.READY, AC), (A.NOT_READY, IP),
                           (A.READY, AC)]:
        r = r.apply(action)
        assert r is not None and r.status is status
    assert r.apply(A.CONFIRM) is None
    assert r.apply(A.ROLLBACK) is None


@given(st.lists(st.sampled_from(list(Action)), max_size=30))
def test_confirm_only_after_the_last_health_report_was_ready(actions: list[Action]) -> None:
    """Another statement of the rules: the release stays open until the first CONFIRM or
    ROLLBACK that is allowed; a CONFIRM is allowed iff READY came after the last NOT_READY."""
    r: Release | None = release(IP)
    ready = False
    for action in actions:
        assert r is not None
        allowed = action is not A.CONFIRM or ready
        if not allowed:
            with pytest.raises(ReleaseConflict):
                r.apply(action)
            continue
        r = r.apply(action)
        if action in (A.CONFIRM, A.ROLLBACK):
            assert r is None
            return
        ready = action is A.READY
        assert r is not None and r.status is (AC if ready else IP)
        assert (r.old, r.new, r.started_at, r.old_weights) == (
            ("web",), "web-v2", "2026-11-26T14:33:18Z", (("web", 100),))


# --- the object --------------------------------------------------------------------------


def test_to_dict_is_spec_5_release_object() -> None:
    r = start([("web", 100), ("api", 30)], "web-v2", T0)
    d = r.to_dict()
    assert d == {"old": ["web", "api"], "new": "web-v2", "status": "in_progress",
                 "started_at": "2026-11-26T14:33:18Z", "old_weights": {"web": 100, "api": 30},
                 "ramp": None}
    assert list(d) == ["old", "new", "status", "started_at", "old_weights", "ramp"]
    assert type(d["status"]) is str  # not the enum: JSON and YAML see a plain string
    assert list(d["old_weights"]) == ["web", "api"]  # type: ignore[call-overload]
    after = r.apply(A.READY)
    assert after is not None and after.to_dict()["status"] == "awaiting_confirmation"


def test_release_is_frozen() -> None:
    r = release()
    with pytest.raises(AttributeError):
        r.status = AC  # type: ignore[misc]
    assert not hasattr(r, "__dict__")


@pytest.mark.parametrize("status", [IP, AC])
def test_round_trip(status: Status) -> None:
    r = start([("web", 100), ("api", 0)], "web-v2", T0)
    if status is AC:
        r = r.apply(A.READY)  # type: ignore[assignment]
    assert Release.from_dict(r.to_dict()) == r


def test_round_trip_no_old_services() -> None:
    r = start([], "web", T0)
    assert r.to_dict()["old"] == [] and r.to_dict()["old_weights"] == {}
    assert Release.from_dict(r.to_dict()) == r


def test_from_dict_result() -> None:
    r = Release.from_dict(good_dict(status="awaiting_confirmation"))
    assert r == Release(old=("web", "api"), new="web-v2", status=AC,
                        started_at="2026-11-26T14:33:18Z",
                        old_weights=(("web", 100), ("api", 0)))


def test_from_dict_old_weights_follow_old_order() -> None:
    r = Release.from_dict(good_dict(old_weights={"api": 0, "web": 100}))
    assert r.old_weights == (("web", 100), ("api", 0))


@pytest.mark.parametrize(("value", "normalised"), [
    ("2026-11-26T14:33:18Z", "2026-11-26T14:33:18Z"),
    ("2026-11-26t14:33:18z", "2026-11-26T14:33:18Z"),
    ("2026-11-26T14:33:18.123456789Z", "2026-11-26T14:33:18Z"),
    ("2026-11-26T16:33:18+02:00", "2026-11-26T14:33:18Z"),
    ("2026-11-26T00:03:18-01:30", "2026-11-26T01:33:18Z"),
    (T0, "2026-11-26T14:33:18Z"),  # YAML reads an unquoted timestamp as a datetime
    (T0.astimezone(timezone(timedelta(hours=9))), "2026-11-26T14:33:18Z"),
])
def test_from_dict_timestamps(value: object, normalised: str) -> None:
    assert Release.from_dict(good_dict(started_at=value)).started_at == normalised


def _without(key: str) -> dict[str, object]:
    d = good_dict()
    del d[key]
    return d


@pytest.mark.parametrize(("data", "message"), [
    (["web"], "release: must be a mapping (got ['web'])"),
    (None, "release: must be a mapping (got None)"),
    (_without("old"), "release.old: missing"),
    (_without("new"), "release.new: missing"),
    (_without("status"), "release.status: missing"),
    (_without("started_at"), "release.started_at: missing"),
    (_without("old_weights"), "release.old_weights: missing"),
    (good_dict(extra=1), "release.extra: unknown key (got 1)"),
    (good_dict(old="web"), "release.old: must be a list of service names (got 'web')"),
    (good_dict(old=["web", 3]), "release.old[1]: must be a service name (got 3)"),
    (good_dict(old=["web", "Web"]), "release.old[1]: must be a service name (got 'Web')"),
    (good_dict(old=["web", "web"]), "release.old[1]: duplicate service (got 'web')"),
    (good_dict(new=None), "release.new: must be a service name (got None)"),
    (good_dict(new="web-v2\n"), "release.new: must be a service name (got 'web-v2\\n')"),
    (good_dict(new="web"), "release.new: must not be one of the old services (got 'web')"),
    (good_dict(status="closed"),
     "release.status: must be in_progress or awaiting_confirmation (got 'closed')"),
    (good_dict(status="IN_PROGRESS"),
     "release.status: must be in_progress or awaiting_confirmation (got 'IN_PROGRESS')"),
    (good_dict(status=1),
     "release.status: must be in_progress or awaiting_confirmation (got 1)"),
    (good_dict(status=["in_progress"]),
     "release.status: must be in_progress or awaiting_confirmation (got ['in_progress'])"),
    (good_dict(started_at=1764167598),
     "release.started_at: must be an RFC 3339 timestamp (got 1764167598)"),
    (good_dict(started_at="2026-11-26"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-11-26')"),
    (good_dict(started_at="2026-11-26T14:33:18"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-11-26T14:33:18')"),
    (good_dict(started_at="2026-11-26 14:33:18Z"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-11-26 14:33:18Z')"),
    (good_dict(started_at="2026-02-30T14:33:18Z"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-02-30T14:33:18Z')"),
    (good_dict(started_at="2026-11-26T24:00:00Z"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-11-26T24:00:00Z')"),
    (good_dict(started_at="2026-11-26T14:33:18+25:00"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-11-26T14:33:18+25:00')"),
    (good_dict(started_at="2026-11-26T14:33:18Z\n"),
     "release.started_at: must be an RFC 3339 timestamp (got '2026-11-26T14:33:18Z\\n')"),
    (good_dict(started_at=datetime(2026, 11, 26, 14, 33, 18)),
     "release.started_at: must be an RFC 3339 timestamp with an offset"
     " (got datetime.datetime(2026, 11, 26, 14, 33, 18))"),
    (good_dict(old_weights=[100, 0]),
     "release.old_weights: must be a mapping of service to weight (got [100, 0])"),
    (good_dict(old_weights={"web": 100}), "release.old_weights.api: missing"),
    (good_dict(old_weights={"web": 100, "api": 0, "db": 5}),
     "release.old_weights.db: is not one of the old services (got 5)"),
    (good_dict(old_weights={"web": 101, "api": 0}),
     "release.old_weights.web: must be an integer 0..100 (got 101)"),
    (good_dict(old_weights={"web": -1, "api": 0}),
     "release.old_weights.web: must be an integer 0..100 (got -1)"),
    (good_dict(old_weights={"web": True, "api": 0}),
     "release.old_weights.web: must be an integer 0..100 (got True)"),
    (good_dict(old_weights={"web": 50.0, "api": 0}),
     "release.old_weights.web: must be an integer 0..100 (got 50.0)"),
    (good_dict(old_weights={"web": "100", "api": 0}),
     "release.old_weights.web: must be an integer 0..100 (got '100')"),
])
def test_from_dict_rejects(data: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Release.from_dict(data)
    assert str(info.value) == message


def test_from_dict_path_is_used() -> None:
    with pytest.raises(ValueError, match=r"^apps\.shop\.release\.new: missing$"):
        Release.from_dict(_without("new"), "apps.shop.release")


# --- start() ------------------------------------------------------------------------------


def test_start() -> None:
    r = start([("web", 70), ("api", 30)], "web-v2", T0)
    assert r == Release(old=("web", "api"), new="web-v2", status=IP,
                        started_at="2026-11-26T14:33:18Z",
                        old_weights=(("web", 70), ("api", 30)))


def test_start_normalises_now_to_utc_seconds() -> None:
    now = datetime(2026, 11, 26, 15, 33, 18, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert start([("web", 100)], "web-v2", now).started_at == "2026-11-26T14:33:18Z"


def test_start_defaults_to_the_clock() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    r = start([("web", 100)], "web-v2")
    after = datetime.now(timezone.utc)
    moment = datetime.strptime(r.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= moment <= after


def test_start_existing_service_is_a_conflict() -> None:
    with pytest.raises(ReleaseConflict) as info:
        start([("web", 100), ("web-v2", 0)], "web-v2", T0)
    assert str(info.value) == "service web-v2 already exists"
    assert info.value.status is None and info.value.action is None


@pytest.mark.parametrize(("services", "now", "message"), [
    ([("web", 100), ("web", 0)], T0, "duplicate service 'web'"),
    ([("web", 101)], T0, "service web: weight must be an integer 0..100 (got 101)"),
    ([("web", True)], T0, "service web: weight must be an integer 0..100 (got True)"),
    ([("web", 100)], datetime(2026, 11, 26), "now must be timezone-aware"),
])
def test_start_rejects_malformed_arguments(services: list[tuple[str, Any]], now: datetime,
                                           message: str) -> None:
    with pytest.raises(ValueError) as info:
        start(services, "web-v2", now)
    assert str(info.value).startswith(message)
