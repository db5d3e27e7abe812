"""The health of backends: what is known about each one, who observes it, and who decides.

Every backend is in one of three states (``docs/health.md``):

``unchecked``  nothing has shown yet that it works: no active check has passed and no request
               has got a response from it. It takes requests (a new backend serves at once, as
               in HAProxy), but the admin API, ``routerctl show`` and the metrics say "unchecked"
               instead of pretending it is healthy.
``healthy``    an active check passed, or a request got a response.
``unhealthy``  its active check failed ``fall`` times in a row, or passive health ejected it; it
               gets no new requests.

**Observers.** Each data plane (the one process, or every worker of ``--workers N``) owns a
:class:`PassiveHealth`: the proxy tells it of every failed use of a backend (cannot connect;
reset, closed or silent before the response; malformed response; response timeout) and of the
first response after a failure, and it sweeps for stalled backends. It reports what it sees to a
``Reporter``: in one process, the :class:`Health` itself; in a worker, a pipe to the master.

**The decision** is taken in one place per router, :class:`Health`, in the master process: it
runs the active checks (HAProxy's ``check inter rise fall``: an HTTP ``GET <path>`` answering 2xx
or 3xx, or a TCP connect), counts failures in a row across every data plane, ejects a backend
for ``passive_health.cooldown`` after ``passive_health.failures`` of them (nginx's
``max_fails``/``fail_timeout``, Envoy's consecutive errors), and readmits it after. An active
check cannot end an ejection early -- a backend can pass its check and still fail requests,
which is what passive health is for -- and a backend that comes back after the cooldown must
first answer: pass its HTTP check if it has one, else answer one ``OPTIONS *`` request (a
frozen process still accepts connections). A backend is ejected whenever the app has somewhere
else to send its requests -- another backend of its service, or another service, which the
weights or the fallback then choose (``router.dataplane.routing.elsewhere``): a service whose every
backend is out is down, as a dead one is. Only when nothing else in the app could serve does
its last backend stay.

Routing reads only ``Backend.healthy`` (``state != unhealthy``) from the routing table. When a
backend goes out of rotation or back in, :class:`Health` calls ``on_change``; its owner then
builds new tables from :meth:`Health.states`, in this process and, through the master, in every
worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

from ..config import AppConfig, HealthCheckConfig, PassiveHealthConfig, split_hostport
from .counters import BUCKETS

if TYPE_CHECKING:
    from .table import Backend

log = logging.getLogger("router.health")

HEALTHY, UNHEALTHY, UNCHECKED = "healthy", "unhealthy", "unchecked"

BackendKey = tuple[str, str, str]  # (app, service, address)
HealthMap = Mapping[BackendKey, str]  # backend -> state: what a data plane is told

# Stalled backends: a backend that has had requests waiting for a response head all along while
# no response at all has begun from it for longer than the stall limit is ejected without
# waiting for the response timeout (60 s by default: a frozen process would get a share of new
# requests all that time). Stalled is "nothing comes back", not "slow": the limit is
# STALL_FACTOR times the service's 99th-percentile latency and at least STALL_MIN, and
# STALL_UNKNOWN while the service has answered nothing yet (a version that takes 5 s from its
# first request is slow, not stalled). A service whose p99 is beyond the histogram's last
# bucket (long polling, say) is never judged stalled, and neither is any stall the response
# timeout ends first. Swept every STALL_SWEEP seconds, off the request path. See docs/health.md.
STALL_SWEEP = 0.5
STALL_MIN = 2.0
STALL_FACTOR = 10.0
STALL_UNKNOWN = 10.0
# A backend ejected by passive health with no HTTP check must answer one request before it is
# back: OPTIONS * (RFC 9110, 9.3.7: about the server, no resource), any status, within this.
# Without it a frozen backend, which still accepts connections, would take a share of requests
# for a stall limit after every cooldown.
READMIT_TIMEOUT = 5.0
# A one-off connect to a backend nothing has shown to work yet (a release's readiness, a weight
# change to its service), standing for the check it does not have.
CONNECT_PROBE = HealthCheckConfig(timeout=1.0)


class Reporter(Protocol):
    """Where a data plane's observations go: :class:`Health`, or the pipe to the master."""

    # The data plane ignores what these return.
    def failure(self, key: BackendKey, run: int) -> object:
        """A request failed on the backend; ``run`` failures in a row seen by this data plane."""

    def success(self, key: BackendKey) -> object:
        """A response began after failures, or from a backend not yet shown to work."""

    def stalled(self, key: BackendKey, reason: str) -> object:
        """The backend's requests are stuck (see STALL_FACTOR)."""


