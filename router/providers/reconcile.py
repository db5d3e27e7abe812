"""How what Docker runs and the routing state combine: one pure operation on the state.

Discovery says what exists (versions and their ready backends); the store keeps what operators
decided (weights, releases). ``reconcile`` brings the state's apps in line with the first
without touching the second, using the admin API's own operations so that every rule they
check (routes owned by one app, one open release, a new version at weight 0) holds here too.
docs/docker.md tells the rules as an operator sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..config import AppConfig, HealthCheckConfig, Route
from ..errors import Conflict, RouterError
from ..control.state import (
    Discovered,
    DiscoveryOutcome,
    State,
    delete_app,
    health_check_to_dict,
    patch_app,
    put_app,
    put_service,
    start,
)
from .discovery import Version


@dataclass(frozen=True, slots=True)
class Found:
    """A version and the addresses of its instances that are ready for traffic (sorted)."""

    version: Version
    backends: tuple[str, ...]


class NothingToDo(Conflict):
    """The state already matches what runs (another replica wrote it first)."""


def components(found: list[Found]) -> list[list[Found]]:
    """Versions of one project that share a route are versions of one app (oldest first)."""
    by_project: dict[str, list[Found]] = {}
    for f in found:
        by_project.setdefault(f.version.project, []).append(f)
    result = []
    for project in sorted(by_project):
        groups: list[list[Found]] = []
        for f in sorted(by_project[project], key=lambda f: (f.version.created, f.version.name)):
            routes = set(f.version.routes)
            joined = [g for g in groups if any(routes & set(o.version.routes) for o in g)]
            merged = [f]
            for g in joined:
                merged = g + merged
                groups.remove(g)
            merged.sort(key=lambda f: (f.version.created, f.version.name))
            groups.append(merged)
        result.extend(sorted(groups, key=lambda g: (g[0].version.created, g[0].version.name)))
    return result


class _Work:
    """The state being built: each step runs one admin operation on it."""

    def __init__(self, state: State) -> None:
        self.generation = state.generation
        self.apps = state.apps
        self.releases = dict(state.releases)
        self.discovered = dict(state.discovered)
        self.done: list[str] = []  # what was changed, for the log

    def state(self) -> State:
        return State(self.generation, self.apps, self.releases, {}, discovered=self.discovered)

    def run(self, op: Any, what: str) -> None:
        outcome = op(self.state())
        self.apps, self.releases = outcome[0], dict(outcome[1])
        self.done.append(what)

    def app(self, name: str) -> AppConfig | None:
        return next((a for a in self.apps if a.name == name), None)

    def routes(self, name: str) -> tuple[Route, ...]:
        app = self.app(name)
        return app.routes if app is not None else ()


def _service_body(weight: int, backends: tuple[str, ...],
                  health_check: HealthCheckConfig | None) -> dict[str, Any]:
    return {"weight": weight, "backends": list(backends),
            "health_check": health_check_to_dict(health_check)}


def version_check(version: Version, health_check: HealthCheckConfig | None,
                  ) -> HealthCheckConfig | None:
    """The health check of a version's service: the provider's, with the path of the
    version's ``aliyun.routing.health_check`` label if it has one."""
    if version.health_path is None:
        return health_check
    return replace(health_check or HealthCheckConfig(), path=version.health_path)


def _what(version: Version) -> str:
    if not version.project:
        return f"container {version.name}"
    return f"project {version.project}, service {version.name}"


def reconcile(state: State, found: list[Found], health_check: HealthCheckConfig | None,
              notes: list[str], done: list[str] | None = None,
              delete_empty: bool = False) -> DiscoveryOutcome | None:
    """The state's apps, releases and ``discovered`` after bringing them in line with
    ``found``; None when nothing changes. Why an app or version was left out goes to
    ``notes``, what was changed to ``done``. ``delete_empty``: an app none of whose versions
    is found any more (every container removed) is deleted, rather than kept with no
    backends (providers.docker.empty_apps)."""
    work = _Work(state)
    if done is not None:
        work.done = done
    claimed: set[str] = set()
    for comp in components(found):
        project = comp[0].version.project
        names = {f.version.name for f in comp}
        routes = {r for f in comp for r in f.version.routes}
        owner = next((n for n, d in work.discovered.items()
                      if d.project == project and names & set(d.services)), None)
        if owner is None:  # the app's versions are all gone, and a new one claims its routes
            owner = next((n for n, d in work.discovered.items()
                          if d.project == project and n not in claimed
                          and routes & set(work.routes(n))), None)
        if owner is None:
            owner = _create(work, comp, health_check, notes)
            if owner is None:
                continue
        claimed.add(owner)
        if work.app(owner) is None:
            continue  # deleted through the API while its containers run: left alone
        try:
            _sync(work, owner, comp, health_check, notes)
        except RouterError as e:
            notes.append(f"app {owner}: {e.message}")
    for name in list(work.discovered):
        if name not in claimed:
            _vanished(work, name, delete_empty)
    if (work.apps == state.apps and work.releases == state.releases
            and work.discovered == state.discovered):
        return None
    return work.apps, work.releases, work.discovered


