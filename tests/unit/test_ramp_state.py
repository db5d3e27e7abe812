"""The ramp's operations on the routing state (router.control.state): the weights each move sets, the
history each one writes (exactly), the refusals, and the preview header setting of an app."""

from __future__ import annotations

from typing import Any

import pytest

from router.control import state as ops
from router.config import ConfigError, PreviewConfig, config_from_dict
from router.errors import Conflict, Invalid
from router.control.history import ROUTER, Actor
from router.control.transition import next_state
from router.control.ramp import RampAction, RampStatus

RA = RampAction
OPERATOR = Actor("127.0.0.1")
STEPS = {"steps": [10, 50, 100], "interval": "1s"}


def _state(**app: Any) -> ops.State:
    shop = {"routes": ["shop.test"], "services": {"web": {"weight": 100,
                                                          "backends": ["10.0.0.1:80"]}}, **app}
    return ops.State.initial(config_from_dict({"apps": {"shop": shop}}).apps)


def run(state: ops.State, op: ops.Operation, actor: Actor = ROUTER) -> ops.State:
    return next_state(state, op, None, None, actor)


def weights(state: ops.State) -> dict[str, int]:
    return {s.name: s.weight for s in state.app("shop").services}


def entry(state: ops.State) -> tuple[str, list[str], str | None]:
    assert state.change is not None
    d = state.change.to_dict()
    return d["operation"], d["changes"], d.get("reason")


def released(ready: bool = True) -> ops.State:
    s = run(_state(), ops.start("shop", {"service": "web-v2", "backends": ["10.0.0.2:80"]}))
    return run(s, ops.mark_ready("shop", "web-v2")) if ready else s


def decide(state: ops.State, action: RampAction, step: int, reason: str = "why") -> ops.State:
    return run(state, ops.ramp_decision("shop", "web-v2", step, action, reason))


def test_a_whole_ramp_and_its_history() -> None:
    s = run(released(), ops.ramp_start("shop", STEPS), OPERATOR)
    assert entry(s) == ("ramp_start", [
        "ramp of web-v2 started: steps 10%, 50%, 100% every 1s; errors at most 1% over the old "
        "version's, p99 at most 2x (above 10ms); at least 20 requests a version, waiting 10 "
        "intervals at most"], None)
    assert weights(s) == {"web": 100, "web-v2": 0}  # nothing moves before the first step
    s = decide(s, RA.ADVANCE, 0, "the release is ready: first step")
    assert weights(s) == {"web": 90, "web-v2": 10}
    assert entry(s) == ("ramp_step", ["weights web 100->90, web-v2 0->10",
                                      "ramp of web-v2 step 0 (0%) -> step 1 (10%)"],
                        "the release is ready: first step")
    s = decide(s, RA.HOLD, 1, "thin")
    assert weights(s) == {"web": 90, "web-v2": 10}
    assert entry(s) == ("ramp_wait", ["ramp of web-v2 waits at step 1 (10%): too little traffic "
                                      "to judge (1 of at most 10 intervals)"], "thin")
    s = decide(s, RA.ADVANCE, 1, "fine")
    s = decide(s, RA.ADVANCE, 2, "fine again")
    assert weights(s) == {"web": 0, "web-v2": 100}
    assert entry(s) == ("ramp_step", ["weights web 50->0, web-v2 50->100",
                                      "ramp of web-v2 step 2 (50%) -> step 3 (100%)"],
                        "fine again")
    # The last step judged within bounds: done, the weights as they are.
    s = decide(s, RA.FINISH, 3, "fine at 100%")
    assert weights(s) == {"web": 0, "web-v2": 100}
    assert entry(s) == ("ramp_step", ["ramp of web-v2 running -> done"], "fine at 100%")
    ramp = s.releases["shop"].ramp
    assert ramp is not None and (ramp.status, ramp.step, ramp.reason) == (RampStatus.DONE, 3,
                                                                          "fine at 100%")
    # Confirm as after any release: the ramp goes with it.
    s = run(s, ops.confirm("shop", False), OPERATOR)
    assert "shop" not in s.releases and weights(s) == {"web-v2": 100}