class PassiveHealth:
    """One data plane's passive health: what its proxy observes, told to a ``Reporter``.

    ``watching`` holds the backends whose next response must be reported: those with failures
    in a row (their count) and those not yet shown to work (0). The proxy tests its truth before
    calling :meth:`success`, so a process where nothing is failing or unchecked pays one test per
    response; it holds the dict itself, which is therefore changed in place, never replaced.
    """

    __slots__ = ("watching", "failures", "reporter", "_progress")

    def __init__(self, reporter: Reporter, failures: int) -> None:
        self.watching: dict[Backend, int] = {}
        self.failures = failures  # 0: passive health off (unchecked backends are still watched)
        self.reporter = reporter
        self._progress: dict[Backend, tuple[int, float]] = {}

    def failure(self, be: Backend) -> None:
        if self.failures <= 0:
            return
        n = self.watching.get(be, 0) + 1
        self.watching[be] = n
        self.reporter.failure(be.ident, n)

    def success(self, be: Backend) -> None:
        if self.watching.pop(be, None) is not None:
            self.reporter.success(be.ident)

    def follow(self, backends: Iterable[Backend], health: HealthMap) -> None:
        """A new table: watch the unchecked backends, forget those gone or ejected (an ejected
        backend starts counting afresh when it comes back)."""
        old = self.watching
        watching: dict[Backend, int] = {}
        for be in backends:
            state = health.get(be.ident, UNCHECKED)
            if state == UNCHECKED:
                watching[be] = old.get(be, 0)
            elif state == HEALTHY and be in old:
                watching[be] = old[be]
        old.clear()
        old.update(watching)

    def sweep(self, waiting: Iterable[Any], response_timeout: float, now: float) -> None:
        """Report the backends whose requests are stuck (see STALL_FACTOR).

        ``waiting``: the exchanges waiting for a response head now (the proxy's response
        deadlines, ``ResponseDeadlines.waiting``); each has ``backend`` and ``service``. A backend's clock starts at
        the first sweep that finds requests waiting on it, and starts again whenever a response
        from it begins (``Backend.answered``) or a sweep finds nothing waiting on it: requests
        given up by their clients are replaced by others, and a hung backend is still caught.
        """
        if self.failures <= 0:
            return
        pending: dict[Backend, tuple[int, object]] = {}
        for ex in waiting:
            be: Backend | None = getattr(ex, "backend", None)
            if be is None:
                continue
            seen = pending.get(be)
            pending[be] = ((1, getattr(ex, "service", None)) if seen is None
                           else (seen[0] + 1, seen[1]))
        progress: dict[Backend, tuple[int, float]] = {}
        for be, (count, svc) in pending.items():
            before = self._progress.get(be)
            since = now if before is None or before[0] != be.answered else before[1]
            progress[be] = (be.answered, since)
            limit = stall_limit(getattr(svc, "stats", None))
            if limit is None or limit >= response_timeout or not be.healthy:
                continue
            if now - since > limit:
                self.reporter.stalled(be.ident, f"ejected: no response for over {limit:g} s, "
                                      f"{count} request{'s' if count > 1 else ''} waiting")
        self._progress = progress


def stall_limit(stats: object) -> float | None:
    """How long a backend may give no response while requests wait on it before it counts as
    stalled: see STALL_FACTOR. None: never (the service's usual latency is beyond the
    histogram)."""
    buckets: list[int] | None = getattr(stats, "buckets", None)
    if not buckets:
        return STALL_UNKNOWN
    total = sum(buckets)
    if total == 0:
        return STALL_UNKNOWN
    acc = 0
    for bound, n in zip(BUCKETS, buckets):
        acc += n
        if acc >= 0.99 * total:
            return max(STALL_MIN, STALL_FACTOR * bound)
    return None


