"""The guarded ramp: its lifecycle, its settings and its state (docs/release-ramp.md). Pure -- no
clock unless asked, no socket, no store -- like ``router.control.release``, whose release carries the
ramp and makes its moves (``Release.apply_ramp``).

The lifecycle
-------------

An open release may carry a *ramp*: the router itself raises the new version's share of the
traffic step by step (``steps``, e.g. 5, 25, 50, 100 percent), judging each step over an
``interval`` against the old version.  Its lifecycle is :data:`RAMP_TRANSITIONS`, written like
the release's (``router.control.release``)::

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
    interval the judgement (``router.control.rampjudge``) gives one of: ``ADVANCE`` to the next step,
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

Settings an operator asks for that cannot be raise :class:`InvalidRamp` (the admin API answers
``422``); malformed data (a corrupt state file) raises ``ValueError``.

How a step is judged is ``router.control.rampjudge``; the windows it is judged over and the task that
applies the decisions, ``router.control.rampdriver``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import ConfigError, parse_duration
from ..config.scalars import format_timestamp, parse_timestamp, value_error


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
# (router.dataplane.counters.BUCKETS): a ramp of a millisecond service may set a lower floor.
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
        # At least 100 ms: the counters are read every 100 ms (router.control.rampdriver.TICK).
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
            raise value_error(path, "must be a mapping", d)
        try:
            settings = ramp_settings({k: v for k, v in d.items() if k not in _RAMP_STATE_KEYS})
        except InvalidRamp as e:
            raise ValueError(f"{path}.{e.field}: {e}") from None
        for key in ("status", "step", "waits", "since"):
            if key not in d:
                raise ValueError(f"{path}.{key}: missing")
        raw_status = d["status"]
        if not isinstance(raw_status, str) or raw_status not in [s.value for s in RampStatus]:
            raise value_error(f"{path}.status", "must be running, paused or done", raw_status)
        status = RampStatus(raw_status)
        step, waits = d["step"], d["waits"]
        steps = len(settings.steps)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
            raise value_error(f"{path}.step", f"must be an integer 0..{steps}", step)
        if status is RampStatus.DONE and step != len(settings.steps):
            raise value_error(f"{path}.step", "a done ramp is at its last step", step)
        if isinstance(waits, bool) or not isinstance(waits, int) or waits < 0:
            raise value_error(f"{path}.waits", "must be an integer >= 0", waits)
        since = d["since"]
        if not isinstance(since, str):
            raise value_error(f"{path}.since", "must be an RFC 3339 timestamp", since)
        try:
            since = format_timestamp(parse_timestamp(since))
        except ValueError:
            raise value_error(f"{path}.since", "must be an RFC 3339 timestamp", since) from None
        reason = d.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise value_error(f"{path}.reason", "must be a string or null", reason)
        ramp = cls(settings, status, step, waits, since, reason)
        if "share" in d and d["share"] != ramp.share:
            raise value_error(f"{path}.share", f"must be {ramp.share}, the share of step {step}",
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
