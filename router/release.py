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

Every illegal move raises :class:`ReleaseConflict`, the one error type of this module that the
admin API maps to ``409``.  Malformed data (a corrupt state file) raises ``ValueError`` instead:
it is not a conflict between an operator and the state, it is a state that cannot exist.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from .config import NAME_RE

__all__ = [
    "TRANSITIONS",
    "Action",
    "Release",
    "ReleaseConflict",
    "Status",
    "next_status",
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


def _conflict(status: Status, action: Action, new: str | None) -> ReleaseConflict:
    message = f"cannot {_VERBS[action]} a release that is {status.value}"
    if status is Status.IN_PROGRESS and action is Action.CONFIRM:
        who = new if new is not None else "the new service"
        message += (f": wait until every backend of {who} has passed its health check"
                    " (or roll back)")
    elif status is Status.CLOSED:
        message += ": it was already confirmed or rolled back"
    return ReleaseConflict(message, status, action)


def _next(status: Status | str, action: Action | str, new: str | None) -> Status:
    # Plain strings are accepted (``"confirm"``); an unknown one is a programming error
    # (ValueError), not a conflict.
    status = Status(status)
    action = Action(action)
    try:
        return TRANSITIONS[status][action]
    except KeyError:
        raise _conflict(status, action, new) from None


def next_status(status: Status, action: Action) -> Status:
    """The status after ``action``; :class:`ReleaseConflict` if the table does not allow it."""
    return _next(status, action, None)


# RFC 3339 date-time (section 5.6).  Checked by pattern rather than ``datetime.fromisoformat``,
# which accepts ISO 8601 forms RFC 3339 does not (week dates, no offset, ...).
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)


def _format_time(moment: datetime) -> str:
    # Whole seconds in UTC with "Z": the one spelling this module writes.
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp -> aware datetime; ValueError if it is not one."""
    m = _RFC3339_RE.match(text)
    if m is None:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if m.group(7):
        tz = timezone.utc
    else:
        sign = 1 if m.group(8) == "+" else -1
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise ValueError("not an RFC 3339 timestamp")
        tz = timezone(sign * timedelta(hours=off_h, minutes=off_m))
    try:
        # datetime refuses Feb 30, hour 24, second 60 (leap seconds cannot be represented).
        return datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        raise ValueError("not an RFC 3339 timestamp") from None


def _bad(path: str, reason: str, value: object) -> ValueError:
    text = repr(value)
    if len(text) > 200:
        text = text[:200] + "..."
    return ValueError(f"{path}: {reason} (got {text})")


def _is_weight(value: object) -> bool:
    # bool is an int subclass; True is not a weight.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100


_KEYS = ("old", "new", "status", "started_at", "old_weights")
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

    def to_dict(self) -> dict[str, object]:
        """The release object of the admin API (also what the state file stores)."""
        return {
            "old": list(self.old),
            "new": self.new,
            "status": self.status.value,
            "started_at": self.started_at,
            "old_weights": dict(self.old_weights),
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
            raise _bad(path, "must be a mapping", d)
        for key in d:
            if key not in _KEYS:
                raise _bad(f"{path}.{key}", "unknown key", d[key])
        for key in _KEYS:
            if key not in d:
                raise ValueError(f"{path}.{key}: missing")

        raw_old = d["old"]
        if not isinstance(raw_old, list):
            raise _bad(f"{path}.old", "must be a list of service names", raw_old)
        old: list[str] = []
        for i, name in enumerate(raw_old):
            where = f"{path}.old[{i}]"
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise _bad(where, "must be a service name", name)
            if name in old:
                raise _bad(where, "duplicate service", name)
            old.append(name)

        new = d["new"]
        if not isinstance(new, str) or not NAME_RE.match(new):
            raise _bad(f"{path}.new", "must be a service name", new)
        if new in old:
            raise _bad(f"{path}.new", "must not be one of the old services", new)

        raw_status = d["status"]
        if not isinstance(raw_status, str) or raw_status not in [s.value for s in _OPEN]:
            raise _bad(f"{path}.status", "must be in_progress or awaiting_confirmation",
                       raw_status)
        status = Status(raw_status)

        raw_time = d["started_at"]
        if isinstance(raw_time, datetime):
            if raw_time.tzinfo is None or raw_time.utcoffset() is None:
                raise _bad(f"{path}.started_at", "must be an RFC 3339 timestamp with an offset",
                           raw_time)
            moment = raw_time
        elif isinstance(raw_time, str):
            try:
                moment = _parse_time(raw_time)
            except ValueError:
                raise _bad(f"{path}.started_at", "must be an RFC 3339 timestamp",
                           raw_time) from None
        else:
            raise _bad(f"{path}.started_at", "must be an RFC 3339 timestamp", raw_time)

        raw_weights = d["old_weights"]
        if not isinstance(raw_weights, Mapping):
            raise _bad(f"{path}.old_weights", "must be a mapping of service to weight",
                       raw_weights)
        for name, weight in raw_weights.items():
            if name not in old:
                raise _bad(f"{path}.old_weights.{name}", "is not one of the old services", weight)
            if not _is_weight(weight):
                raise _bad(f"{path}.old_weights.{name}", "must be an integer 0..100", weight)
        for name in old:
            if name not in raw_weights:
                raise ValueError(f"{path}.old_weights.{name}: missing")

        return cls(
            old=tuple(old),
            new=new,
            status=status,
            started_at=_format_time(moment),
            old_weights=tuple((name, raw_weights[name]) for name in old),
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


def start(
    app_services: Sequence[tuple[str, int]],
    new: str,
    now: datetime | None = None,
    *,
    open_release: Release | None = None,
) -> Release:
    """A new release of ``new`` next to ``app_services``, ``IN_PROGRESS``.

    ``app_services`` are the app's ``(name, weight)`` pairs *before* the new service is added;
    they become ``old`` and ``old_weights``.  :class:`ReleaseConflict` if the app already has an
    open release (``open_release``) or a service named ``new``; ``ValueError`` for malformed
    arguments (a naive ``now``, a duplicate service, a weight outside 0..100), which the admin
    layer has validated long before.
    """
    if open_release is not None:
        raise ReleaseConflict(
            f"a release is already open ({open_release.new}, {open_release.status.value}):"
            " confirm or roll it back first"
        )
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
        started_at=_format_time(now),
        old_weights=tuple((name, weight) for name, weight in app_services),
    )
