"""The routing state and every operation that changes it (``State`` itself, and its stored form,
in ``router.control.statemodel``).

A ``State`` is immutable: the apps (as validated ``AppConfig`` objects), the open releases, the
generation, and the history entry of the change that made it. Each admin operation is a pure
function from the current state to the next apps and releases that raises a ``RouterError``
(with its HTTP status) instead of ever producing an invalid state. ``router.control.manager`` runs them,
one at a time, and stores and applies what they make.

Where the state comes from at start, and why a reload never changes it: ``docs/state.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, ParamSpec

from ..config import (
    AppConfig,
    ConfigError,
    ServiceConfig,
    parse_app,
    parse_service,
)
from ..errors import Conflict, Invalid, NotFound, PreconditionFailed
from .ramp import InvalidRamp, RampAction, RampStatus, ramp_settings, share_weights
from .release import Action, Release, ReleaseConflict
from .release import start as start_release
# The state and its stored form, imported from here with the operations that change it.
from .statemodel import (Discovered, State, app_to_dict, health_check_to_dict, incarnate,
                         new_line, service_to_dict)


def invalid(e: ConfigError) -> Invalid:
    """A configuration error in a request body, as the admin API's 422."""
    return Invalid(f"{e.reason} (got {e.value!r})" if e.value is not None else e.reason, e.path or None)


def _check_routes(apps: tuple[AppConfig, ...], changed: AppConfig) -> None:
    """A route belongs to one app only."""
    for other in apps:
        if other.name == changed.name:
            continue
        taken = set(other.routes) & set(changed.routes)
        if taken:
            route = sorted(str(r) for r in taken)[0]
            raise Conflict(f"route {route} belongs to app {other.name!r}", "routes")


def _replace_app(state: State, app: AppConfig) -> tuple[AppConfig, ...]:
    _check_routes(state.apps, app)
    if state.has_app(app.name):
        return tuple(app if a.name == app.name else a for a in state.apps)
    return state.apps + (app,)


def _service(app: AppConfig, name: str) -> ServiceConfig:
    for s in app.services:
        if s.name == name:
            return s
    raise NotFound(f"app {app.name!r} has no service {name!r}", "service")


# What an operation makes of a state: the next apps and releases. The generation, the ETags and
# the history entry follow from comparing them with the state's
# (``router.control.transition.next_state``).
Outcome = tuple[tuple[AppConfig, ...], Mapping[str, Release]]
# Discovery's operations (router.providers) also give the next ``discovered``; every other
# operation leaves it as it was.
DiscoveryOutcome = tuple[tuple[AppConfig, ...], Mapping[str, Release], Mapping[str, Discovered]]
Step = Callable[[State], "Outcome | DiscoveryOutcome"]
P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Operation:
    """A step with the name the history and the log show for it, and why it is made when the
    router decides it itself (a ramp's judgement): the history entry's ``reason``.

    ``safe``: it takes traffic away from a new version (a rollback, a ramp's abort). Safety
    before persistence: when the store cannot be written, such a change takes effect in the
    data plane at once and is stored once the store answers (``router.control.manager``), by running
    ``rerun`` (the operation itself when None) on the state the store holds then.
    """

    name: str
    step: Step
    reason: str | None = None
    safe: bool = False
    rerun: "Operation | None" = None

    def __call__(self, state: State) -> "Outcome | DiscoveryOutcome":
        return self.step(state)


def operation(name: str, safe: bool = False) -> Callable[[Callable[P, Step]], Callable[P, Operation]]:
    """Names what an operation factory makes: ``@operation("set_weights")`` above a function
    that returns a step is all a new operation needs to show in the history under its name."""
    def named(factory: Callable[P, Step]) -> Callable[P, Operation]:
        @functools.wraps(factory)
        def make(*args: P.args, **kwargs: P.kwargs) -> Operation:
            return Operation(name, factory(*args, **kwargs), safe=safe)
        return make
    return named


# -- operations -------------------------------------------------------------------------------
def _exists(what: str) -> PreconditionFailed:
    return PreconditionFailed(f"{what} exists already (If-None-Match: *)", "If-None-Match")


