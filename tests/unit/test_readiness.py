"""router.control.release.readiness: which in-progress releases are ready, and which backends to probe,
from the backends' checks (a table, no health checker, no socket)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from router.control.release import Action, Backend, Readiness, Release, readiness, start

NOW = datetime(2026, 11, 26, 14, 33, 18, tzinfo=timezone.utc)
# The new service of app "a" is "v2", of app "b" "w2" (app "b"'s release is awaiting
# confirmation unless a row says otherwise).
OPEN = start([("v1", 100)], "v2", NOW)
BACKENDS = {("a", "v2"): ("10.0.0.1:80", "10.0.0.2:80"), ("b", "w2"): ("10.0.1.1:80",),
            ("c", "x2"): ()}
A1, A2, B1 = ("a", "v2", "10.0.0.1:80"), ("a", "v2", "10.0.0.2:80"), ("b", "w2", "10.0.1.1:80")


def release(app: str, ready: bool = False) -> Release:
    new = {"a": "v2", "b": "w2", "c": "x2"}[app]
    r = start([("old", 100)], new, NOW)
    marked = r.apply(Action.READY) if ready else r
    assert marked is not None
    return marked


# (releases: app -> already ready?, configured checks, connected, ready, probe)
CASES: list[tuple[str, dict[str, bool], dict[Backend, bool | None], set[Backend],
                  tuple[str, ...], tuple[Backend, ...]]] = [
    ("every check passed", {"a": False}, {A1: True, A2: True}, set(), ("a",), ()),
    ("one check not passed", {"a": False}, {A1: True, A2: False}, set(), (), ()),
    ("no checks, nothing connected: probe both", {"a": False}, {}, set(), (), (A1, A2)),
    ("no checks, both connected", {"a": False}, {}, {A1, A2}, ("a",), ()),
    ("no checks, one connected", {"a": False}, {}, {A1}, (), (A2,)),
    ("a check passed, the other connected", {"a": False}, {A1: True}, {A2}, ("a",), ()),
    # A configured check decides: a connect does not stand in for a failed check.
    ("a failed check, connected", {"a": False}, {A1: True, A2: False}, {A2}, (), ()),
    # A failed check does not stop the others from being probed.
    ("a failed check, the other unprobed", {"a": False}, {A1: False}, set(), (), (A2,)),
    ("no backend has proven nothing", {"c": False}, {}, set(), (), ()),
    ("already ready: not watched", {"b": True}, {}, set(), (), ()),
    ("two apps, one ready", {"a": False, "b": False}, {A1: True, A2: False, B1: True}, set(),
     ("b",), ()),
    ("two apps, in their order", {"b": False, "a": False}, {}, {A1, A2, B1}, ("b", "a"), ()),
]


@pytest.mark.parametrize(("releases", "checks", "connected", "ready", "probe"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_readiness(releases: dict[str, bool], checks: dict[Backend, bool | None],
                   connected: set[Backend], ready: tuple[str, ...],
                   probe: tuple[Backend, ...]) -> None:
    got = readiness({app: release(app, r) for app, r in releases.items()},
                    lambda app, service: BACKENDS[app, service], checks.get, connected)
    assert (got.ready, got.probe) == (ready, probe)


def test_watched_is_every_backend_of_an_in_progress_release() -> None:
    got = readiness({"a": release("a"), "b": release("b", True), "c": release("c")},
                    lambda app, service: BACKENDS[app, service], {}.get, set())
    assert got.watched == frozenset({A1, A2})


def test_no_release() -> None:
    assert readiness({}, lambda app, service: (), {}.get, {A1}) == Readiness((), (), frozenset())


def test_the_status_decides_not_the_table() -> None:
    """A release taken back to in_progress (its backends changed) is judged again."""
    back = OPEN.apply(Action.READY)
    assert back is not None
    back = back.apply(Action.NOT_READY)
    got = readiness({"a": back}, lambda app, service: BACKENDS[app, service], {A1: True}.get,
                    set())
    assert (got.ready, got.probe) == ((), (A2,))