def _create(work: _Work, comp: list[Found], health_check: HealthCheckConfig | None,
            notes: list[str]) -> str | None:
    """A new app for ``comp`` from its oldest version with a ready backend; its name."""
    ready = [f for f in comp if f.backends]
    if not ready:
        return None  # nothing to route to yet
    first = ready[0].version
    taken = {a.name for a in work.apps} | set(work.discovered)
    # A container without a project is an app named after it.
    names = (first.project, f"{first.project}-{first.name}") if first.project else (first.name,)
    name = next((n for n in names if n not in taken), None)
    if name is None or len(name) > 63:
        notes.append(f"{_what(first)}: no free app name ({' and '.join(names)} "
                     f"{'are' if len(names) > 1 else 'is'} taken)")
        return None
    body: dict[str, Any] = {
        "routes": [str(r) for r in first.routes],
        "services": {first.name: _service_body(100, ready[0].backends,
                                               version_check(first, health_check))},
    }
    if first.sticky is not None:
        body["session_sticky"] = first.sticky
    try:
        origin = (f"version {first.name} of project {first.project}" if first.project
                  else f"container {first.name}")
        work.run(put_app(name, body), f"app {name}: made from {origin}, backends "
                 f"{', '.join(ready[0].backends)}")
    except RouterError as e:
        notes.append(f"{_what(first)}: not routed: {e.message}")
        return None
    work.discovered[name] = Discovered(first.project, (first.name,))
    return name


def _sync(work: _Work, name: str, comp: list[Found], health_check: HealthCheckConfig | None,
          notes: list[str]) -> None:
    known = work.discovered[name]
    app = work.app(name)
    assert app is not None
    in_app = {s.name: s for s in app.services}
    by_name = {f.version.name: f for f in comp}
    services = list(known.services)
    # Versions in the app: their backends are what runs now, their health check the label's
    # path if they have one. A same-named service that an operator added by hand is taken over.
    for f in comp:
        svc = in_app.get(f.version.name)
        if svc is None:
            continue
        if f.version.name not in services:
            services.append(f.version.name)
        check = (version_check(f.version, svc.health_check) if f.version.health_path
                 else svc.health_check)
        if svc.backends != f.backends or check != svc.health_check:
            what = f"backends {', '.join(f.backends) or 'none'}"
            if check != svc.health_check:
                what += f", health check {check.path if check else None} (label)"
            work.run(put_service(name, svc.name, _service_body(svc.weight, f.backends, check)),
                     f"app {name}: {svc.name}: {what}")
    for svc_name in list(services):
        if svc_name in by_name:
            continue
        svc = in_app.get(svc_name)
        if svc is None:
            services.remove(svc_name)  # removed through the API, and now its containers too
        elif svc.backends:
            # Every container gone: no backends, the weight kept for when they come back.
            work.run(put_service(name, svc_name, _service_body(svc.weight, (), svc.health_check)),
                     f"app {name}: {svc_name}: its containers are gone; weight {svc.weight} kept")
    # A version never seen before is a new version: a release at weight 0, one at a time.
    for f in comp:
        if f.version.name in services or f.version.name in in_app:
            continue
        if name in work.releases:
            notes.append(f"app {name}: version {f.version.name} waits for the open release of "
                         f"{work.releases[name].new} to be confirmed or rolled back")
            break
        if not f.backends:
            continue  # no ready container yet
        work.run(start(name, {"service": f.version.name, "backends": list(f.backends),
                              "health_check": health_check_to_dict(
                                  version_check(f.version, health_check))}),
                 f"app {name}: new version {f.version.name}: release opened at weight 0")
        services.append(f.version.name)
        break
    work.discovered[name] = replace(known, services=tuple(services))
    app = work.app(name)
    assert app is not None
    _labels(work, name, [f.version for s in app.services if (f := by_name.get(s.name)) is not None
                         and (f.backends or f.version.instances)])


def _labels(work: _Work, name: str, versions: list[Version]) -> None:
    """Routes and stickiness follow the labels of the app's versions that run."""
    app = work.app(name)
    if app is None or not versions:
        return
    routes = list(dict.fromkeys(r for v in versions for r in v.routes))
    sticky = next((v.sticky for v in versions if v.sticky is not None), app.session_sticky)
    if tuple(routes) != app.routes or sticky != app.session_sticky:
        work.run(patch_app(name, {"routes": [str(r) for r in routes], "session_sticky": sticky}),
                 f"app {name}: routes {', '.join(map(str, routes))}, sticky {sticky} (labels)")


def _vanished(work: _Work, name: str, delete_empty: bool) -> None:
    """No container of the app exists (in Swarm mode: no service): no backends (weights
    kept), or the app deleted with ``delete_empty``; forgotten if the app was deleted."""
    app = work.app(name)
    if app is not None and delete_empty:
        work.run(delete_app(name), f"app {name}: deleted: none of its containers exists "
                 "(providers.docker.empty_apps: delete)")
        app = None
    if app is None:
        del work.discovered[name]
        return
    known = work.discovered[name]
    keep = tuple(s for s in known.services if any(x.name == s for x in app.services))
    for svc in app.services:
        if svc.name in keep and svc.backends:
            work.run(put_service(name, svc.name, _service_body(svc.weight, (), svc.health_check)),
                     f"app {name}: {svc.name}: its containers are gone; weight {svc.weight} kept")
    if keep != known.services:
        work.discovered[name] = replace(known, services=keep)
