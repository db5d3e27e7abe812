"""The task that drives the guarded ramps of a router, and the windows it judges them over
(docs/release-ramp.md).

* :class:`Planner` (pure; the counters and the clock are passed in): the window of each running
  ramp -- the counters when its step went live, and when it is due -- and what is due now,
  judged by ``router.control.rampjudge``;
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
from typing import Awaitable, Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import AppConfig
from ..dataplane.counters import Stats
from ..errors import Conflict, NotFound, Unavailable
from .manager import StateManager
from .ramp import RampAction, RampStatus
from .rampjudge import (DECISIONS, Counts, Judgement, Measure, broken, counts, judge,
                        latency_bound, measure)
from .release import Release, Status
from .state import ramp_decision
from .store import Store

log = logging.getLogger("router.ramp")

# Seconds between two reads of the counters while a ramp runs: how late a window may start or
# end. The counters are summed across workers at each read (one message per worker).
TICK = 0.1
# The role in a shared store (router.store: lead) of the replica that drives the ramps, and how
# long it keeps it without renewing: another replica takes over this long after it died.
DRIVER_ROLE = "ramp-driver"
LEASE_TTL = 5.0
# Seconds before a decision the store refused (unreachable) is tried again.
STORE_RETRY = 1.0


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
                # (in effect at once, stored later: router.control.manager, "safety before persistence").
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
            key = (d.app, d.judgement.decision if d.judgement is not None else "advance")
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
