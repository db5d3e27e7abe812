"""The routing state and every operation that changes it.

A ``State`` is immutable: the apps (as validated ``AppConfig`` objects), the open releases, the
generation, and the history entry of the change that made it. Each admin operation is a pure
function from the current state to the next apps and releases that raises a ``RouterError``
(with its HTTP status) instead of ever producing an invalid state. ``router.manager`` runs them,
one at a time, and stores and applies what they make.

Where the state comes from at start, and why a reload never changes it: ``docs/state.md``.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, ParamSpec

from .config import (
    AppConfig,
    ConfigError,
    HealthCheckConfig,
    PreviewConfig,
    ServiceConfig,
    parse_app,
    parse_service,
)
from .errors import Conflict, Invalid, NotFound, PreconditionFailed
from .history import ROUTER, Change, describe, utc_now
from .ramp import InvalidRamp, RampAction, RampStatus, ramp_settings, share_weights
from .release import Action, Release, ReleaseConflict
from .release import start as start_release


@dataclass(frozen=True)
class Discovered:
    """An app the Docker provider made: its compose project (or stack) and the versions it
    added to the app, kept so that a version removed through the API (a confirmed release's old
    one) is not added again while its containers still run (docs/docker.md)."""

    project: str
    services: tuple[str, ...]


# The line of states stored before states had lines: they were all on one.
LEGACY_LINE = "0"


def new_line() -> str:
    """A line's name: random, so that two replicas never start the same one."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class State:
    generation: int
    apps: tuple[AppConfig, ...] = ()
    releases: Mapping[str, Release] = field(default_factory=dict)
    # The generation at which each app last changed: its ETag.
    app_generations: Mapping[str, int] = field(default_factory=dict)
    # The history entry of the change that made this state (None in states stored before
    # there was a history).
    change: Change | None = None
    # Apps that discovery made, by name; only discovery's own operations change it.
    discovered: Mapping[str, Discovered] = field(default_factory=dict)
    # Where this state sits among every state a store ever held (docs/etcd.md, "Lines"): the
    # line of consecutive generations it is on, and the lines it came from, each with the last
    # generation taken from it. (line, generation) names one state.
    line: str = LEGACY_LINE
    forks: tuple[tuple[str, int], ...] = ()
    # When this state was written back to a store that had lost its data (None: it was not):
    # the next change starts a new line.
    written_back: str | None = None

    @classmethod
    def initial(cls, apps: tuple[AppConfig, ...]) -> "State":
        """Generation 1: the configuration file's apps, which seed an empty store."""
        touched, changes = describe((), {}, apps, {})
        return cls(1, apps, {}, {a.name: 1 for a in apps},
                   Change(1, utc_now(), ROUTER.client, None, "seed", touched, changes),
                   line=new_line())

    @property
    def name(self) -> str:
        """``generation 12 (line 5f0c1a2b)``: one state, in messages."""
        return f"generation {self.generation} (line {self.line})"

    def holds(self, other: "State") -> bool:
        """Whether ``other`` is this state or one it was made from: every change of ``other``
        is in this one. Lines are linear (one store history each), so ``other`` is an ancestor
        exactly when it sits on a line this state came through, at or before where it left."""
        return any(other.line == line and other.generation <= last
                   for line, last in (*self.forks, (self.line, self.generation)))

    @property
    def bare_seed(self) -> bool:
        """A store seeded from a configuration file and never changed: it holds no change an
        operator made."""
        return (self.generation == 1 and not self.forks and self.change is not None
                and self.change.operation == "seed")

    def app(self, name: str) -> AppConfig:
        for a in self.apps:
            if a.name == name:
                return a
        raise NotFound(f"no app {name!r}", "app")

    def has_app(self, name: str) -> bool:
        return any(a.name == name for a in self.apps)

    def previews(self) -> dict[str, tuple[str, str]]:
        """What the data plane needs for preview routing: for each app with an open release,
        its new service and when the release started (router.table.Preview)."""
        return {name: (r.new, r.started_at) for name, r in self.releases.items()}

    def to_dict(self) -> dict[str, Any]:
        """The store's format: the configuration file's ``apps`` plus releases, generations and
        the last change (and the apps discovery made, if any)."""
        data = {
            "generation": self.generation,
            "apps": {a.name: app_to_dict(a) for a in self.apps},
            "releases": {name: r.to_dict() for name, r in self.releases.items()},
            "app_generations": dict(self.app_generations),
            "change": self.change.to_dict() if self.change is not None else None,
        }
        if self.discovered:
            data["discovered"] = {name: {"project": d.project, "services": list(d.services)}
                                  for name, d in self.discovered.items()}
        data["line"] = self.line
        if self.forks:
            data["forks"] = [[line, last] for line, last in self.forks]
        if self.written_back is not None:
            data["written_back"] = self.written_back
        incarnations = {a.name: {s.name: s.incarnation for s in a.services if s.incarnation}
                        for a in self.apps}
        if any(incarnations.values()):
            data["incarnations"] = {n: i for n, i in incarnations.items() if i}
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "State":
        if not isinstance(data, dict) or not isinstance(data.get("generation"), int):
            raise ConfigError("generation", "must be an integer", data, source)
        apps_data = data.get("apps") or {}
        if not isinstance(apps_data, dict):
            raise ConfigError("apps", "must be a mapping", apps_data, source)
        apps = tuple(parse_app(n, a, None, f"apps.{n}", source) for n, a in apps_data.items())
        apps = _stored_incarnations(apps, data.get("incarnations"), source)
        releases = {}
        for name, r in (data.get("releases") or {}).items():
            try:
                releases[name] = Release.from_dict(r, f"releases.{name}")
            except ValueError as e:
                raise ConfigError(f"releases.{name}", str(e), r, source) from None
        gens = {n: int(g) for n, g in (data.get("app_generations") or {}).items()}
        change = None
        if data.get("change") is not None:
            try:
                change = Change.from_dict(data["change"])
            except ValueError as e:
                raise ConfigError("change", str(e), data["change"], source) from None
        discovered = {}
        for name, d in (data.get("discovered") or {}).items():
            if (not isinstance(d, dict) or not isinstance(d.get("project"), str)
                    or not isinstance(d.get("services"), list)
                    or not all(isinstance(s, str) for s in d["services"])):
                raise ConfigError(f"discovered.{name}", "must be {project: str, services: [str]}",
                                  d, source)
            discovered[name] = Discovered(d["project"], tuple(d["services"]))
        line = data.get("line", LEGACY_LINE)
        if not isinstance(line, str) or not line:
            raise ConfigError("line", "must be a non-empty string", line, source)
        forks = data.get("forks") or []
        if (not isinstance(forks, list)
                or not all(isinstance(f, list) and len(f) == 2 and isinstance(f[0], str)
                           and isinstance(f[1], int) and not isinstance(f[1], bool)
                           for f in forks)):
            raise ConfigError("forks", "must be a list of [line, generation]", forks, source)
        written_back = data.get("written_back")
        if written_back is not None and not isinstance(written_back, str):
            raise ConfigError("written_back", "must be a timestamp or null", written_back, source)
        return cls(data["generation"], apps, releases, gens, change, discovered, line,
                   tuple((f[0], f[1]) for f in forks), written_back)


