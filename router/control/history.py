"""The history of the routing state: which change made each generation, who made it, and what
it changed.

Every accepted change gets one entry, the same everywhere it shows (``GET /api/v1/history``,
``routerctl history``, the router's log)::

    {"generation": 13, "time": "2026-11-29T14:03:07Z",
     "client": "127.0.0.1",          # the admin API client's address; "router" for the router's
                                     # own changes (a release marked ready, the first seed)
     "token": "sha256:1a2b3c4d",     # a fingerprint of the bearer token used, never the token;
                                     # null without one
     "operation": "set_weights",     # the operation's name (router.control.state.operation)
     "apps": ["shop"],               # the apps it changed
     "changes": ["weights web 50->0, web-v2 50->100"]}

The router's own decisions add why they were made (a ramp's judgement, with what it measured)::

     "reason": "step 1 (5%) out of bounds: errors of web-v2 20.4% (11 of 54) ..."

``changes`` is computed by :func:`describe` from the state before and the state after, never
written by the operation itself: every operation, including ones added later, gets a true
description, and two operations that do the same thing are described the same way. When an
entry covers several apps (an ``apply``), each change starts with its app's name and a colon.

The stores keep the newest :data:`HISTORY_LIMIT` entries (``docs/state.md``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from ..config import AppConfig, HealthCheckConfig, PreviewConfig, ServiceConfig, format_duration
from .ramp import Ramp, RampStatus
from .release import Release

# How many entries the stores keep, newest first; older ones are dropped as new ones come.
# About 200 bytes each: a history of this length is about 200 KB.
HISTORY_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: a client address (or "router") and a token fingerprint."""

    client: str
    token: str | None = None


#: The router itself: releases marked ready, the store seeded from the configuration file.
ROUTER = Actor("router")


def fingerprint(token: str) -> str:
    """A short, stable name for a bearer token that does not reveal it: enough to tell which
    of a few tokens made a change."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]


def utc_now() -> str:
    """RFC 3339, UTC, whole seconds: the time of an entry."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Change:
    """One history entry (see the module doc for its JSON form)."""

    generation: int
    time: str
    client: str
    token: str | None
    operation: str
    apps: tuple[str, ...]
    changes: tuple[str, ...]
    #: Why the router made this change itself (a ramp's judgement); None otherwise.
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"generation": self.generation, "time": self.time, "client": self.client,
               "token": self.token, "operation": self.operation, "apps": list(self.apps),
               "changes": list(self.changes)}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "Change":
        """The inverse of :meth:`to_dict`; ``ValueError`` naming the field otherwise."""
        if not isinstance(data, Mapping):
            raise ValueError("a history entry must be a mapping")
        gen = data.get("generation")
        if isinstance(gen, bool) or not isinstance(gen, int):
            raise ValueError(f"generation: must be an integer (got {gen!r})")
        for key in ("time", "client", "operation"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"{key}: must be a string (got {data.get(key)!r})")
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise ValueError(f"token: must be a string or null (got {token!r})")
        lists = {}
        for key in ("apps", "changes"):
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key}: must be a list of strings (got {value!r})")
            lists[key] = tuple(value)
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"reason: must be a string (got {reason!r})")
        return cls(gen, data["time"], data["client"], token, data["operation"],
                   lists["apps"], lists["changes"], reason)

    def summary(self) -> str:
        """The log line's text: ``set_weights of shop by 127.0.0.1: weights web 50->0``."""
        who = self.client if self.token is None else f"{self.client} (token {self.token})"
        text = (f"{self.operation} of {', '.join(self.apps) or '-'} by {who}: "
                f"{'; '.join(self.changes) or 'no change'}")
        return text if self.reason is None else f"{text}; because {self.reason}"


