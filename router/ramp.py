"""The guarded ramp: how one step is judged, the windows it is judged over, and the task that
drives the ramps of a router (docs/release-ramp.md).

Three layers, so that the rules are tested from tables without a clock or a socket:

* :func:`judge` (pure): one step's measurements of the new and the old version -> advance,
  finish, hold, pause or fail, with the reason the history shows;
* :class:`Planner` (pure; the counters and the clock are passed in): the window of each running
  ramp -- the counters when its step went live, and when it is due -- and what is due now;
* :class:`RampDriver`: every :data:`TICK` while a ramp runs, reads the counters (summed across
  the worker processes), asks the planner, and applies its decisions through the
  ``StateManager`` as the router's own changes. With a shared store only the replica holding
  the store's lease drives (:class:`Leadership`); the others follow the stored state.

The ramp's state (its step, status, waits) lives in the release object, in the store; a window
lives only in the memory of the driving process. So after a restart, or when another replica
takes over, the current step is judged again over a fresh window: never over counters this
process did not see.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .config import AppConfig
from .counters import BUCKETS, ServiceStats, Stats
from .errors import Conflict, NotFound, Unavailable
from .release import RampAction, RampSettings, RampStatus, Release, Status
from .manager import StateManager
from .state import ramp_decision
from .store import Store

log = logging.getLogger("router.ramp")

# Seconds between two reads of the counters while a ramp runs: how late a window may start or
# end. The counters are summed across workers at each read (one message per worker).
TICK = 0.1
# A 5xx answer is an error of the version that gave it; so is a request its client gave up
# waiting for (499, nginx's "client closed request"): a hung version's requests end that way.
_SERVER_ERROR = 500
_ABANDONED = 499
# The role in a shared store (router.store: lead) of the replica that drives the ramps, and how
# long it keeps it without renewing: another replica takes over this long after it died.
DRIVER_ROLE = "ramp-driver"
LEASE_TTL = 5.0
# Seconds before a decision the store refused (unreachable) is tried again.
STORE_RETRY = 1.0


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
    #: Its latency histogram (router.counters.BUCKETS; the last one is +Inf).
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

    def to_dict(self) -> dict[str, object]:
        return {"decision": _DECISION_NAMES[self.action], "reason": self.reason,
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


# -- windows (pure: counters and clock passed in) ---------------------------------------------
@dataclass(slots=True)
class Window:
    """The step of one ramp being judged: since when, until when, from which counters."""

    key: tuple[str, str, int]  # the release's new service and start, and the step
    started: float
    due: float
    new: Counts
    old: Counts


@dataclass(frozen=True, slots=True)
class Decision:
    """What the planner asks to apply: a move of the ramp of ``app`` at ``step``."""

    app: str
    new: str
    step: int
    action: RampAction
    reason: str
    judgement: Judgement | None  # None for the first step, which is not judged


def _key(release: Release) -> tuple[str, str, int]:
    assert release.ramp is not None
    return (release.new, release.started_at, release.ramp.step)


def _judged(release: Release) -> bool:
    """Whether the release's ramp is at a step the router judges now."""
    ramp = release.ramp
    return (ramp is not None and ramp.status is RampStatus.RUNNING
            and release.status is Status.AWAITING_CONFIRMATION)


