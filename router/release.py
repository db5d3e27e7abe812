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

An open release may carry a *ramp*: the router itself raises the new version's share of the
traffic step by step (``steps``, e.g. 5, 25, 50, 100 percent), judging each step over an
``interval`` against the old version (``router.ramp``; docs/release-ramp.md).  Its lifecycle
is :data:`RAMP_TRANSITIONS`, written like the release's::

                   START                           FINISH
     (no ramp) ----------> RUNNING ------------------------> DONE
       ^    ^               |  ^  |                           |
       |    |          PAUSE|  |  +-- ADVANCE, HOLD: itself    |
       |    |               v  |RESUME                         |
       |    +---- ABORT --- PAUSED                             |
       +-------- ABORT (from RUNNING or DONE) -----------------+
                 FAIL (from RUNNING): the release is rolled back

``RUNNING``
    Step ``step`` (1-based; 0 before the first) is applied and being judged.  At the end of an
    interval the judgement (``router.ramp.judge``) gives one of: ``ADVANCE`` to the next step,
    ``FINISH`` when the last step is judged within bounds, ``HOLD`` when either version had too
    little traffic to judge (another interval, counted in ``waits``), ``PAUSE`` once
    ``max_waits`` intervals were too thin, ``FAIL`` when the new version is out of bounds
    (also before the end of the interval, once it is out of bounds for sure).  The first step
    needs no judgement: it is applied as soon as the release is ``AWAITING_CONFIRMATION``; the
    last is judged like the others (a version may hang only when it takes all the traffic).
``PAUSED``
    The weights stay as they are and nothing is judged; operators may move them by hand.
    ``RESUME`` applies the current step's weights again and judges it over a fresh interval.
``DONE``
    The last step is applied and was judged within bounds.  The release waits for its confirm
    as before.

``ADVANCE`` and ``FINISH`` take the new version further, so they need the release to be
``AWAITING_CONFIRMATION`` (every new backend passed its check): the same rule that guards a
confirm.  ``ABORT`` ends the ramp and gives the old services their ``old_weights`` back, the new
service at weight 0 (it stays, for preview and another try); ``FAIL`` is the release's
``ROLLBACK``, with the reason in the history.  A ``CONFIRM`` or ``ROLLBACK`` of the release ends
its ramp with it.  The ramp is part of the release object, so it is stored with it and a router
that restarts carries on from the stored step.

