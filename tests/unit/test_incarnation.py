"""A service's incarnation (router.control.state.incarnate): the generation that added it to the routing
state, kept while the service lives, new when it is added again after being deleted; stored with
the state and read back."""

from __future__ import annotations

from typing import Any

import pytest

from router.control import state as ops
from router.config import ConfigError, config_from_dict
from router.control.history import ROUTER
from router.control.manager import next_state

SHOP = {"routes": ["shop.test"], "services": {"blue": {"weight": 100, "backends": ["10.0.0.1:80"]}}}


def _run(state: ops.State, op: ops.Operation) -> ops.State:
    return next_state(state, op, None, None, ROUTER)


def _incarnations(state: ops.State, app: str = "shop") -> dict[str, int]:
    return {s.name: s.incarnation for s in state.app(app).services}


def _seed(apps: dict[str, Any] | None = None) -> ops.State:
    return ops.State.initial(config_from_dict({"apps": apps or {"shop": SHOP}}).apps)


def test_blue_green_blue() -> None:
    st = _seed()
    assert _incarnations(st) == {"blue": 0}  # the seed
    st = _run(st, ops.start("shop", {"service": "green", "backends": ["10.0.0.2:80"]}))
    assert st.generation == 2 and _incarnations(st) == {"blue": 0, "green": 2}
    st = _run(st, ops.mark_ready("shop", "green"))
    st = _run(st, ops.confirm("shop", force=True))
    assert _incarnations(st) == {"green": 2}  # weight 100 now: the same green
    st = _run(st, ops.start("shop", {"service": "blue", "backends": ["10.0.0.3:80"]}))
    assert _incarnations(st) == {"green": 2, "blue": st.generation}
    assert st.generation == 5


def test_changes_to_a_service_keep_it_and_deleting_it_ends_it() -> None:
    st = _run(_seed(), ops.put_service("shop", "green", {"weight": 0, "backends": ["10.0.0.2:80"]}))
    assert _incarnations(st) == {"blue": 0, "green": 2}
    for op in (ops.set_weights("shop", {"green": 50}),
               ops.put_service("shop", "green", {"weight": 50, "backends": ["10.0.0.9:80"]}),
               ops.put_app("shop", {**SHOP, "services": {**SHOP["services"], "green": {
                   "weight": 1, "backends": ["10.0.0.9:80"]}}}),
               ops.patch_app("shop", {"session_sticky": False}),
               ops.apply_apps(config_from_dict({"apps": {"shop": {**SHOP, "services": {
                   **SHOP["services"], "green": {"weight": 2, "backends": []}}}}}).apps)):
        st = _run(st, op)
        assert _incarnations(st) == {"blue": 0, "green": 2}, op.name
    st = _run(st, ops.delete_service("shop", "green"))
    st = _run(st, ops.put_service("shop", "green", {"weight": 0, "backends": ["10.0.0.2:80"]}))
    assert _incarnations(st)["green"] == st.generation == 9
    st = _run(_run(st, ops.delete_app("shop")), ops.put_app("shop", SHOP))
    assert _incarnations(st) == {"blue": 11}


def test_a_change_that_changes_nothing_is_no_change() -> None:
    st = _run(_seed(), ops.put_service("shop", "green", {"weight": 0, "backends": ["10.0.0.2:80"]}))
    again = {**SHOP, "services": {**SHOP["services"], "green": {"weight": 0,
                                                              "backends": ["10.0.0.2:80"]}}}
    assert _run(st, ops.put_app("shop", again)) is st


def test_stored_and_read_back() -> None:
    st = _run(_seed(), ops.put_service("shop", "green", {"weight": 0, "backends": ["10.0.0.2:80"]}))
    data = st.to_dict()
    assert data["incarnations"] == {"shop": {"green": 2}}
    assert ops.State.from_dict(data, "test") == st
    # A state stored before incarnations were kept: every service is incarnation 0.
    del data["incarnations"]
    assert _incarnations(ops.State.from_dict(data, "test")) == {"blue": 0, "green": 0}
    assert "incarnations" not in _seed().to_dict()


@pytest.mark.parametrize("bad", [[], {"shop": []}, {"shop": {"green": "2"}},
                                 {"shop": {"green": -1}}, {"shop": {"green": True}}])
def test_bad_stored_incarnations_are_refused(bad: Any) -> None:
    data = _run(_seed(), ops.put_service("shop", "green", {"weight": 0, "backends": []})).to_dict()
    data["incarnations"] = bad
    with pytest.raises(ConfigError, match="incarnations"):
        ops.State.from_dict(data, "test")
