"""How one step of a guarded ramp is judged (docs/release-ramp.md). Pure: no clock, no socket,
no store.

* :func:`counts` and :func:`measure`: the cumulative counters of a version (summed across the
  worker processes) and one step's measurements from them;
* :func:`judge`: one step's measurements of the new and the old version -> advance, finish,
  hold, pause or fail, with the reason the history shows; :func:`broken`: a step out of
  bounds for sure before its interval ends.

The windows these are judged over and the task that applies the decisions are
``router.control.rampdriver``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..dataplane.counters import BUCKETS, ServiceStats, Stats
from .ramp import RampAction, RampSettings
from .release import Release

# A 5xx answer is an error of the version that gave it; so is a request its client gave up
# waiting for (499, nginx's "client closed request"): a hung version's requests end that way.
_SERVER_ERROR = 500
_ABANDONED = 499


# -- measurements (pure) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counts:
    """The counters of one version (one service, or the old services together), cumulative."""

    #: Answers given for it, and failed attempts to reach one of its backends.
    requests: int
    #: 5xx answers, requests abandoned by their clients (499), and failed attempts: a connect
    #: refused is the version's failure even when a retry on another backend hid it from the
    #: client.
    errors: int
    #: Its latency histogram (router.dataplane.counters.BUCKETS; the last one is +Inf).
    buckets: tuple[int, ...]
    #: Requests sent to it by a client's sticky pin rather than by the weights.
    pinned: int = 0
    #: Its requests waiting for a response head now, by how long they have waited (the same
    #: buckets): not a counter, what the workers saw at this read.
    waiting: tuple[int, ...] = ()

    def since(self, start: "Counts") -> "Counts | None":
        """What happened between ``start`` and this (the requests waiting: this read's); None if
        a counter went backwards (a worker process replaced: the window cannot be trusted)."""
        if (self.requests < start.requests or self.errors < start.errors
                or self.pinned < start.pinned):
            return None
        buckets = tuple(a - b for a, b in zip(self.buckets, start.buckets))
        if any(n < 0 for n in buckets):
            return None
        return Counts(self.requests - start.requests, self.errors - start.errors, buckets,
                      self.pinned - start.pinned, self.waiting)


_NO_SERVICE = ServiceStats()


def counts(stats: Stats, app: str, services: Iterable[str]) -> Counts:
    """The counters of ``services`` of ``app`` in ``stats``, added up."""
    requests = errors = pinned = 0
    buckets = [0] * (len(BUCKETS) + 1)
    waiting = [0] * (len(BUCKETS) + 1)
    names = set(services)
    for (a, s, _), be in stats.backends.items():
        if a == app and s in names:
            for code, n in be.codes.items():
                requests += n
                if code >= _SERVER_ERROR or code == _ABANDONED:
                    errors += n
            failed = sum(be.errors.values())
            requests += failed
            errors += failed
    for name in names:
        st = stats.services.get((app, name), _NO_SERVICE)
        pinned += st.sticky
        for i, n in enumerate(st.buckets):
            buckets[i] += n
        for i, n in enumerate(stats.waiting.get((app, name), ())):
            waiting[i] += n
    return Counts(requests, errors, tuple(buckets), pinned, tuple(waiting))


def waiting_over(waiting: tuple[int, ...], bound: float) -> int:
    """How many of the requests in the ``waiting`` histogram have surely waited longer than
    ``bound``: those of the buckets above the one ``bound`` falls in."""
    lower = (0.0, *BUCKETS)
    return sum(n for i, n in enumerate(waiting) if lower[i] >= bound)


def quantile(q: float, buckets: tuple[int, ...]) -> float | None:
    """The ``q`` quantile of a histogram, interpolated linearly inside its bucket as
    Prometheus's ``histogram_quantile`` does (so the dashboards show what the ramp judged);
    None for an empty one. In the +Inf bucket it is the highest finite bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for bound, n in zip(BUCKETS, buckets):
        if seen + n >= rank and n > 0:
            return lower + (bound - lower) * (rank - seen) / n
        seen += n
        lower = bound
    return BUCKETS[-1]


@dataclass(frozen=True, slots=True)
class Measure:
    """What one version did over a window."""

    requests: int
    errors: int
    #: The ramp's latency quantile of its answered requests, seconds; None without any.
    latency: float | None
    #: Of ``requests`` and ``errors``: requests still waiting for an answer past the step's
    #: latency bound, failed already as far as the step is concerned.
    stuck: int = 0
    #: Of ``requests``: sent by a client's sticky pin, not by the weights.
    pinned: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def answered(self) -> int:
        """Requests answered without an error."""
        return self.requests - self.errors

    def to_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.error_rate, "latency": self.latency, "stuck": self.stuck,
                "pinned": self.pinned}

    def text(self, name: str, q: float, bound: float | None = None) -> str:
        """``web-v2 0.0% errors (0 of 412), p99 4.9 ms``; with the requests still waiting past
        ``bound``, when there are: ``(12 of 12, 12 waiting over 20 ms)``."""
        stuck = f", {self.stuck} waiting over {_ms(bound)}" if self.stuck else ""
        return (f"{name} {self.error_rate * 100:.1f}% errors ({self.errors} of "
                f"{self.requests}{stuck}), p{q * 100:g} {_ms(self.latency)}")