Every illegal move raises :class:`ReleaseConflict`, the one error type of this module that the
admin API maps to ``409``.  Malformed data (a corrupt state file) raises ``ValueError`` instead:
it is not a conflict between an operator and the state, it is a state that cannot exist.
"""

from __future__ import annotations

import enum
import re
import math
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from .config import NAME_RE, ConfigError, parse_duration

__all__ = [
    "RAMP_TRANSITIONS",
    "TRANSITIONS",
    "Action",
    "Backend",
    "InvalidRamp",
    "Readiness",
    "Ramp",
    "RampAction",
    "RampSettings",
    "RampStatus",
    "Release",
    "ReleaseConflict",
    "Status",
    "ramp_settings",
    "readiness",
    "share_weights",
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


# -- the ramp ---------------------------------------------------------------------------------
class RampStatus(str, enum.Enum):
    """Where a ramp stands; the value is what the admin API and the state file show."""

    #: A step is applied and judged at the end of each interval.
    RUNNING = "running"
    #: Nothing is judged; the weights stay (an operator, or too long without enough traffic).
    PAUSED = "paused"
    #: The last step is applied and judged; the release waits for its confirm.
    DONE = "done"


class RampAction(str, enum.Enum):
    """What can happen to a ramp."""

    #: An operator asks for a ramp.
    START = "start"
    #: Within bounds (or the release just became ready): the next step.
    ADVANCE = "advance"
    #: The last step, within bounds: done.
    FINISH = "finish"
    #: Too little traffic to judge: one more interval at this step.
    HOLD = "hold"
    #: An operator, or ``max_waits`` intervals in a row with too little traffic.
    PAUSE = "pause"
    #: An operator: judge the current step again, over a fresh interval.
    RESUME = "resume"
    #: An operator: the ramp ends, the old weights are restored, the new version kept at 0.
    ABORT = "abort"
    #: Out of bounds: the release is rolled back.
    FAIL = "fail"


# The whole ramp lifecycle; ``None`` is "no ramp".  A pair that is absent is illegal.
RAMP_TRANSITIONS: dict[RampStatus | None, dict[RampAction, RampStatus | None]] = {
    None: {RampAction.START: RampStatus.RUNNING},
    RampStatus.RUNNING: {
        RampAction.ADVANCE: RampStatus.RUNNING,
        RampAction.FINISH: RampStatus.DONE,
        RampAction.HOLD: RampStatus.RUNNING,
        RampAction.PAUSE: RampStatus.PAUSED,
        # Resuming what runs is a no-op, so that a script may resume without asking first.
        RampAction.RESUME: RampStatus.RUNNING,
        RampAction.ABORT: None,
        RampAction.FAIL: None,  # with the release's ROLLBACK
    },
    RampStatus.PAUSED: {
        RampAction.PAUSE: RampStatus.PAUSED,
        RampAction.RESUME: RampStatus.RUNNING,
        RampAction.ABORT: None,
    },
    RampStatus.DONE: {
        # A new ramp of the same release (after the weights were moved back by hand, say).
        RampAction.START: RampStatus.RUNNING,
        RampAction.ABORT: None,
    },
}

# Moves that put more weight on the new version: only once its backends passed their checks.
NEEDS_READY = frozenset({RampAction.ADVANCE, RampAction.FINISH})

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


class InvalidRamp(ValueError):
    """A ramp's settings that cannot be (the admin API answers ``422`` naming ``field``)."""

    def __init__(self, field: str, reason: str, value: object) -> None:
        text = repr(value)
        super().__init__(f"{reason} (got {text[:200] + '...' if len(text) > 200 else text})")
        self.field = field


# The defaults, and why: the issue of a ramp is to be safe without tuning.
DEFAULT_INTERVAL = 60.0       # Flagger's and Argo Rollouts' usual analysis interval
DEFAULT_MAX_ERROR_RATE = 0.01  # the new version may fail 1 point more often than the old
DEFAULT_MAX_LATENCY_RATIO = 2.0
DEFAULT_QUANTILE = 0.99
# Below 10 ms a ratio of two p99s says more about the machine (a scheduling delay, a
# garbage collection) than about the versions. The histogram resolves 0.25 ms
# (router.counters.BUCKETS): a ramp of a millisecond service may set a lower floor.
DEFAULT_LATENCY_FLOOR = 0.01
DEFAULT_MIN_REQUESTS = 20      # per version and interval: fewer, and one error is 5 %
DEFAULT_MAX_WAITS = 10         # intervals at one step without enough traffic, then paused
MAX_STEPS = 20
_SETTINGS_KEYS = ("steps", "interval", "max_error_rate", "max_latency_ratio", "quantile",
                  "latency_floor", "min_requests", "max_waits")


@dataclass(frozen=True, slots=True)
class RampSettings:
    """What an operator asks of a ramp (``POST .../release/ramp``)."""

    #: The new version's share of the traffic at each step, in percent, increasing.
    steps: tuple[int, ...]
    #: Seconds each step is judged over.
    interval: float = DEFAULT_INTERVAL
    #: How much higher than the old version's the new version's error rate may be (0.01: one
    #: percentage point).  Errors are 5xx answers and failed attempts to reach a backend.
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    #: How many times the old version's latency quantile the new version's may be.
    max_latency_ratio: float = DEFAULT_MAX_LATENCY_RATIO
    #: Which latency quantile is compared (0.99: p99).
    quantile: float = DEFAULT_QUANTILE
    #: Seconds: a new version's quantile at or under this is within bounds whatever the ratio.
    latency_floor: float = DEFAULT_LATENCY_FLOOR
    #: Requests each version must have answered in an interval for it to be judged.
    min_requests: int = DEFAULT_MIN_REQUESTS
    #: Intervals in a row at one step with too little traffic before the ramp pauses.
    max_waits: int = DEFAULT_MAX_WAITS

    def to_dict(self) -> dict[str, object]:
        return {"steps": list(self.steps), "interval": self.interval,
                "max_error_rate": self.max_error_rate,
                "max_latency_ratio": self.max_latency_ratio, "quantile": self.quantile,
                "latency_floor": self.latency_floor, "min_requests": self.min_requests,
                "max_waits": self.max_waits}