def _stored_incarnations(apps: tuple[AppConfig, ...], data: Any,
                        source: str) -> tuple[AppConfig, ...]:
    """``apps`` with the incarnations a stored state names (``{app: {service: generation}}``)."""
    if data is None:
        return apps
    if not isinstance(data, dict):
        raise ConfigError("incarnations", "must be a mapping of apps to {service: generation}",
                          data, source)
    out = []
    for app in apps:
        known = data.get(app.name, {})
        if not isinstance(known, dict) or not all(
                isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in known.values()):
            raise ConfigError(f"incarnations.{app.name}", "must be {service: generation}", known,
                              source)
        out.append(replace(app, services=tuple(replace(s, incarnation=known.get(s.name, 0))
                                               for s in app.services)))
    return tuple(out)


def incarnate(old: tuple[AppConfig, ...], new: tuple[AppConfig, ...],
              generation: int) -> tuple[AppConfig, ...]:
    """``new`` with each service's incarnation: the one it had in ``old`` if its app had a
    service of that name there (new weights or backends do not make a new service), else
    ``generation``, the change that adds it. So a service deleted and added again later under
    the same name (blue, green, blue) is a new incarnation, and the cookies pinned to the old
    one re-pin rather than reach the new one at weight 0. Kept in the stored state, so the same
    on every replica and after a restart."""
    before = {(a.name, s.name): s.incarnation for a in old for s in a.services}
    out = []
    for app in new:
        services = tuple(
            s if s.incarnation == (n := before.get((app.name, s.name), generation))
            else replace(s, incarnation=n)
            for s in app.services)
        out.append(app if services == app.services else replace(app, services=services))
    return tuple(out)


def health_check_to_dict(hc: HealthCheckConfig | None) -> dict[str, Any] | None:
    if hc is None:
        return None
    return {"path": hc.path, "interval": hc.interval, "timeout": hc.timeout,
            "rise": hc.rise, "fall": hc.fall}


def service_to_dict(svc: ServiceConfig) -> dict[str, Any]:
    return {"weight": svc.weight, "backends": list(svc.backends),
            "health_check": health_check_to_dict(svc.health_check)}


def preview_to_dict(preview: PreviewConfig | None) -> dict[str, Any] | None:
    if preview is None:
        return None
    return {"header": preview.header, "value": preview.value}


def app_to_dict(app: AppConfig) -> dict[str, Any]:
    return {
        "routes": [str(r) for r in app.routes],
        "session_sticky": app.session_sticky,
        "drain_timeout": app.drain_timeout,
        "preview": preview_to_dict(app.preview),
        "services": {s.name: service_to_dict(s) for s in app.services},
    }


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
# (``router.transition.next_state``).
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
    data plane at once and is stored once the store answers (``router.manager``), by running
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


# -- the ramp (router.release, "The guarded ramp"; docs/release-ramp.md) ----------------------
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
    """The router's judgement of step ``step`` of the ramp of ``new`` (router.rampjudge), with its
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