def measure(delta: Counts, q: float, bound: float | None = None) -> Measure:
    """``delta`` as judged: the requests waiting longer than ``bound`` count as failed (none
    without a bound)."""
    stuck = waiting_over(delta.waiting, bound) if bound is not None else 0
    return Measure(delta.requests + stuck, delta.errors + stuck, quantile(q, delta.buckets),
                   stuck, delta.pinned)


def latency_bound(settings: RampSettings, old: float | None) -> float | None:
    """The step's latency bound: ``max_latency_ratio`` times the old version's quantile, and at
    least ``latency_floor`` (None while the old version's is not known)."""
    if old is None:
        return None
    return max(settings.latency_floor, settings.max_latency_ratio * old)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3g} ms"


# -- the judgement (pure) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Judgement:
    """The decision about one step, why, and what it was made from."""

    action: RampAction
    reason: str
    new: Measure
    old: Measure
    seconds: float  # the window judged

    @property
    def decision(self) -> str:
        """What the metrics and the API call it (:data:`DECISIONS`)."""
        return _DECISION_NAMES[self.action]

    def to_dict(self) -> dict[str, object]:
        return {"decision": self.decision, "reason": self.reason,
                "seconds": self.seconds, "new": self.new.to_dict(), "old": self.old.to_dict()}


# What the metrics and the API call each decision.
DECISIONS = ("advance", "wait", "pause", "rollback")
_DECISION_NAMES = {
    RampAction.ADVANCE: "advance",
    RampAction.FINISH: "advance",
    RampAction.HOLD: "wait",
    RampAction.PAUSE: "pause",
    RampAction.FAIL: "rollback",
}


def judge(release: Release, new: Measure, old: Measure | None, seconds: float, *,
          old_name: str | None = None, bound: float | None = None) -> Judgement:
    """The decision about the running step of ``release``'s ramp at the end of its interval,
    from what the new and the old version did over the same ``seconds``.

    In this order: a step where the new version answered nothing while requests wait on it past
    the latency bound fails; so does an error rate of the new version more than
    ``max_error_rate`` above the old one's, counting the requests it lacks to ``min_requests``
    as successes (out of bounds with fewer requests is out of bounds with more); too little
    traffic (fewer than ``min_requests`` for either version) holds for another interval, and
    pauses the ramp once it has waited ``max_waits`` intervals; a latency quantile over
    ``latency_floor`` and more than ``max_latency_ratio`` times the old one's fails; otherwise
    the next step (``FINISH`` once the last step is judged).

    ``old`` is None at a step the old version gets no traffic (100 %) with nothing measured of
    it at the steps before (this process started at that step): the new version is then judged
    against no errors, and its latency not at all. ``old_name`` names what ``old`` is
    (``blue at step 3``: the step before, for a 100 % step); ``bound``: the latency bound the
    waiting requests were counted against, for the reason.
    """
    ramp = release.ramp
    assert ramp is not None
    st = ramp.settings
    where = f"step {ramp.step} ({ramp.share}%) over {seconds:.1f} s"

    def decide(action: RampAction, why: str) -> Judgement:
        return _judgement(release, action, f"{where}: {why}", new, old, seconds, old_name, bound)

    if new.stuck and not new.answered:
        return decide(RampAction.FAIL, f"none of its requests answered, {new.stuck} waiting "
                                        f"longer than {_ms(bound)}")
    if _errors_out(new, old, st, max(st.min_requests, new.requests)):
        return decide(RampAction.FAIL, _errors_text(release, old, old_name))
    if new.requests < st.min_requests or (old is not None and old.requests < st.min_requests):
        pins = _pins_text(release, new, old)
        if ramp.waits >= st.max_waits:
            return decide(RampAction.PAUSE, f"too little traffic to judge after "
                                             f"{ramp.waits + 1} intervals (at least "
                                             f"{st.min_requests} requests each){pins}; paused")
        return decide(RampAction.HOLD, f"too little traffic to judge (at least "
                                        f"{st.min_requests} requests each){pins}; one more "
                                        "interval")
    if (old is not None and new.latency is not None and old.latency is not None
            and new.latency > st.latency_floor
            and new.latency > st.max_latency_ratio * old.latency):
        name = old_name or ",".join(release.old)
        return decide(RampAction.FAIL, f"latency out of bounds (more than "
                                        f"{st.max_latency_ratio:g}x {name}'s)")
    return decide(ramp.next_move(), "within bounds")


