"""What an operation makes of the routing state (pure): ``next_state`` checks ``If-Match``, gives
the new state its generation (on a new line after a data loss) and its history entry; and a safe
change in effect that the store has not taken yet (``Unstored``) is run again, with ``rerun``, on
the state the store holds then (``router.control.manager`` runs them, stores them, makes them live).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from ..errors import BadRequest, Conflict, PreconditionFailed
from .history import Actor, Change, describe, utc_now
from .state import Operation, State, incarnate, new_line


def parse_etag(value: str) -> int | None:
    """``"12"`` or ``W/"12"`` -> 12; ``*`` -> None (matches anything)."""
    v = value.strip()
    if v == "*":
        return None
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not v.isdigit():
        raise BadRequest(f"If-Match must be an ETag like \"12\" or * (got {value!r})", "If-Match")
    return int(v)


@dataclass(frozen=True, slots=True)
class Unstored:
    """A safe change in effect in the data plane that the store has not taken yet."""

    op: Operation
    actor: Actor
    #: The state it was first applied to: it is stored only while the releases of the apps it
    #: changed are still the ones it was applied to.
    base: State
    #: Its history entry as first applied (the generation in it is not one yet).
    change: Change
    #: When it took effect.
    at: str

    def to_dict(self) -> dict[str, Any]:
        """Its history entry as the API shows it: no generation, ``"stored": false``."""
        return {**self.change.to_dict(), "generation": None, "time": self.at, "stored": False}

    def summary(self) -> str:
        return f"{self.change.summary()} (in effect since {self.at})"


def _release_of(state: State, app: str) -> tuple[str, str] | None:
    release = state.releases.get(app)
    return (release.new, release.started_at) if release is not None else None


def rerun(p: Unstored, state: State) -> State | None:
    """``p`` run again on ``state``: the state it makes (with a reason saying since when it is
    in effect), None if it changes nothing there; a RouterError if it no longer applies --
    among others when a release it changed is not the one it was applied to."""
    for app in p.change.apps:
        if _release_of(p.base, app) != _release_of(state, app):
            raise Conflict(f"the release of {app} changed meanwhile", "release")
    new = next_state(state, p.op.rerun or p.op, None, None, p.actor)
    if new is state:
        return None
    assert new.change is not None
    since = f"in effect since {p.at}, while the store could not be written"
    reason = f"{new.change.reason}; {since}" if new.change.reason else since
    return replace(new, change=replace(new.change, reason=reason))


def next_state(cur: State, op: Operation, if_match: str | None, etag_app: str | None,
                actor: Actor) -> State:
    """The state ``op`` makes of ``cur`` (``cur`` itself if it changes nothing); a RouterError
    if refused."""
    # The operation first: a request that would be refused anyway (bad body, unknown service,
    # conflict) gets that answer rather than a 412.
    outcome = op(cur)
    # Services keep their incarnation (router.control.state.incarnate); a new one's is the generation,
    # known below (a new service is a change anyway).
    apps, releases = incarnate(cur.apps, outcome[0], 0), outcome[1]
    discovered = outcome[2] if len(outcome) == 3 else cur.discovered
    if if_match is not None:
        want = parse_etag(if_match)
        if want is not None:
            have = (cur.app_generations.get(etag_app, cur.generation)
                    if etag_app is not None and cur.has_app(etag_app) else cur.generation)
            if want != have:
                raise PreconditionFailed(
                    f"stale If-Match: {want} is not the current generation {have}", "If-Match")
    if apps == cur.apps and releases == cur.releases and discovered == cur.discovered:
        return cur
    if cur.written_back is not None:
        # The first change to a state written back after a data loss starts a new line, at a
        # generation no state of another line can have (docs/etcd.md, "Lines").
        gen = max(cur.generation + 1, line_start())
        line, forks = new_line(), (*cur.forks, (cur.line, cur.generation))
    else:
        gen, line, forks = cur.generation + 1, cur.line, cur.forks
    apps = incarnate(cur.apps, apps, gen)
    touched, changes = describe(cur.apps, cur.releases, apps, releases)
    names = {a.name for a in apps}
    app_gens = {n: g for n, g in cur.app_generations.items() if n in names}
    app_gens.update((n, gen) for n in touched if n in names)
    change = Change(gen, utc_now(), actor.client, actor.token, op.name, touched, changes,
                    op.reason)
    return State(gen, apps, dict(releases), app_gens, change, dict(discovered), line, forks)


def line_start() -> int:
    """Where a new line's generations start: the Unix time in milliseconds. A line starts with
    the first change after a data loss, and changes wait 3 s after one (etcd's RESEED_HOLD): a
    line would need more than a change a millisecond to reach the next one's start, so no two
    states share a generation (docs/etcd.md, "Lines")."""
    return int(time.time() * 1000)