class Planner:
    """The windows of the running ramps, and the decisions that are due."""

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}
        # The old version as last judged at a step it had traffic, per app (with the release
        # and the step): what a 100 % step, where it has none, is compared with.
        self._baseline: dict[str, tuple[tuple[str, str], Measure, int]] = {}

    def plan(self, releases: Mapping[str, Release], stats: Stats, now: float) -> list[Decision]:
        """What to do now, for every ramp that runs. A ramp at step 0 of a ready release gets
        its first step; a step seen for the first time gets a window starting now; a window
        that is due gets judged (a hold extends it by an interval: the counters keep adding up
        from its start); a window not yet due fails as soon as it is out of bounds for sure
        (:func:`broken`)."""
        for name in [n for n, w in self._windows.items()
                     if n not in releases or not _judged(releases[n])
                     or _key(releases[n]) != w.key]:
            del self._windows[name]
        for name in [n for n, b in self._baseline.items()
                     if n not in releases or (releases[n].new, releases[n].started_at) != b[0]]:
            del self._baseline[name]
        decisions = []
        for name, release in releases.items():
            ramp = release.ramp
            if ramp is None or not _judged(release):
                continue
            if ramp.step == 0:
                decisions.append(Decision(name, release.new, 0, ramp.next_move(),
                                          "the release is ready: first step", None))
                continue
            new, old = counts(stats, name, (release.new,)), counts(stats, name, release.old)
            interval = ramp.settings.interval
            window = self._windows.get(name)
            if window is None:
                self._windows[name] = Window(_key(release), now, now + interval, new, old)
                continue
            measured = self._measure(name, release, window, new, old)
            if measured is None:
                log.warning("ramp of %s: the counters went back (a worker process was "
                            "replaced); step %d is judged over a fresh interval", release.new,
                            ramp.step)
                self._windows[name] = Window(_key(release), now, now + interval, new, old)
                continue
            new_m, old_m, old_name, bound = measured
            seconds = now - window.started
            if now < window.due:
                early = broken(release, new_m, old_m, seconds, window.due - window.started,
                               old_name=old_name, bound=bound)
                if early is not None:
                    decisions.append(Decision(name, release.new, ramp.step, early.action,
                                              early.reason, early))
                continue
            j = judge(release, new_m, old_m, seconds, old_name=old_name, bound=bound)
            if j.action is RampAction.HOLD:
                window.due = now + interval
            elif j.action is RampAction.ADVANCE and old_m is not None and old_name is None:
                self._baseline[name] = ((release.new, release.started_at), old_m, ramp.step)
            decisions.append(Decision(name, release.new, ramp.step, j.action, j.reason, j))
        return decisions

    def _measure(self, app: str, release: Release, window: Window, new: Counts, old: Counts
                 ) -> tuple[Measure, Measure | None, str | None, float | None] | None:
        """Both versions over ``window`` as judged -- the new one, the old one (or what stands
        for it at a 100 % step), its name when that is not the old services now, and the
        latency bound -- or None when the counters went back."""
        new_delta, old_delta = new.since(window.new), old.since(window.old)
        if new_delta is None or old_delta is None:
            return None
        ramp = release.ramp
        assert ramp is not None
        st = ramp.settings
        old_m: Measure | None = measure(old_delta, st.quantile)
        old_name = None
        if ramp.share == 100 and old_m is not None and old_m.requests < st.min_requests:
            base = self._baseline.get(app)
            if base is not None:
                old_m, old_name = base[1], f"{','.join(release.old)} at step {base[2]}"
            else:
                old_m = None
        bound = latency_bound(st, old_m.latency if old_m is not None else None)
        if old_m is not None and old_name is None:
            old_m = measure(old_delta, st.quantile, bound)
        return measure(new_delta, st.quantile, bound), old_m, old_name, bound

    def live(self, app: str, release: Release, stats: Stats, now: float) -> Judgement | None:
        """The step of ``app`` being judged, so far (``action`` is what would be decided were
        it due); None when no window runs for it."""
        window = self._windows.get(app)
        if window is None or release.ramp is None or window.key != _key(release):
            return None
        measured = self._measure(app, release, window, counts(stats, app, (release.new,)),
                                 counts(stats, app, release.old))
        if measured is None:
            return None
        new_m, old_m, old_name, bound = measured
        return judge(release, new_m, old_m, now - window.started, old_name=old_name,
                     bound=bound)

    def forget(self, app: str | None = None) -> None:
        """Drop the windows (of ``app``): they are judged afresh if this process drives again."""
        if app is None:
            self._windows.clear()
        else:
            self._windows.pop(app, None)