def test_a_failed_step_is_the_rollback_with_its_reason() -> None:
    s = run(released(), ops.ramp_start("shop", STEPS))
    s = decide(s, RA.ADVANCE, 0)
    s = decide(s, RA.FAIL, 1, "step 1 (10%) over 1.0 s: error rate out of bounds")
    assert "shop" not in s.releases and weights(s) == {"web": 100}
    op, changes, reason = entry(s)
    assert (op, changes) == ("ramp_rollback", ["service web-v2 deleted", "weights web 90->100",
                                               "release of web-v2 rolled back (web-v2 deleted)"])
    assert reason == "step 1 (10%) over 1.0 s: error rate out of bounds"
    assert s.change is not None and s.change.summary().endswith(
        "; because step 1 (10%) over 1.0 s: error rate out of bounds")


def test_a_decision_about_a_step_that_moved_on_is_refused() -> None:
    s = decide(run(released(), ops.ramp_start("shop", STEPS)), RA.ADVANCE, 0)
    for stale in (lambda: decide(s, RA.ADVANCE, 0),                         # step 0 is gone
                  lambda: run(s, ops.ramp_decision("shop", "web-v3", 1, RA.FAIL, "x")),
                  lambda: decide(run(s, ops.ramp_move("shop", RA.PAUSE)), RA.FAIL, 1)):  # paused meanwhile
        with pytest.raises(Conflict):
            stale()
    with pytest.raises(ValueError):
        ops.ramp_decision("shop", "web-v2", 1, RA.ABORT, "an operator's move")
    with pytest.raises(ValueError):
        ops.ramp_move("shop", RA.ADVANCE)  # the router's to decide


def test_the_first_step_waits_for_a_ready_release() -> None:
    s = run(released(ready=False), ops.ramp_start("shop", STEPS))
    with pytest.raises(Conflict, match="in_progress: wait until every backend of web-v2"):
        decide(s, RA.ADVANCE, 0)


def test_pause_resume_abort_and_weights_by_hand() -> None:
    s = decide(run(released(), ops.ramp_start("shop", STEPS)), RA.ADVANCE, 0)
    with pytest.raises(Conflict, match="the ramp of web-v2 sets the weights of web-v2"):
        run(s, ops.set_weights("shop", {"web-v2": 100}))
    assert run(s, ops.set_weights("shop", {"web": 90})) is s  # no change is no conflict
    s = run(s, ops.ramp_move("shop", RA.PAUSE), OPERATOR)
    assert entry(s) == ("ramp_pause", ["ramp of web-v2 running -> paused"], None)
    assert run(s, ops.ramp_move("shop", RA.PAUSE)) is s  # pausing a paused ramp changes nothing
    s = run(s, ops.set_weights("shop", {"web": 70, "web-v2": 30}), OPERATOR)  # paused: by hand
    s = run(s, ops.ramp_move("shop", RA.RESUME), OPERATOR)
    assert weights(s) == {"web": 90, "web-v2": 10}  # the step's weights again
    assert entry(s) == ("ramp_resume", ["weights web 70->90, web-v2 30->10",
                                        "ramp of web-v2 paused -> running"], None)
    s = run(s, ops.ramp_move("shop", RA.ABORT), OPERATOR)
    assert weights(s) == {"web": 100, "web-v2": 0} and s.releases["shop"].ramp is None
    assert entry(s) == ("ramp_abort", ["weights web 90->100, web-v2 10->0",
                                       "ramp of web-v2 aborted at step 1 (10%)"], None)
    # The release stays open: another ramp may start.
    s = run(s, ops.ramp_start("shop", {"steps": [100]}), OPERATOR)
    ramp = s.releases["shop"].ramp
    assert ramp is not None and ramp.settings.steps == (100,) and ramp.step == 0