def broken(release: Release, new: Measure, old: Measure | None, seconds: float, span: float, *,
           old_name: str | None = None, bound: float | None = None) -> Judgement | None:
    """Before the end of the interval (``seconds`` of ``span`` gone): ``FAIL`` as soon as the
    new version has had ``min_requests`` and its error rate is out of bounds whatever the rest
    of the interval brings -- even if every request still to come succeeded, counting as many
    as the pace so far gives over the whole interval. None otherwise: judged at the end."""
    ramp = release.ramp
    assert ramp is not None
    st = ramp.settings
    if not new.errors or seconds <= 0 or new.requests < st.min_requests:
        return None
    expected = max(new.requests, round(new.requests * span / seconds))
    if not _errors_out(new, old, st, expected):
        return None
    why = _errors_text(release, old, old_name)
    return _judgement(release, RampAction.FAIL,
                      f"step {ramp.step} ({ramp.share}%) after {seconds:.1f} s of {span:g} s: "
                      f"{why}, already for the whole interval", new, old, seconds, old_name, bound)


def _errors_out(new: Measure, old: Measure | None, st: RampSettings, expected: int) -> bool:
    """Whether ``new.errors`` out of ``expected`` requests is over the old version's error rate
    (0 without figures) by more than ``max_error_rate``; never while the old version has too
    little traffic to compare with."""
    if old is not None and old.requests < st.min_requests:
        return False
    base = old.error_rate if old is not None else 0.0
    return new.errors / expected - base > st.max_error_rate


def _errors_text(release: Release, old: Measure | None, old_name: str | None) -> str:
    assert release.ramp is not None
    points = release.ramp.settings.max_error_rate * 100
    over = f"over {old_name or ','.join(release.old)}'s" if old is not None else "over none"
    return (f"error rate out of bounds (more than {points:g} percentage "
            f"point{'' if points == 1 else 's'} {over})")


def _pins_text(release: Release, new: Measure, old: Measure | None) -> str:
    """Why the new version gets too little traffic when the old one's comes from clients pinned
    to it (session stickiness): the weights move only the others."""
    # Counted when routed, requests when answered: a few pinned ones may still be in flight.
    pinned = min(old.pinned, old.requests) if old is not None else 0
    if old is None or pinned * 2 <= old.requests:
        return ""
    name = ",".join(release.old)
    text = (f"; {pinned} of {old.requests} requests to {name} came from clients pinned to it, "
            "whom the weights do not move")
    if pinned * 10 >= old.requests * 9:
        text += (f": {release.new} gets its share of the others only, and the ramp cannot "
                 "progress while those pins last (sticky.max_idle)")
    return text


def _judgement(release: Release, action: RampAction, reason: str, new: Measure,
               old: Measure | None, seconds: float, old_name: str | None,
               bound: float | None) -> Judgement:
    ramp = release.ramp
    assert ramp is not None
    q = ramp.settings.quantile
    name = old_name or ",".join(release.old)
    old_text = (old.text(name, q, bound) if old is not None
                else f"no figures of {name} (no traffic at {ramp.share}%)")
    return Judgement(action, f"{reason}: {new.text(release.new, q, bound)}; {old_text}", new,
                     old if old is not None else Measure(0, 0, None), seconds)
