"""The routing state itself: ``State`` (immutable: the apps, the open releases, the generation,
the history entry of the change that made it, where it sits among the store's lines) and its
stored form (``to_dict``, ``from_dict``; the apps as the configuration file writes them). The
operations that change it are in ``router.control.state``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..config import (
    AppConfig,
    ConfigError,
    HealthCheckConfig,
    PreviewConfig,
    ServiceConfig,
    parse_app,
)
from ..errors import NotFound
from .history import ROUTER, Change, describe, utc_now
from .release import Release


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
        its new service and when the release started (router.dataplane.table.Preview)."""
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