@pytest.mark.parametrize("make,error,match", [
    (lambda: ops.ramp_start("shop", {"steps": [5], "interval": "fast"}), Invalid, "duration"),
    (lambda: ops.ramp_start("shop", []), Invalid, "must be an object"),
    (lambda: ops.ramp_move("shop", RA.RESUME), Conflict, "the release has no ramp"),
    (lambda: ops.ramp_move("shop", RA.ABORT), Conflict, "the release has no ramp"),
])
def test_refusals(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        run(released(), make())


def test_a_running_ramp_cannot_be_started_again_and_needs_old_weight() -> None:
    s = run(released(), ops.ramp_start("shop", STEPS))
    with pytest.raises(Conflict, match="its ramp is running; abort it first"):
        run(s, ops.ramp_start("shop", STEPS))
    stopped = run(_state(), ops.set_weights("shop", {"web": 0}))
    stopped = run(stopped, ops.start("shop", {"service": "web-v2", "backends": ["10.0.0.2:80"]}))
    with pytest.raises(Conflict, match="no traffic to compare with"):
        run(stopped, ops.ramp_start("shop", STEPS))
    with pytest.raises(Exception, match="no open release"):
        run(_state(), ops.ramp_start("shop", STEPS))


# -- the preview header of an app -------------------------------------------------------------
def test_preview_setting_is_parsed_stored_and_described() -> None:
    s = _state(preview={"header": "X-Preview"})
    assert s.app("shop").preview == PreviewConfig("X-Preview", None)
    assert ops.app_to_dict(s.app("shop"))["preview"] == {"header": "X-Preview", "value": None}
    s2 = run(s, ops.patch_app("shop", {"preview": {"header": "X-Canary", "value": "let-me-in"}}))
    assert entry(s2)[1] == ["preview header X-Preview: <new service> -> header X-Canary: let-me-in"]
    s3 = run(s2, ops.patch_app("shop", {"preview": None}))
    assert s3.app("shop").preview is None
    again = ops.State.from_dict(s2.to_dict(), "test")
    assert again.app("shop").preview == PreviewConfig("X-Canary", "let-me-in")


@pytest.mark.parametrize("preview,path", [
    ({"header": "Host"}, "apps.shop.preview.header"),
    ({"header": "cookie"}, "apps.shop.preview.header"),
    ({"header": "X Preview"}, "apps.shop.preview.header"),
    ({}, "apps.shop.preview.header"),
    ({"header": "X-Preview", "value": "a b"}, "apps.shop.preview.value"),
    ({"header": "X-Preview", "value": ""}, "apps.shop.preview.value"),
    ({"header": "X-Preview", "other": 1}, "apps.shop.preview.other"),
    ("X-Preview", "apps.shop.preview"),
])
def test_bad_preview_settings_name_their_key(preview: Any, path: str) -> None:
    with pytest.raises(ConfigError) as e:
        _state(preview=preview)
    assert e.value.path == path


def test_no_other_change_moves_the_weights_a_running_ramp_sets() -> None:
    s = decide(run(released(), ops.ramp_start("shop", STEPS)), RA.ADVANCE, 0)
    body = ops.app_to_dict(s.app("shop"))
    body["services"]["web-v2"]["weight"] = 50
    with pytest.raises(Conflict, match="the ramp of web-v2 sets the weights of web-v2"):
        run(s, ops.put_app("shop", body))
    svc = {**ops.service_to_dict(s.app("shop").services[0]), "weight": 0}
    with pytest.raises(Conflict, match="the ramp of web-v2 sets the weights of web"):
        run(s, ops.put_service("shop", "web", svc))
    apps = config_from_dict({"apps": {"shop": body}}).apps
    with pytest.raises(Conflict, match="moves the weights of web-v2 of 'shop', which the running "
                                       "ramp of web-v2 sets"):
        run(s, ops.apply_apps(apps))
    forced = run(s, ops.apply_apps(apps, force=True))
    assert weights(forced) == {"web": 90, "web-v2": 50}
    # Everything else about the app may change while it runs.
    body = ops.app_to_dict(s.app("shop"))
    body["drain_timeout"] = "10m"
    assert run(s, ops.put_app("shop", body)).app("shop").drain_timeout == 600