# -- what changed -----------------------------------------------------------------------------
def describe(old_apps: tuple[AppConfig, ...], old_releases: Mapping[str, Release],
             new_apps: tuple[AppConfig, ...], new_releases: Mapping[str, Release],
             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The apps that differ between two states and what differs, for people to read."""
    old = {a.name: a for a in old_apps}
    new = {a.name: a for a in new_apps}
    names = [a.name for a in old_apps] + [a.name for a in new_apps if a.name not in old]
    per_app = [(n, lines) for n in names
               if (lines := _app_changes(old.get(n), new.get(n), old_releases.get(n),
                                         new_releases.get(n)))]
    if len(per_app) == 1:
        changes = tuple(per_app[0][1])
    else:
        changes = tuple(f"{n}: {line}" for n, lines in per_app for line in lines)
    if not changes and list(old) != list(new):
        changes = (f"order of apps {_names(old)} -> {_names(new)}",)
    return tuple(n for n, _ in per_app), changes


def _app_changes(old: AppConfig | None, new: AppConfig | None, old_release: Release | None,
                 new_release: Release | None) -> list[str]:
    if old is None and new is None:
        return []
    if old is None:
        assert new is not None
        lines = [f"app added (routes {_names(new.routes)}; session_sticky "
                 f"{_on_off(new.session_sticky)}; drain_timeout {_duration(new.drain_timeout)}"
                 + (f"; preview {_preview(new.preview)}" if new.preview is not None else "")
                 + ")"]
        lines += [f"service {s.name} added ({_service(s)})" for s in new.services]
    elif new is None:
        lines = ["app deleted"]
    else:
        lines = _settings_changes(old, new) + _services_changes(old, new)
    return lines + _release_changes(old_release, new_release, new)


def _settings_changes(old: AppConfig, new: AppConfig) -> list[str]:
    lines = []
    if old.routes != new.routes:
        lines.append(f"routes {_names(old.routes)} -> {_names(new.routes)}")
    if old.session_sticky != new.session_sticky:
        lines.append(f"session_sticky {_on_off(old.session_sticky)} -> "
                     f"{_on_off(new.session_sticky)}")
    if old.drain_timeout != new.drain_timeout:
        lines.append(f"drain_timeout {_duration(old.drain_timeout)} -> "
                     f"{_duration(new.drain_timeout)}")
    if old.preview != new.preview:
        lines.append(f"preview {_preview(old.preview)} -> {_preview(new.preview)}")
    return lines


def _services_changes(old: AppConfig, new: AppConfig) -> list[str]:
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    lines = [f"service {n} deleted" for n in before if n not in after]
    lines += [f"service {n} added ({_service(s)})" for n, s in after.items() if n not in before]
    common = [n for n in before if n in after]
    weights = [f"{n} {before[n].weight}->{after[n].weight}" for n in common
               if before[n].weight != after[n].weight]
    if weights:
        lines.append("weights " + ", ".join(weights))
    for n in common:
        was, now = before[n].backends, after[n].backends
        moved = [f"+{b}" for b in now if b not in was] + [f"-{b}" for b in was if b not in now]
        if moved:
            lines.append(f"backends {n} " + ", ".join(moved))
        elif was != now:
            lines.append(f"backends {n} order {_names(was)} -> {_names(now)}")
        if before[n].health_check != after[n].health_check:
            lines.append(f"health_check {n} {_check(before[n].health_check)} -> "
                         f"{_check(after[n].health_check)}")
    if common != [n for n in after if n in before]:
        lines.append(f"order of services {_names(common)} -> "
                     f"{_names(n for n in after if n in before)}")
    return lines


def _release_changes(old: Release | None, new: Release | None, app: AppConfig | None) -> list[str]:
    if old == new:
        return []
    lines = []
    if old is not None and (new is None or new.new != old.new):
        names = {s.name for s in app.services} if app is not None else set()
        if app is None:
            how = "closed (app deleted)"
        elif old.new not in names:
            how = f"rolled back ({old.new} deleted)"
        else:
            how = f"confirmed ({_names(s for s in old.old if s not in names)} deleted)"
        lines.append(f"release of {old.new} {how}")
    if new is not None:
        if old is None or old.new != new.new:
            lines.append(f"release of {new.new} started ({new.status.value}; old: "
                         f"{_names(new.old)})")
        elif old.status != new.status:
            lines.append(f"release of {new.new} {old.status.value} -> {new.status.value}")
        if old is not None and old.new == new.new and old.ramp != new.ramp:
            lines += _ramp_changes(new.new, old.ramp, new.ramp)
        elif (old is None or old.new != new.new) and new.ramp is not None:
            lines += _ramp_changes(new.new, None, new.ramp)
    return lines


def _ramp_changes(svc: str, old: Ramp | None, new: Ramp | None) -> list[str]:
    if new is None:
        assert old is not None
        return [f"ramp of {svc} aborted at step {old.step} ({old.share}%)"]
    if old is None or old.settings != new.settings:
        st = new.settings
        return [f"ramp of {svc} started: steps {', '.join(f'{s}%' for s in st.steps)} every "
                f"{format_duration(st.interval)}; errors at most {_percent(st.max_error_rate)} "
                f"over the old version's, p{_quantile(st.quantile)} at most "
                f"{st.max_latency_ratio:g}x (above {format_duration(st.latency_floor)}); at "
                f"least {st.min_requests} requests a version, waiting {st.max_waits} intervals "
                "at most"]
    lines = []
    if old.step != new.step:
        lines.append(f"ramp of {svc} step {old.step} ({old.share}%) -> step {new.step} "
                     f"({new.share}%)" + (", done" if new.status is RampStatus.DONE else ""))
    elif old.status != new.status:
        lines.append(f"ramp of {svc} {old.status.value} -> {new.status.value}")
    if new.waits > old.waits and old.step == new.step:
        lines.append(f"ramp of {svc} waits at step {new.step} ({new.share}%): too little "
                     f"traffic to judge ({new.waits} of at most {new.settings.max_waits} "
                     "intervals)")
    return lines


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _quantile(q: float) -> str:
    """0.99 -> "99", 0.995 -> "99.5"."""
    return f"{q * 100:g}"


def _preview(p: PreviewConfig | None) -> str:
    if p is None:
        return "none"
    return f"header {p.header}: {p.value if p.value is not None else '<new service>'}"


def _service(s: ServiceConfig) -> str:
    text = f"weight {s.weight}; backends {_names(s.backends)}"
    if s.health_check is not None:
        text += f"; health_check {_check(s.health_check)}"
    return text


def _check(hc: HealthCheckConfig | None) -> str:
    if hc is None:
        return "none"
    what = f"GET {hc.path}" if hc.path is not None else "TCP connect"
    return (f"{what} every {format_duration(hc.interval)}, timeout {format_duration(hc.timeout)}, "
            f"rise {hc.rise}, fall {hc.fall}")


def _names(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items) or "none"


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _duration(seconds: float | None) -> str:
    return "none" if seconds is None else format_duration(seconds)