# -- which replica drives ---------------------------------------------------------------------
class Leadership:
    """Whether this replica drives the ramps, from the store's lease (router.store: ``lead``),
    asked at most once per ``every`` seconds. A store without replicas (the file) always lets
    it drive."""

    def __init__(self, campaign: Callable[[], Awaitable[bool]] | None, every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._campaign = campaign
        self._every = every
        self._clock = clock
        self._asked = -every
        self.held = campaign is None

    async def check(self) -> bool:
        if self._campaign is None:
            return True
        now = self._clock()
        if now - self._asked >= self._every:
            self._asked = now
            try:
                held = await self._campaign()
            except Exception as e:
                # The store is unreachable: nobody can take the lease meanwhile, and a replica
                # that held it goes on judging, so that a failing version is still rolled back
                # (in effect at once, stored later: router.manager, "safety before persistence").
                log.debug("ramp driver lease: %s", e)
                held = self.held
            if held != self.held:
                log.info("this replica %s the ramps", "drives" if held else "no longer drives")
            self.held = held
        return self.held


# -- the driving task -------------------------------------------------------------------------
class RampDriver:
    """Applies the planner's decisions, as the router, while a ramp runs."""

    def __init__(self, manager: StateManager, stats: Callable[[], Awaitable[Stats]],
                 leadership: Leadership | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._manager = manager
        self._stats = stats
        self.leadership = leadership or Leadership(None)
        self._clock = clock
        self.planner = Planner()
        #: The last judgement of each app's ramp (what the metrics and the API show).
        self.last: dict[str, Judgement] = {}
        #: Decisions applied by this process: (app, decision name) -> count.
        self.decided: dict[tuple[str, str], int] = {}
        self._blocked = False
        self._retry_at = 0.0  # the store refused the last decision: not before then

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("driving the ramps failed")

    @property
    def releases(self) -> Mapping[str, Release]:
        return self._manager.state.releases

    @property
    def apps(self) -> tuple[AppConfig, ...]:
        return self._manager.state.apps

    def _running(self) -> bool:
        return any(r.ramp is not None and r.ramp.status is RampStatus.RUNNING
                   for r in self.releases.values())

    async def tick(self) -> None:
        """One look: decide what is due and apply it; again at once after a change, so that a
        new step's window starts right when its weights are live."""
        releases = self._manager.state.releases
        for app in [a for a in self.last if a not in releases or releases[a].ramp is None]:
            del self.last[app]
        if not self._running():
            self.planner.forget()
            return
        if self._clock() < self._retry_at:
            return
        if not await self.leadership.check():
            self.planner.forget()
            return
        for _ in range(4):  # a first step, then its window: a few moves at most
            decisions = self.planner.plan(self._manager.state.releases, await self._stats(),
                                          self._clock())
            if not decisions or not await self._apply_all(decisions):
                return

    async def _apply_all(self, decisions: list[Decision]) -> bool:
        changed = False
        for d in decisions:
            op = ramp_decision(d.app, d.new, d.step, d.action, d.reason)
            try:
                await self._manager.change(op)
            except (Conflict, NotFound) as e:
                # An operator or another replica moved first: that step is not ours to judge.
                log.info("ramp of %s: %s not applied: %s", d.new, d.action.value, e)
                self.planner.forget(d.app)
                continue
            except Unavailable as e:
                # The store is down: every replica's changes wait. Judged again (over a longer
                # window) once it answers; asked again in a second, not at every tick.
                if not self._blocked:
                    log.warning("ramp of %s: %s not applied: %s", d.new, d.action.value,
                                e.message)
                self._blocked = True
                self._retry_at = self._clock() + STORE_RETRY
                return False
            self._blocked = False
            changed = True
            if d.judgement is not None:
                self.last[d.app] = d.judgement
            key = (d.app, _DECISION_NAMES[d.action] if d.judgement is not None else "advance")
            self.decided[key] = self.decided.get(key, 0) + 1
        return changed

    async def progress(self, app: str) -> dict[str, object] | None:
        """The ramp of ``app`` as the API shows it: the stored ramp, whether this replica drives
        it, the window being judged so far and the last judgement."""
        release = self._manager.state.releases.get(app)
        if release is None:
            return self._unstored_rollback(app)
        if release.ramp is None:
            return None
        window = None
        if self.leadership.held:
            live = self.planner.live(app, release, await self._stats(), self._clock())
            if live is not None:
                window = live.to_dict()
                del window["decision"], window["reason"]
        last = self.last.get(app)
        out = {"app": app, "new": release.new, "old": list(release.old),
               "ramp": release.ramp.to_dict(), "driving": self.leadership.held,
               "window": window, "last": last.to_dict() if last is not None else None}
        unstored = self._manager.unstored(app)
        if unstored:
            out.update(stored=False, unstored=unstored)
        return out

    def _unstored_rollback(self, app: str) -> dict[str, object] | None:
        """A ramp whose release a rollback closed that the store has not taken yet: shown as
        ``rolled_back`` with ``"stored": false`` until it is stored."""
        release = self._manager.unstored_rollback(app)
        if release is None or release["ramp"] is None:
            return None
        last = self.last.get(app)
        return {"app": app, "new": release["new"], "old": release["old"], "ramp": release["ramp"],
                "driving": self.leadership.held, "window": None,
                "last": last.to_dict() if last is not None else None,
                "stored": False, "unstored": release["unstored"]}


class RampCollector:
    """The ramp's own series: decisions, what the last judgement measured, who drives."""

    def __init__(self, driver: RampDriver) -> None:
        self._driver = driver

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        driver = self._driver
        decisions = CounterMetricFamily(
            "router_ramp_decisions", "Decisions of the guarded ramps driven by this replica: "
            "advance, wait, pause, rollback", labels=["app", "decision"])
        # Every decision of every app from 0, so that the first rollback is an increase
        # Prometheus sees (a counter series born at 1 shows none): a ramp may roll back within
        # a tick of its start, before any scrape saw it.
        apps = {app for app, _ in driver.decided}
        apps.update(app.name for app in driver.apps)
        for app in sorted(apps):
            for decision in DECISIONS:
                decisions.add_metric([app, decision], driver.decided.get((app, decision), 0))
        errors = GaugeMetricFamily(
            "router_ramp_error_ratio", "Error rate of each version over the last judged step "
            "of a running ramp (5xx answers and failed attempts per request)",
            labels=["app", "version", "service"])
        latency = GaugeMetricFamily(
            "router_ramp_latency_seconds", "The ramp's latency quantile of each version over "
            "the last judged step", labels=["app", "version", "service", "quantile"])
        releases = driver.releases
        for app, j in sorted(driver.last.items()):
            release = releases.get(app)
            if release is None or release.ramp is None:
                continue
            q = f"{release.ramp.settings.quantile:g}"
            for version, service, m in (("new", release.new, j.new),
                                        ("old", ",".join(release.old), j.old)):
                errors.add_metric([app, version, service], m.error_rate)
                if m.latency is not None:
                    latency.add_metric([app, version, service, q], m.latency)
        driving = GaugeMetricFamily(
            "router_ramp_driver", "1 if this replica drives the guarded ramps (holds the store's "
            "lease), else 0")
        driving.add_metric([], 1 if driver.leadership.held else 0)
        yield from (decisions, errors, latency, driving)


def driver_for(manager: StateManager, store: Store | None,
               stats: Callable[[], Awaitable[Stats]]) -> RampDriver:
    """The ramp driver of a router: with a shared store it drives only while it holds the
    store's lease for :data:`DRIVER_ROLE`."""
    campaign = None
    if store is not None and store.shared:
        holder = f"{socket.gethostname()} pid {os.getpid()}"
        shared = store

        async def lead() -> bool:
            return await shared.lead(DRIVER_ROLE, holder, LEASE_TTL)
        campaign = lead
    return RampDriver(manager, stats, Leadership(campaign))