def _number(d: Mapping[str, object], key: str, default: float, low: float, high: float,
            what: str) -> float:
    value = d.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= high):
        raise InvalidRamp(key, f"must be {what}", value)
    return float(value)


def _count(d: Mapping[str, object], key: str, default: int, low: int, high: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRamp(key, f"must be an integer {low}..{high}", value)
    return value


def _duration(d: Mapping[str, object], key: str, default: float, low: float,
              high: float) -> float:
    value = d.get(key, default)
    try:
        seconds = parse_duration(value, key)
    except ConfigError as e:
        raise InvalidRamp(key, e.reason, value) from None
    if not low <= seconds <= high:
        raise InvalidRamp(key, f"must be a duration of {low:g}s..{high:g}s", value)
    return seconds


def ramp_settings(d: object) -> RampSettings:
    """Settings from their JSON form (an API body, or the stored ramp's); :class:`InvalidRamp`
    naming the field otherwise.  Durations are seconds or strings like ``"60s"``."""
    if not isinstance(d, Mapping):
        raise InvalidRamp("", "must be an object with steps, interval, max_error_rate, ...", d)
    for key in d:
        if key not in _SETTINGS_KEYS:
            raise InvalidRamp(str(key), "unknown field", d[key])
    raw_steps = d.get("steps")
    if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= MAX_STEPS:
        raise InvalidRamp("steps", f"required: 1..{MAX_STEPS} shares in percent, increasing, "
                                   "like [5, 25, 50, 100]", raw_steps)
    steps: list[int] = []
    for share in raw_steps:
        if isinstance(share, bool) or not isinstance(share, int) or not 1 <= share <= 100:
            raise InvalidRamp("steps", "each step is a share in percent, an integer 1..100",
                              raw_steps)
        if steps and share <= steps[-1]:
            raise InvalidRamp("steps", "the steps must increase", raw_steps)
        steps.append(share)
    return RampSettings(
        steps=tuple(steps),
        # At least 100 ms: the counters are read every 100 ms (router.rampdriver.TICK).
        interval=_duration(d, "interval", DEFAULT_INTERVAL, 0.1, 86400.0),
        max_error_rate=_number(d, "max_error_rate", DEFAULT_MAX_ERROR_RATE, 0.0, 1.0,
                               "a fraction 0..1 (0.01 is one percentage point)"),
        max_latency_ratio=_number(d, "max_latency_ratio", DEFAULT_MAX_LATENCY_RATIO, 1.0,
                                  1000.0, "a ratio 1..1000"),
        quantile=_number(d, "quantile", DEFAULT_QUANTILE, 0.5, 0.999, "a quantile 0.5..0.999"),
        latency_floor=_duration(d, "latency_floor", DEFAULT_LATENCY_FLOOR, 0.0, 3600.0),
        min_requests=_count(d, "min_requests", DEFAULT_MIN_REQUESTS, 1, 1_000_000_000),
        max_waits=_count(d, "max_waits", DEFAULT_MAX_WAITS, 0, 1000),
    )


_RAMP_STATE_KEYS = ("status", "step", "share", "waits", "since", "reason")


@dataclass(frozen=True, slots=True)
class Ramp:
    """The ramp of an open release (immutable, like the release; stored with it)."""

    settings: RampSettings
    status: RampStatus
    #: The step applied: 1..len(steps); 0 before the first.
    step: int
    #: Intervals waited at this step for enough traffic to judge.
    waits: int
    #: RFC 3339, UTC: when this step or status began.
    since: str
    #: Why the last move was made, as the history says it (None for a start without one).
    reason: str | None = None

    @property
    def share(self) -> int:
        """The new version's share of the traffic at this step, in percent."""
        return self.settings.steps[self.step - 1] if self.step else 0

    def next_move(self) -> RampAction:
        """``ADVANCE``, or ``FINISH`` at the last step."""
        return RampAction.FINISH if self.step == len(self.settings.steps) else RampAction.ADVANCE

    def to_dict(self) -> dict[str, object]:
        out = self.settings.to_dict()
        out.update(status=self.status.value, step=self.step, share=self.share,
                   waits=self.waits, since=self.since, reason=self.reason)
        return out

    @classmethod
    def from_dict(cls, d: object, path: str = "ramp") -> Ramp:
        """The inverse of :meth:`to_dict`, strict (``ValueError`` naming ``path.field``)."""
        if not isinstance(d, Mapping):
            raise _bad(path, "must be a mapping", d)
        try:
            settings = ramp_settings({k: v for k, v in d.items() if k not in _RAMP_STATE_KEYS})
        except InvalidRamp as e:
            raise ValueError(f"{path}.{e.field}: {e}") from None
        for key in ("status", "step", "waits", "since"):
            if key not in d:
                raise ValueError(f"{path}.{key}: missing")
        raw_status = d["status"]
        if not isinstance(raw_status, str) or raw_status not in [s.value for s in RampStatus]:
            raise _bad(f"{path}.status", "must be running, paused or done", raw_status)
        status = RampStatus(raw_status)
        step, waits = d["step"], d["waits"]
        steps = len(settings.steps)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
            raise _bad(f"{path}.step", f"must be an integer 0..{steps}", step)
        if status is RampStatus.DONE and step != len(settings.steps):
            raise _bad(f"{path}.step", "a done ramp is at its last step", step)
        if isinstance(waits, bool) or not isinstance(waits, int) or waits < 0:
            raise _bad(f"{path}.waits", "must be an integer >= 0", waits)
        since = d["since"]
        if not isinstance(since, str):
            raise _bad(f"{path}.since", "must be an RFC 3339 timestamp", since)
        try:
            since = _format_time(_parse_time(since))
        except ValueError:
            raise _bad(f"{path}.since", "must be an RFC 3339 timestamp", since) from None
        reason = d.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise _bad(f"{path}.reason", "must be a string or null", reason)
        ramp = cls(settings, status, step, waits, since, reason)
        if "share" in d and d["share"] != ramp.share:
            raise _bad(f"{path}.share", f"must be {ramp.share}, the share of step {step}",
                       d["share"])
        return ramp


def share_weights(old_weights: Sequence[tuple[str, int]], new: str, share: int) -> dict[str, int]:
    """The weights that give ``new`` ``share`` percent of the traffic: the old services keep
    their proportions (``old_weights``) in the rest.  Weights are integers, so a share is as
    close as rounding allows (two old services 1:1 at share 5: 48, 48 and 5)."""
    total = sum(w for _, w in old_weights)
    out = {name: round((100 - share) * w / total) if total else 0 for name, w in old_weights}
    out[new] = share
    return out


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
            raise _bad(path, "must be a mapping", d)
        for key in d:
            if key not in _KEYS:
                raise _bad(f"{path}.{key}", "unknown key", d[key])
        for key in _KEYS:
            if key not in d and key != "ramp":  # stored before there were ramps
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

        raw_ramp = d.get("ramp")
        return cls(
            old=tuple(old),
            new=new,
            status=status,
            started_at=_format_time(moment),
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
        when = _format_time(now if now is not None else datetime.now(timezone.utc))
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
        started_at=_format_time(now),
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