@operation("put_app")
def put_app(name: str, body: Any, only_new: bool = False) -> Step:
    """Create or replace an app; ``only_new``: create only (412 if it exists)."""
    def op(state: State) -> Outcome:
        try:
            app = parse_app(name, body, None, "")
        except ConfigError as e:
            raise invalid(e) from None
        if only_new and state.has_app(name):
            raise _exists(f"app {name!r}")
        release = state.releases.get(name)
        if release is not None:
            names = {s.name for s in app.services}
            missing = [s for s in (release.new, *release.old) if s not in names]
            if missing:
                raise Conflict(f"app {name!r} has an open release that needs service {missing[0]!r}; "
                               "confirm or roll back the release first", "services")
            _ramp_guard(state, app)
        return _replace_app(state, app), state.releases
    return op


@operation("patch_app")
def patch_app(name: str, body: dict[str, Any]) -> Step:
    def op(state: State) -> Outcome:
        app = state.app(name)
        merged = app_to_dict(app)
        merged.update(body)
        try:
            new = parse_app(name, merged, None, "")
        except ConfigError as e:
            raise invalid(e) from None
        return _replace_app(state, new), state.releases
    return op


@operation("delete_app")
def delete_app(name: str) -> Step:
    def op(state: State) -> Outcome:
        state.app(name)
        releases = {k: v for k, v in state.releases.items() if k != name}
        return tuple(a for a in state.apps if a.name != name), releases
    return op


@operation("set_weights")
def set_weights(name: str, weights: dict[str, Any], ready: set[str] | None = None) -> Step:
    """All listed weights change in one step, or none does.

    ``ready``: the services with a backend ready to take requests. Given, a change that would
    leave every weight at 0, or all of the weight on services not in it, is a 409 (a release
    turned into an outage by one command); None: no such check (``force``).
    """
    def op(state: State) -> Outcome:
        app = state.app(name)
        if not weights:
            raise Invalid("at least one service weight is required", "weights")
        for svc, w in weights.items():
            _service(app, svc)
            if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 100:
                raise Invalid(f"must be an integer 0..100 (got {w!r})", svc)
        services = tuple(replace(s, weight=weights.get(s.name, s.weight)) for s in app.services)
        _ramp_guard(state, replace(app, services=services))
        if ready is not None and services != app.services:
            weighted = [s for s in services if s.weight > 0]
            if not weighted:
                raise Conflict(f"every weight of {name!r} would be 0: every request without a "
                               "sticky cookie would get 503; send force=true to do it anyway",
                               "weights")
            if not any(s.name in ready for s in weighted):
                which = "; ".join(f"{s.name} ({', '.join(s.backends)})" for s in weighted)
                raise Conflict(f"{name!r} would send all its traffic to services with no backend "
                               f"ready to take requests (none is healthy or accepts a "
                               f"connection): {which}; send force=true to do it anyway", "weights")
        return _replace_app(state, replace(app, services=services)), state.releases
    return op


@operation("put_service")
def put_service(name: str, svc_name: str, body: Any, only_new: bool = False) -> Step:
    """Create or replace a service; ``only_new``: create only (412 if it exists)."""
    def op(state: State) -> Outcome:
        app = state.app(name)
        try:
            svc = parse_service(svc_name, body, "")
        except ConfigError as e:
            raise invalid(e) from None
        releases = dict(state.releases)
        if any(s.name == svc_name for s in app.services):
            if only_new:
                raise _exists(f"service {svc_name!r} of {name!r}")
            services = tuple(svc if s.name == svc_name else s for s in app.services)
            release = releases.get(name)
            if release is not None:
                releases[name] = _recheck(release, app, replace(app, services=services))
        else:
            services = app.services + (svc,)
        changed = replace(app, services=services)
        _ramp_guard(state, changed)
        return _replace_app(state, changed), releases
    return op


@operation("delete_service")
def delete_service(name: str, svc_name: str) -> Step:
    def op(state: State) -> Outcome:
        app = state.app(name)
        _service(app, svc_name)
        release = state.releases.get(name)
        if release is not None and svc_name in (release.new, *release.old):
            raise Conflict(f"service {svc_name!r} is part of the open release of {name!r}; "
                           "confirm or roll back the release first", "service")
        services = tuple(s for s in app.services if s.name != svc_name)
        if not services:
            raise Conflict(f"{svc_name!r} is the last service of {name!r}; delete the app instead",
                           "service")
        return _replace_app(state, replace(app, services=services)), state.releases
    return op