async def probe(host: str, port: int, check: HealthCheckConfig) -> bool:
    """One check: True if the backend answered as it should within the timeout."""
    if check.path is None:
        return await _status_line(host, port, None, check.timeout) is not None
    line = await _status_line(host, port, f"GET {check.path}", check.timeout)
    parts = (line or b"").split(None, 2)
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


async def answers(host: str, port: int, timeout: float) -> bool:
    """Whether the backend answers an HTTP request at all, whatever the status, within
    ``timeout``: ``OPTIONS *``, which asks nothing of any resource."""
    return bool(await _status_line(host, port, "OPTIONS *", timeout))


async def _status_line(host: str, port: int, request: str | None, timeout: float) -> bytes | None:
    """The status line answering ``request`` (``METHOD target``), or b"" once connected when
    ``request`` is None; None when nothing came within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if request is None:
                    return b""
                hosthdr = f"[{host}]" if ":" in host else host
                writer.write(f"{request} HTTP/1.1\r\nHost: {hosthdr}:{port}\r\n"
                             "User-Agent: router-health\r\nConnection: close\r\n\r\n".encode())
                line = await reader.readline()
                return line if line.startswith(b"HTTP/1.") else None
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return None


class _Known:
    """What is known about one backend, and its active check."""

    __slots__ = ("state", "reason", "run", "group", "app", "check", "ejected")

    def __init__(self, group: tuple[BackendKey, ...]) -> None:
        self.state = UNCHECKED
        self.reason: str | None = None
        self.run = 0  # request failures in a row, across every data plane
        self.group = group  # the backends of its service
        self.app: tuple[tuple[int, tuple[BackendKey, ...]], ...] = ()  # (weight, group) a service
        self.check: _Check | None = None
        # While ejected: the cooldown's timer, then the readmission's probe.
        self.ejected: asyncio.TimerHandle | asyncio.Task[None] | None = None


class _Check:
    __slots__ = ("config", "task", "ok_run", "fail_run", "up")

    def __init__(self, config: HealthCheckConfig) -> None:
        self.config = config
        self.task: asyncio.Task[None] | None = None
        self.ok_run = 0
        self.fail_run = 0
        self.up = True  # the check's own verdict; unproven backends take requests


class Health:
    """The health of every routed backend of one router: the one place that decides.

    ``on_change`` is called when a backend goes out of rotation or back in (the caller builds
    new tables from :meth:`states` and tells the workers). Reports arrive by backend key, from
    this process's data plane or from workers.
    """

    def __init__(self, on_change: Callable[[], None], passive: PassiveHealthConfig,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._on_change = on_change
        self._loop = loop
        self._known: dict[BackendKey, _Known] = {}
        self.configure(passive)

    def configure(self, passive: PassiveHealthConfig) -> None:
        self.failures = passive.failures
        self.cooldown = passive.cooldown

    # -- following the configured apps -------------------------------------------------------
    def update(self, apps: tuple[AppConfig, ...]) -> None:
        """New backends start unchecked; checks start, change or stop with the configuration."""
        known: dict[BackendKey, _Known] = {}
        changed = False
        for app in apps:
            services = tuple((svc.weight, tuple((app.name, svc.name, a) for a in svc.backends))
                             for svc in app.services)
            for svc, (_, group) in zip(app.services, services):
                for key in group:
                    k = self._known.pop(key, None) or _Known(group)
                    k.group = group
                    k.app = services
                    known[key] = k
                    check = k.check
                    if check is not None and check.config != svc.health_check:
                        if check.task is not None:
                            check.task.cancel()
                        k.check = None
                        if k.state == UNHEALTHY and k.ejected is None:
                            # Out only by its old check: unproven again, back in.
                            k.state, k.reason = UNCHECKED, None
                            changed = True
                    if svc.health_check is not None and k.check is None:
                        k.check = _Check(svc.health_check)
                        k.check.task = self._loop.create_task(self._run(key, k))
        for k in self._known.values():  # backends no longer configured
            self._forget(k)
        self._known = known
        if changed:
            self._on_change()

    def stop(self) -> None:
        for k in self._known.values():
            self._forget(k)
        self._known = {}

    @staticmethod
    def _forget(k: _Known) -> None:
        if k.check is not None and k.check.task is not None:
            k.check.task.cancel()
        if k.ejected is not None:
            k.ejected.cancel()

    # -- what is known -------------------------------------------------------------------------
    def state(self, key: BackendKey) -> tuple[str, str | None]:
        """(state, reason) of a backend; unchecked if it is not known (yet)."""
        k = self._known.get(key)
        return (UNCHECKED, None) if k is None else (k.state, k.reason)

    def states(self) -> dict[BackendKey, str]:
        """Every backend's state: what a data plane is told."""
        return {key: k.state for key, k in self._known.items()}

    def passed(self, app: str, service: str, addr: str) -> bool | None:
        """Whether the backend has passed its active check ``rise`` times in a row, as a
        backend coming back into rotation must (None: it has no check). A release waits for
        this of every new backend."""
        k = self._known.get((app, service, addr))
        if k is None or k.check is None:
            return None
        return k.check.ok_run >= k.check.config.rise

    # -- reports ---------------------------------------------------------------------------------
    def failure(self, key: BackendKey, run: int) -> bool:
        """A request failed on the backend; ``run``: failures in a row seen by the reporting data
        plane. True if the backend is (now) out of rotation."""
        k = self._known.get(key)
        if k is None or self.failures <= 0:
            return False
        k.run = max(k.run + 1, run)
        if k.run >= self.failures:
            return self._eject(key, k, f"ejected: {k.run} requests failed in a row")
        return k.state == UNHEALTHY

    def success(self, key: BackendKey) -> None:
        k = self._known.get(key)
        if k is None:
            return
        k.run = 0
        if k.state == UNCHECKED:
            k.state, k.reason = HEALTHY, None

    def stalled(self, key: BackendKey, reason: str) -> bool:
        k = self._known.get(key)
        if k is None or self.failures <= 0:
            return False
        return self._eject(key, k, reason)

    def worked(self, key: BackendKey) -> None:
        """A one-off probe (a release's readiness, a weight change's) reached the backend."""
        k = self._known.get(key)
        if k is not None and k.state == UNCHECKED:
            k.state, k.reason = HEALTHY, None

    async def connect(self, keys: Iterable[BackendKey]) -> set[BackendKey]:
        """A one-off connect to each backend (:data:`CONNECT_PROBE`), which stands for a check
        where none is configured: those that took it, from now on shown to work."""
        keys = list(keys)
        took = await asyncio.gather(*(probe(*split_hostport(k[2]), CONNECT_PROBE) for k in keys))
        connected = {k for k, ok in zip(keys, took) if ok}
        for key in connected:
            self.worked(key)
        return connected

    async def ready_services(self, app: AppConfig, names: Iterable[str]) -> set[str]:
        """Which of the services ``names`` of ``app`` have a backend ready to take requests: one
        shown to work, or an unchecked one that accepts a connection now (:meth:`connect`, as a
        release's readiness check does without a configured check)."""
        services = {s.name: s for s in app.services}
        ready: set[str] = set()
        unproven: list[tuple[str, BackendKey]] = []
        for name in names:
            svc = services.get(name)
            if svc is None:
                continue
            keys = [(app.name, name, addr) for addr in svc.backends]
            if any(self.state(k)[0] == HEALTHY for k in keys):
                ready.add(name)
            else:
                unproven += [(name, k) for k in keys if self.state(k)[0] == UNCHECKED]
        connected = await self.connect(k for _, k in unproven)
        return ready | {name for name, k in unproven if k in connected}

    # -- passive health ----------------------------------------------------------------------------
    def _eject(self, key: BackendKey, k: _Known, reason: str) -> bool:
        if k.state == UNHEALTHY:
            return True
        if not self._elsewhere(key, k):
            return False  # nothing else in the app could take its requests: it stays
        k.state, k.reason, k.run = UNHEALTHY, reason, 0
        k.ejected = self._loop.call_later(self.cooldown, self._readmit, key)
        log.warning("backend %s of %s/%s %s; out for %gs", key[2], key[0], key[1], reason,
                    self.cooldown)
        self._on_change()
        return True

    def _elsewhere(self, key: BackendKey, k: _Known) -> bool:
        """Whether the app has another backend in rotation for requests with ``key`` out: one of
        its service, or -- when any service of the app has weight -- one of another service
        (the weights, a pin's fresh pick or the fallback go there). The master's form of
        ``router.dataplane.routing.elsewhere``, from the decided states."""
        def takes(other: BackendKey) -> bool:
            o = self._known.get(other)
            return other != key and o is not None and o.state != UNHEALTHY

        if any(takes(o) for o in k.group):
            return True
        return (any(w > 0 for w, _ in k.app)
                and any(takes(o) for _, group in k.app if group != k.group for o in group))

    def _readmit(self, key: BackendKey) -> None:
        k = self._known.get(key)
        if k is None:
            return
        k.ejected = None
        if k.check is not None and not k.check.up:
            k.reason = f"{k.check.fail_run} failed checks"
            return
        if k.check is None or k.check.config.path is None:
            # Nothing has shown that it answers requests again (a TCP check passes on a frozen
            # process): one request first.
            k.ejected = self._loop.create_task(self._probe_back(key, k))
            return
        self._back(key, k)

    async def _probe_back(self, key: BackendKey, k: _Known) -> None:
        host, port = split_hostport(key[2])
        ok = await answers(host, port, READMIT_TIMEOUT)
        if self._known.get(key) is not k:
            return  # no longer routed
        if ok:
            k.ejected = None
            self._back(key, k)
            return
        k.ejected = self._loop.call_later(self.cooldown, self._readmit, key)
        log.warning("backend %s of %s/%s did not answer after its passive-health cooldown; out "
                    "for %gs more", key[2], key[0], key[1], self.cooldown)

    def _back(self, key: BackendKey, k: _Known) -> None:
        """Back in rotation, on probation: unchecked until a check or a request shows it works."""
        k.state = HEALTHY if k.check is not None else UNCHECKED
        k.reason = None
        log.warning("backend %s of %s/%s back after its passive-health cooldown",
                    key[2], key[0], key[1])
        self._on_change()

    # -- active checks -------------------------------------------------------------------------------
    async def _run(self, key: BackendKey, k: _Known) -> None:
        check = k.check
        assert check is not None
        cfg = check.config
        host, port = split_hostport(key[2])
        while True:
            ok = await probe(host, port, cfg)
            if ok:
                check.ok_run += 1
                check.fail_run = 0
                if k.state == UNCHECKED:
                    k.state, k.reason = HEALTHY, None
                if not check.up and check.ok_run >= cfg.rise:
                    check.up = True
                    if k.ejected is None and k.state == UNHEALTHY:
                        k.state, k.reason = HEALTHY, None
                        log.warning("backend %s of %s/%s is healthy again", key[2], key[0], key[1])
                        self._on_change()
            else:
                check.fail_run += 1
                check.ok_run = 0
                if check.up and check.fail_run >= cfg.fall:
                    check.up = False
                    if k.state != UNHEALTHY:
                        k.state, k.reason = UNHEALTHY, f"{check.fail_run} failed checks"
                        log.warning("backend %s of %s/%s is unhealthy: %d failed checks",
                                    key[2], key[0], key[1], check.fail_run)
                        self._on_change()
                elif k.state == UNHEALTHY and k.ejected is None:
                    k.reason = f"{check.fail_run} failed checks"
            await asyncio.sleep(cfg.interval)



def apply_states(backends: Iterable[Backend], health: HealthMap) -> None:
    """Set each backend's routing flag from a health map (a data plane told by the master)."""
    for be in backends:
        be.healthy = health.get(be.ident, UNCHECKED) != UNHEALTHY
