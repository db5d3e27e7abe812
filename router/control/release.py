"""The blue-green release of one app: its statuses and the transition table (docs/behaviour.md, "Words").

This module is pure -- no I/O, no clock unless asked, no locks -- and mostly explanation, in the
spirit of h11's ``_state.py``: the rules of the lifecycle are written down once, here, as a table,
and everything else (the admin API, the health checker, the store) asks this table instead of
re-deciding them.

The lifecycle
-------------

A release starts when an operator adds a new version of a service next to the running ones
(``POST /api/v1/apps/{app}/release``).  :func:`start` records

* ``old``: every service the app had at that moment, in the app's order -- they are what a
  confirm deletes;
* ``new``: the new service, which the admin layer adds with weight 0 so that no client reaches it
  before the operator moves weight onto it;
* ``old_weights``: the old services' weights at that moment -- what a rollback restores, whatever
  the operator did with the weights in between;
* ``started_at``, for people reading ``release status``.

The release then moves between two open statuses::

                      NOT_READY                            READY
                    +-----------+                      +-----------+
                    |           v          READY       |           v
    start() --> IN_PROGRESS ----------------------> AWAITING_CONFIRMATION
                    |   ^                                  |   |   |
                    |   +------------ NOT_READY -----------+   |   |
                    |                                          |   |
                    +-- ROLLBACK --> CLOSED <-- ROLLBACK ------+   |
                                       ^                           |
                                       +-------- CONFIRM ----------+

``IN_PROGRESS``
    Not every backend of the new service has passed its health check yet (an HTTP check when the
    service has one, a TCP connect otherwise).  Weights may already be moved -- the balancer only
    ever sends requests to healthy backends -- but the release cannot be confirmed: confirming
    deletes the old services, and with a new version that has not proven it can answer, that
    could leave the app with nothing to serve.  This holds even for ``{"force": true}``: force
    only moves the weight before confirming, it does not skip the check.  The admin layer must
    therefore ask the table *before* it moves any weight, so that a refused forced confirm
    changes nothing.

``AWAITING_CONFIRMATION``
    Every backend of the new service has passed its check.  The operator shifts weight (in one
    step or several) and then confirms or rolls back.  If the new service's backends change (one
    is added that has not passed yet), the health layer reports ``NOT_READY`` and the release
    goes back to ``IN_PROGRESS``: the guarantee "confirm only after every new backend passed" is
    about the backends as they are now, not as they were.  Whether a backend that passed and
    later fails takes the release back too is the health layer's decision; the table allows it.

``CLOSED``
    Confirmed (old services deleted) or rolled back (new service deleted, ``old_weights``
    restored).  A closed release is not kept: :meth:`Release.apply` returns ``None`` and the
    app's ``release`` becomes ``null``, which frees the app for its next release.  ``CLOSED``
    exists in the table only so that "nothing is allowed any more" is stated rather than implied.

``READY`` and ``NOT_READY`` are reported by the health layer and are idempotent: reporting the
state the release is already in is not an error, because health results arrive on their own
schedule and must not have to know what the previous report was.  ``CONFIRM`` and ``ROLLBACK``
come from operators; ``ROLLBACK`` is allowed from both open statuses, because backing out must
always be possible.

The guarded ramp
----------------

An open release may carry a *ramp* (``router.control.ramp``: its lifecycle and settings;
``router.control.rampjudge``: the judgement of its steps): the router raises the new version's share
step by step.  ``ADVANCE`` and ``FINISH`` take the new version further, so they need the
release to be ``AWAITING_CONFIRMATION``; ``FAIL`` is the release's ``ROLLBACK``; a ``CONFIRM``
or ``ROLLBACK`` of the release ends its ramp with it (:meth:`Release.apply_ramp`).  The ramp is
part of the release object, so it is stored with it.

Every illegal move raises :class:`ReleaseConflict`, the one error type of this module that the
admin API maps to ``409``.  Malformed data (a corrupt state file) raises ``ValueError`` instead:
it is not a conflict between an operator and the state, it is a state that cannot exist.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from ..config import NAME_RE
from ..config.scalars import format_timestamp, parse_timestamp, value_error
from .ramp import NEEDS_READY, RAMP_TRANSITIONS, Ramp, RampAction, RampSettings, RampStatus

__all__ = [
    "TRANSITIONS",
    "Action",
    "Backend",
    "Readiness",
    "Release",
    "ReleaseConflict",
    "Status",
    "readiness",
    "start",
]


class Status(str, enum.Enum):
    """Where a release stands; the value is what the admin API and the state file show."""

    #: The new service is started; not every one of its backends has passed its health check.
    IN_PROGRESS = "in_progress"
    #: Every backend of the new service has passed its check; waiting for confirm or rollback.
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    #: Confirmed or rolled back.  Never stored: the release object is removed.
    CLOSED = "closed"


class Action(str, enum.Enum):
    """What can happen to a release."""

    #: Every backend of the new service has passed its health check (health layer).
    READY = "ready"
    #: The new service's backends changed, or one has not passed yet (health layer).
    NOT_READY = "not_ready"
    #: The operator keeps the new version: the old services are deleted.
    CONFIRM = "confirm"
    #: The operator backs out: the new service is deleted, the old weights are restored.
    ROLLBACK = "rollback"


class ReleaseConflict(Exception):
    """An action the release's lifecycle does not allow now (the admin API answers ``409``).

    ``status`` and ``action`` name the refused move; both are ``None`` when the conflict is about
    starting a release (one is already open, or the new service's name is taken).
    """

    def __init__(
        self, message: str, status: Status | None = None, action: Action | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.action = action


# The whole lifecycle.  A pair that is absent is illegal.
TRANSITIONS: dict[Status, dict[Action, Status]] = {
    Status.IN_PROGRESS: {
        Action.READY: Status.AWAITING_CONFIRMATION,
        Action.NOT_READY: Status.IN_PROGRESS,
        # No CONFIRM: the old services may only go once the new one has proven it answers.
        Action.ROLLBACK: Status.CLOSED,
    },
    Status.AWAITING_CONFIRMATION: {
        Action.READY: Status.AWAITING_CONFIRMATION,
        Action.NOT_READY: Status.IN_PROGRESS,
        Action.CONFIRM: Status.CLOSED,
        Action.ROLLBACK: Status.CLOSED,
    },
    Status.CLOSED: {},
}

# How an action reads in "cannot <verb> a release that is <status>".
_VERBS = {
    Action.READY: "mark ready",
    Action.NOT_READY: "mark not ready",
    Action.CONFIRM: "confirm",
    Action.ROLLBACK: "roll back",
}


def _conflict(status: Status, action: Action, new: str) -> ReleaseConflict:
    message = f"cannot {_VERBS[action]} a release that is {status.value}"
    if status is Status.IN_PROGRESS and action is Action.CONFIRM:
        message += (f": wait until every backend of {new} has passed its health check"
                    " (or roll back)")
    elif status is Status.CLOSED:
        message += ": it was already confirmed or rolled back"
    return ReleaseConflict(message, status, action)


def _next(status: Status, action: Action, new: str) -> Status:
    try:
        return TRANSITIONS[status][action]
    except KeyError:
        raise _conflict(status, action, new) from None




def _is_weight(value: object) -> bool:
    # bool is an int subclass; True is not a weight.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100


_RAMP_VERBS = {
    RampAction.START: "start a ramp of",
    RampAction.ADVANCE: "advance the ramp of",
    RampAction.FINISH: "finish the ramp of",
    RampAction.HOLD: "hold the ramp of",
    RampAction.PAUSE: "pause the ramp of",
    RampAction.RESUME: "resume the ramp of",
    RampAction.ABORT: "abort the ramp of",
    RampAction.FAIL: "fail the ramp of",
}


_KEYS = ("old", "new", "status", "started_at", "old_weights", "ramp")
# Statuses a stored release can have: a closed release is removed, never stored.
_OPEN = (Status.IN_PROGRESS, Status.AWAITING_CONFIRMATION)


@dataclass(frozen=True, slots=True)
class Release:
    """One open blue-green release of an app (immutable; every action builds a new one)."""

    #: The old services (every other service of the app when the release started), app order.
    old: tuple[str, ...]
    #: The new service.
    new: str
    #: Never ``CLOSED``: a closed release is removed (:meth:`apply` returns ``None``).
    status: Status
    #: RFC 3339, UTC, whole seconds: ``"2026-11-26T14:33:18Z"``.
    started_at: str
    #: The old services' weights when the release started, in ``old`` order, for rollback.
    old_weights: tuple[tuple[str, int], ...]
    #: The guarded ramp raising the new version's share, if one was asked for.
    ramp: Ramp | None = None

    def to_dict(self) -> dict[str, object]:
        """The release object of the admin API (also what the state file stores)."""
        return {
            "old": list(self.old),
            "new": self.new,
            "status": self.status.value,
            "started_at": self.started_at,
            "old_weights": dict(self.old_weights),
            "ramp": self.ramp.to_dict() if self.ramp is not None else None,
        }

    @classmethod
    def from_dict(cls, d: object, path: str = "release") -> Release:
        """The inverse of :meth:`to_dict`, strict: ``ValueError`` naming ``path.field`` otherwise.

        Used when loading the state file, so it trusts nothing: exact keys, types, names,
        statuses, a real timestamp, and ``old_weights`` covering exactly the ``old`` services.
        A timestamp with another offset is accepted and normalised to UTC; a ``datetime`` is
        accepted too, because YAML turns an unquoted timestamp into one.
        """
        if not isinstance(d, Mapping):
            raise value_error(path, "must be a mapping", d)
        for key in d:
            if key not in _KEYS:
                raise value_error(f"{path}.{key}", "unknown key", d[key])
        for key in _KEYS:
            if key not in d and key != "ramp":  # stored before there were ramps
                raise ValueError(f"{path}.{key}: missing")

        raw_old = d["old"]
        if not isinstance(raw_old, list):
            raise value_error(f"{path}.old", "must be a list of service names", raw_old)
        old: list[str] = []
        for i, name in enumerate(raw_old):
            where = f"{path}.old[{i}]"
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise value_error(where, "must be a service name", name)
            if name in old:
                raise value_error(where, "duplicate service", name)
            old.append(name)

        new = d["new"]
        if not isinstance(new, str) or not NAME_RE.match(new):
            raise value_error(f"{path}.new", "must be a service name", new)
        if new in old:
            raise value_error(f"{path}.new", "must not be one of the old services", new)

        raw_status = d["status"]
        if not isinstance(raw_status, str) or raw_status not in [s.value for s in _OPEN]:
            raise value_error(f"{path}.status", "must be in_progress or awaiting_confirmation",
                              raw_status)
        status = Status(raw_status)

        raw_time = d["started_at"]
        if isinstance(raw_time, datetime):
            if raw_time.tzinfo is None or raw_time.utcoffset() is None:
                raise value_error(f"{path}.started_at",
                                  "must be an RFC 3339 timestamp with an offset", raw_time)
            moment = raw_time
        elif isinstance(raw_time, str):
            try:
                moment = parse_timestamp(raw_time)
            except ValueError:
                raise value_error(f"{path}.started_at", "must be an RFC 3339 timestamp",
                                  raw_time) from None
        else:
            raise value_error(f"{path}.started_at", "must be an RFC 3339 timestamp", raw_time)

        raw_weights = d["old_weights"]
        if not isinstance(raw_weights, Mapping):
            raise value_error(f"{path}.old_weights", "must be a mapping of service to weight",
                              raw_weights)
        for name, weight in raw_weights.items():
            if name not in old:
                raise value_error(f"{path}.old_weights.{name}", "is not one of the old services",
                                  weight)
            if not _is_weight(weight):
                raise value_error(f"{path}.old_weights.{name}", "must be an integer 0..100", weight)
        for name in old:
            if name not in raw_weights:
                raise ValueError(f"{path}.old_weights.{name}: missing")

        raw_ramp = d.get("ramp")
        return cls(
            old=tuple(old),
            new=new,
            status=status,
            started_at=format_timestamp(moment),
            old_weights=tuple((name, raw_weights[name]) for name in old),
            ramp=Ramp.from_dict(raw_ramp, f"{path}.ramp") if raw_ramp is not None else None,
        )

    def apply(self, action: Action) -> Release | None:
        """The release after ``action``, or ``None`` once it is closed.

        Raises :class:`ReleaseConflict` (naming the new service) if the table refuses it.
        """
        status = _next(self.status, action, self.new)
        if status is Status.CLOSED:
            return None
        if status is self.status:
            return self
        return replace(self, status=status)

    def apply_ramp(self, action: RampAction, now: datetime | None = None, *,
                   settings: RampSettings | None = None,
                   reason: str | None = None) -> Release | None:
        """The release after ``action`` on its ramp, or ``None`` once it is closed (``FAIL``
        rolls it back).

        ``START`` takes ``settings``; ``reason`` is kept as the ramp's last reason.  Raises
        :class:`ReleaseConflict` if :data:`RAMP_TRANSITIONS` refuses the move, or the move puts
        weight on a new version whose backends have not all passed their checks.
        """
        ramp = self.ramp
        current = ramp.status if ramp is not None else None
        to = RAMP_TRANSITIONS[current].get(action, _REFUSED)
        if to is _REFUSED:
            raise self._ramp_conflict(current, action)
        if action in NEEDS_READY and self.status is not Status.AWAITING_CONFIRMATION:
            raise ReleaseConflict(
                f"cannot {_RAMP_VERBS[action]} {self.new} while the release is "
                f"{self.status.value}: wait until every backend of {self.new} has passed its "
                "health check", self.status)
        if action is RampAction.FAIL:
            return self.apply(Action.ROLLBACK)
        if to is None:
            return replace(self, ramp=None)
        assert isinstance(to, RampStatus)
        when = format_timestamp(now if now is not None else datetime.now(timezone.utc))
        if action is RampAction.START:
            if settings is None:
                raise ValueError("START needs the ramp's settings")
            return replace(self, ramp=Ramp(settings, to, 0, 0, when, reason))
        assert ramp is not None
        if action in NEEDS_READY:
            if action is not ramp.next_move():
                raise ValueError(f"{action.value} at step {ramp.step} of {len(ramp.settings.steps)}:"
                                 f" the move is {ramp.next_move().value}")
            step = ramp.step + 1 if action is RampAction.ADVANCE else ramp.step
            return replace(self, ramp=replace(ramp, status=to, step=step, waits=0,
                                              since=when, reason=reason))
        if action is RampAction.HOLD:
            return replace(self, ramp=replace(ramp, waits=ramp.waits + 1, reason=reason))
        if to is ramp.status:  # PAUSE of a paused ramp, RESUME of a running one
            return self
        # PAUSE, RESUME
        return replace(self, ramp=replace(ramp, status=to, waits=0, since=when, reason=reason))

    def _ramp_conflict(self, status: RampStatus | None, action: RampAction) -> ReleaseConflict:
        if status is None:
            message = f"cannot {_RAMP_VERBS[action]} {self.new}: the release has no ramp"
        elif action is RampAction.START:
            message = (f"cannot start a ramp of {self.new}: its ramp is {status.value}; "
                       "abort it first")
        else:
            message = f"cannot {_RAMP_VERBS[action]} {self.new}: the ramp is {status.value}"
        return ReleaseConflict(message, self.status)


# Not a status: what RAMP_TRANSITIONS gives for a move it does not have.
_REFUSED = object()


def start(
    app_services: Sequence[tuple[str, int]],
    new: str,
    now: datetime | None = None,
) -> Release:
    """A new release of ``new`` next to ``app_services``, ``IN_PROGRESS``.

    ``app_services`` are the app's ``(name, weight)`` pairs *before* the new service is added;
    they become ``old`` and ``old_weights``.  :class:`ReleaseConflict` if the app has a service
    named ``new`` (one open release per app is the routing state's rule); ``ValueError`` for
    malformed arguments (a naive ``now``, a duplicate service, a weight outside 0..100), which
    the admin layer has validated long before.
    """
    names: list[str] = []
    for name, weight in app_services:
        if name in names:
            raise ValueError(f"duplicate service {name!r}")
        if not _is_weight(weight):
            raise ValueError(f"service {name}: weight must be an integer 0..100 (got {weight!r})")
        names.append(name)
    if new in names:
        raise ReleaseConflict(f"service {new} already exists")
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware (got {now!r})")
    return Release(
        old=tuple(names),
        new=new,
        status=Status.IN_PROGRESS,
        started_at=format_timestamp(now),
        old_weights=tuple((name, weight) for name, weight in app_services),
    )


# -- readiness ----------------------------------------------------------------------------------
#: A backend of a release's new service: (app, service, address).
Backend = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Readiness:
    """What the backends' checks so far say of the in-progress releases (:func:`readiness`)."""

    #: Apps whose in-progress release is ready: every backend of its new service has passed.
    ready: tuple[str, ...]
    #: Backends with no configured check that have not taken a TCP connect yet: to probe.
    probe: tuple[Backend, ...]
    #: Every backend of an in-progress release's new service: a connect that passed counts only
    #: while its backend is one of these (a backend removed and added again connects again).
    watched: frozenset[Backend]


def readiness(releases: Mapping[str, Release], backends: Callable[[str, str], Sequence[str]],
              checked: Callable[[Backend], bool | None], connected: Set[Backend]) -> Readiness:
    """Which in-progress releases are ready to be marked READY (docs/behaviour.md, "Words").

    ``releases`` by app; ``backends(app, service)``: the addresses of a service; ``checked``: a
    backend's configured health check -- passed (True), not passed (False), or none (None);
    ``connected``: backends without a check that took a TCP connect, which is their check.
    A new service with no backend (yet) has proven nothing: not ready.
    """
    ready: list[str] = []
    probe: list[Backend] = []
    watched: set[Backend] = set()
    for app, release in releases.items():
        if release.status is not Status.IN_PROGRESS:
            continue
        addresses = backends(app, release.new)
        passed = bool(addresses)
        for address in addresses:
            key = (app, release.new, address)
            watched.add(key)
            result = checked(key)
            if result is None:
                result = key in connected
                if not result:
                    probe.append(key)
            passed = passed and result
        if passed:
            ready.append(app)
    return Readiness(tuple(ready), tuple(probe), frozenset(watched))