def _ramped(state: State, app: AppConfig) -> list[str]:
    """The services whose weight ``app`` changes while a ramp of its release sets them."""
    release = state.releases.get(app.name)
    if (release is None or release.ramp is None or release.ramp.status is not RampStatus.RUNNING
            or not state.has_app(app.name)):
        return []
    before = {s.name: s.weight for s in state.app(app.name).services}
    return [s.name for s in app.services
            if s.name in (release.new, *release.old) and before.get(s.name) != s.weight]


def _ramp_guard(state: State, app: AppConfig) -> None:
    moved = _ramped(state, app)
    if moved:
        new = state.releases[app.name].new
        raise Conflict(f"the ramp of {new} sets the weights of {', '.join(moved)}; pause or "
                       "abort it first", "ramp")


def _release_step(release: Release, action: Action) -> Release | None:
    """The release after ``action`` (None once closed); an illegal move is a 409."""
    try:
        return release.apply(action)
    except ReleaseConflict as e:
        raise Conflict(str(e), "release") from None


def _still_open(release: Release, action: Action) -> Release:
    nxt = _release_step(release, action)
    assert nxt is not None, f"{action} does not close a release"
    return nxt


@operation("start_release")
def start(name: str, body: Any) -> Step:
    def op(state: State) -> Outcome:
        app = state.app(name)
        if not isinstance(body, dict):
            raise Invalid("must be an object with service, backends, health_check", None)
        unknown = set(body) - {"service", "backends", "health_check"}
        if unknown:
            raise Invalid(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
        svc_name = body.get("service")
        if not isinstance(svc_name, str):
            raise Invalid("required: the new service's name", "service")
        if name in state.releases:
            raise Conflict(f"app {name!r} already has an open release", "release")
        if not body.get("backends"):
            raise Invalid("a release needs at least one backend", "backends")
        try:
            svc = parse_service(svc_name, {"weight": 0, "backends": body.get("backends"),
                                           "health_check": body.get("health_check")}, "")
        except ConfigError as e:
            raise invalid(e) from None
        try:
            release = start_release([(s.name, s.weight) for s in app.services], svc_name)
        except ReleaseConflict as e:
            raise Conflict(str(e), "service") from None
        new_app = replace(app, services=app.services + (svc,))
        return _replace_app(state, new_app), {**state.releases, name: release}
    return op


def _open_release(state: State, name: str) -> Release:
    state.app(name)
    release = state.releases.get(name)
    if release is None:
        raise NotFound(f"app {name!r} has no open release", "release")
    return release


@operation("confirm_release")
def confirm(name: str, force: bool) -> Step:
    """Delete the old services; with ``force`` the new one first gets all the weight."""
    def op(state: State) -> Outcome:
        release = _open_release(state, name)
        _release_step(release, Action.CONFIRM)  # 409 while in_progress
        app = state.app(name)
        new = _service(app, release.new)
        if force and new.weight == 0:
            new = replace(new, weight=100)
        if new.weight == 0:
            raise Conflict(f"service {release.new!r} has weight 0: confirming would leave "
                           f"{name!r} with no traffic; move weight first or confirm with force",
                           "weight")
        services = tuple(new if s.name == new.name else s
                         for s in app.services if s.name not in release.old)
        releases = {k: v for k, v in state.releases.items() if k != name}
        return _replace_app(state, replace(app, services=services)), releases
    return op


@operation("rollback_release", safe=True)
def rollback(name: str) -> Step:
    """Delete the new service and give the old ones their weights back."""
    def op(state: State) -> Outcome:
        release = _open_release(state, name)
        _release_step(release, Action.ROLLBACK)
        return _rolled_back(state, name, release)
    return op


def _rolled_back(state: State, name: str, release: Release) -> Outcome:
    app = state.app(name)
    old_weights = dict(release.old_weights)
    services = tuple(replace(s, weight=old_weights.get(s.name, s.weight))
                     for s in app.services if s.name != release.new)
    releases = {k: v for k, v in state.releases.items() if k != name}
    return _replace_app(state, replace(app, services=services)), releases


# -- the ramp (router.control.release, "The guarded ramp"; docs/release-ramp.md) --------------
def _ramp_move(state: State, name: str, action: RampAction, *, new: str | None = None,
               step: int | None = None, body: Any = None, reason: str | None = None) -> Outcome:
    """The ramp of ``name``'s release after ``action``, with the weights it sets.

    The router's own decisions name the release (``new``) and the step they judged: when either
    moved on meanwhile (an operator, another replica), the decision is stale and refused (409)
    rather than applied to a step it did not judge.
    """
    release = _open_release(state, name)
    if new is not None and release.new != new:
        raise Conflict(f"the release of {name!r} changed: it is now {release.new}", "release")
    ramp = release.ramp
    if step is not None and (ramp is None or ramp.step != step
                             or ramp.status is not RampStatus.RUNNING):
        where = "gone" if ramp is None else f"{ramp.status.value} at step {ramp.step}"
        raise Conflict(f"the ramp of {release.new} moved on (judged step {step}; it is {where})",
                       "ramp")
    settings = None
    if action is RampAction.START:
        if not isinstance(body, dict):
            raise Invalid("must be an object with steps, interval, max_error_rate, ...", None)
        try:
            settings = ramp_settings(body)
        except InvalidRamp as e:
            raise Invalid(str(e), e.field or None) from None
        if not any(w for _, w in release.old_weights):
            raise Conflict(f"the old services of {name!r} had no weight when the release "
                           "started: a ramp has no traffic to compare with", "ramp")
    try:
        after = release.apply_ramp(action, settings=settings, reason=reason)
    except ReleaseConflict as e:
        raise Conflict(str(e), "ramp") from None
    if after is None:  # FAIL: the release's rollback
        return _rolled_back(state, name, release)
    app = state.app(name)
    weights: dict[str, int] = {}
    after_ramp = after.ramp
    if after_ramp is None:  # ABORT: the new version back to 0, the old weights restored
        weights = {**dict(release.old_weights), release.new: 0}
    elif after_ramp.step and (action in (RampAction.ADVANCE, RampAction.FINISH)
                              or (action is RampAction.RESUME and after is not release)):
        # A step taken, or a paused step resumed: its weights (again, if moved by hand).
        weights = share_weights(release.old_weights, release.new, after_ramp.share)
    if weights:
        services = tuple(replace(s, weight=weights.get(s.name, s.weight)) for s in app.services)
        apps = _replace_app(state, replace(app, services=services))
    else:
        apps = state.apps
    return apps, {**state.releases, name: after}


@operation("ramp_start")
def ramp_start(name: str, body: Any) -> Step:
    """A ramp of the open release: the first step as soon as the release is ready."""
    def op(state: State) -> Outcome:
        return _ramp_move(state, name, RampAction.START, body=body)
    return op


# The names the history shows for an operator's moves, and for the router's own decisions.
_MOVES = {
    RampAction.PAUSE: "ramp_pause",
    RampAction.RESUME: "ramp_resume",
    RampAction.ABORT: "ramp_abort",
}
_DECISIONS = {
    RampAction.ADVANCE: "ramp_step",
    RampAction.FINISH: "ramp_step",
    RampAction.HOLD: "ramp_wait",
    RampAction.PAUSE: "ramp_pause",
    RampAction.FAIL: "ramp_rollback",
}


def ramp_move(name: str, action: RampAction) -> Operation:
    """An operator's pause, resume or abort of the ramp of ``name``'s release."""
    if action not in _MOVES:
        raise ValueError(f"{action.value} is not an operator's move of a running ramp")

    def op(state: State) -> Outcome:
        return _ramp_move(state, name, action)
    return Operation(_MOVES[action], op, safe=action is RampAction.ABORT)


def ramp_decision(name: str, new: str, step: int, action: RampAction, reason: str) -> Operation:
    """The router's judgement of step ``step`` of the ramp of ``new`` (router.control.rampjudge), with its
    reason for the history."""
    if action not in _DECISIONS:
        raise ValueError(f"{action.value} is an operator's move, not a judgement")

    def op(state: State) -> Outcome:
        return _ramp_move(state, name, action, new=new, step=step, reason=reason)
    if action is not RampAction.FAIL:
        return Operation(_DECISIONS[action], op, reason)

    # A rollback already in effect while the store could not be written is stored as the
    # release's rollback, whatever the ramp did meanwhile on another replica (moved on, paused):
    # a version judged failing is not given its traffic back for the sake of the step guard.
    def rolled_back(state: State) -> Outcome:
        release = _open_release(state, name)
        if release.new != new:
            raise Conflict(f"the release of {name!r} changed: it is now {release.new}", "release")
        _release_step(release, Action.ROLLBACK)
        return _rolled_back(state, name, release)
    rerun = Operation(_DECISIONS[action], rolled_back, reason, safe=True)
    return Operation(_DECISIONS[action], op, reason, safe=True, rerun=rerun)


@operation("release_ready")
def mark_ready(name: str, new: str) -> Step:
    """Every backend of the release's new service has passed its check."""
    def op(state: State) -> Outcome:
        release = _open_release(state, name)
        if release.new != new:
            raise Conflict("the release changed", "release")
        # Already marked (by another replica, or an earlier tick): READY is idempotent, and a
        # step that changes nothing is no new generation.
        return state.apps, {**state.releases, name: _still_open(release, Action.READY)}
    return op


def _recheck(release: Release, old: AppConfig, new: AppConfig) -> Release:
    """The release once its new service is as in ``new``: back to in_progress if the service's
    backends or health check changed, for the new backends must pass before a confirm."""
    was, now = _service(old, release.new), _service(new, release.new)
    if was.backends != now.backends or was.health_check != now.health_check:
        return _still_open(release, Action.NOT_READY)
    return release


@operation("apply")
def apply_apps(apps: tuple[AppConfig, ...], force: bool = False,
               pinned: frozenset[tuple[str, str]] = frozenset()) -> Step:
    """The apps of a configuration file (validated, routes unique) become the state's apps:
    ``routerctl apply``. Apps keep their place; new ones come after, in the file's order.

    Refused (409) unless ``force``: closing an open release (its app or one of its services is
    not in the file), and deleting a service clients are still pinned to -- one in ``pinned``
    (``(app, service)`` pairs that got requests by cookie lately), whatever its weight: its
    clients lose their session either way. With ``force`` a release whose services are gone
    is closed.
    """
    def op(state: State) -> Outcome:
        # Apps discovered from Docker are not the file's: they stay unless the file names them.
        given = {a.name: a for a in state.apps if a.name in state.discovered}
        given.update((a.name, a) for a in apps)
        new_apps = tuple(given[a.name] for a in state.apps if a.name in given)
        new_apps += tuple(a for a in apps if not state.has_app(a.name))
        releases: dict[str, Release] = {}
        refused = []
        for name, release in state.releases.items():
            app = given.get(name)
            services = {s.name for s in app.services} if app is not None else set()
            gone = [s for s in (release.new, *release.old) if s not in services]
            if not gone:
                assert app is not None
                releases[name] = _recheck(release, state.app(name), app)
                moved = _ramped(state, app)
                if moved:
                    refused.append(f"moves the weights of {', '.join(moved)} of {name!r}, which "
                                   f"the running ramp of {release.new} sets")
            elif app is None:
                refused.append(f"deletes app {name!r}, closing its open release of {release.new!r}")
            else:
                refused.append(f"closes the open release of {name!r}: the file has no service "
                               f"{gone[0]!r}")
        for app in state.apps:
            kept = {s.name for s in given[app.name].services} if app.name in given else set()
            open_release = state.releases.get(app.name)
            if open_release is not None:  # its services are the release's, judged above
                kept |= {open_release.new, *open_release.old}
            for svc in app.services:
                if svc.name not in kept and (app.name, svc.name) in pinned:
                    refused.append(f"deletes service {svc.name!r} of {app.name!r}, which clients "
                                   "are still pinned to (recent requests by cookie)")
        if refused and not force:
            raise Conflict("apply " + "; ".join(refused) + "; apply with force to do it anyway",
                           "force")
        return new_apps, releases
    return op


@operation("keep_conflict")
def keep_state(kept: State) -> Step:
    """``kept`` (a state a replica held that the store no longer has, docs/etcd.md) becomes the
    state's apps, releases and discovered apps, in one change on top of the current state."""
    def op(state: State) -> DiscoveryOutcome:
        return kept.apps, kept.releases, kept.discovered
    return op
