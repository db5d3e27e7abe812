"""What changes the routing state besides the admin API, while this router holds the state: the
Docker provider, the release checks, the ramps, the sampling of the sticky counters; and, with
a shared store, following what the other replicas store (``StateManager.follow``).

The router starts them once it holds the state (at its start, after a takeover, when a takeover
is called off) and stops them before it lets go of it (a stop, a handover to a successor).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from ..config import Config
from ..dataplane.counters import Stats
from ..errors import RouterError, Unavailable
from ..dataplane.health import BackendKey, Health
from .manager import StateManager
from .pins import SAMPLE_INTERVAL, PinWatch
from ..providers.docker import DockerProvider
from .rampdriver import TICK as RAMP_TICK, RampCollector, RampDriver, driver_for
from .release import readiness
from .state import mark_ready
from .store import Store

log = logging.getLogger("router")

# Seconds between two looks at the open releases' new backends.
RELEASE_CHECK = 0.25


class Controllers:
    """The tasks that change the routing state on their own, and the series they export to
    ``registry``. ``manager()`` and ``health()`` are the router's current ones (a takeover
    called off reads the state again); ``stats()`` sums the data plane's counters (across the
    worker processes)."""

    def __init__(self, registry: CollectorRegistry, manager: Callable[[], StateManager],
                 health: Callable[[], Health], stats: Callable[[], Awaitable[Stats]]) -> None:
        self._registry = registry
        self._manager = manager
        self._health = health
        self._stats = stats
        self.docker: DockerProvider | None = None
        self.ramps: RampDriver | None = None
        self.pins = PinWatch()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._follow: asyncio.Task[None] | None = None
        self._collectors: dict[str, Any] = {}
        self._release_blocked = False
        self._tcp_passed: set[BackendKey] = set()

    async def start(self, config: Config, store: Store | None, secret: bytes | None) -> None:
        """Start them; ``secret``: the sticky secret a store that lost its data is given back
        (None: it is not the store's)."""
        loop = asyncio.get_running_loop()
        manager = self._manager()
        self._stop = asyncio.Event()
        if config.providers.docker is not None:
            self.docker = DockerProvider(config.providers.docker, config.domain, manager)
            self._register("docker", self.docker.collector())
            await self.docker.start()
        self.ramps = driver_for(manager, store, self._stats)
        self._register("ramps", RampCollector(self.ramps))
        self._tasks = [
            loop.create_task(self._every(RELEASE_CHECK, self.check_releases, "release check")),
            loop.create_task(self._every(SAMPLE_INTERVAL, self._sample_pins,
                                         "sampling the sticky counters")),
            loop.create_task(self._every(RAMP_TICK, self.ramps.tick, "driving the ramps"))]
        if store is not None:
            self._follow = loop.create_task(manager.follow(secret))

    def _register(self, name: str, collector: Any) -> None:
        """The series of the current provider or driver (one that was stopped is replaced)."""
        old = self._collectors.pop(name, None)
        if old is not None:
            self._registry.unregister(old)
        self._collectors[name] = collector
        self._registry.register(collector)

    async def stop_docker(self) -> None:
        """The Docker provider stops changing the state (the first thing a stop does)."""
        if self.docker is not None:
            await self.docker.stop()
            self.docker = None

    async def stop(self) -> None:
        """Stop everything :meth:`start` started; a step under way (a change being stored) ends
        first."""
        if self.docker is not None:
            await self.docker.stop()
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
            self._follow = None

    async def _every(self, seconds: float, step: Callable[[], Awaitable[Any]], what: str) -> None:
        """Run ``step`` every ``seconds`` until :meth:`stop` (a step under way ends first); a
        failure is logged, not fatal."""
        stop = self._stop
        while True:
            try:
                await asyncio.wait_for(stop.wait(), seconds)
                return
            except TimeoutError:
                pass
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", what)

    # -- sticky pins --------------------------------------------------------------------------
    async def pinned(self, max_idle: float) -> frozenset[tuple[str, str]]:
        """(app, service) pairs that got a request by cookie within ``max_idle`` seconds: the
        services clients are still pinned to (``router.control.pins``)."""
        await self._sample_pins()
        return self.pins.pinned(asyncio.get_running_loop().time(), max_idle)

    async def _sample_pins(self) -> None:
        self.pins.observe(await self._stats(), asyncio.get_running_loop().time())

    # -- releases -----------------------------------------------------------------------------
    async def check_releases(self) -> None:
        """Mark ready every in-progress release whose new backends have all passed a check
        (``release.readiness``); a backend without a configured check is probed with a TCP
        connect (``Health.connect``)."""
        manager, health = self._manager(), self._health()
        state = manager.state

        def backends(app: str, service: str) -> tuple[str, ...]:
            return next(s for s in state.app(app).services if s.name == service).backends

        def checked(key: BackendKey) -> bool | None:
            return health.passed(*key)

        plan = readiness(state.releases, backends, checked, self._tcp_passed)
        self._tcp_passed &= plan.watched
        if plan.probe:
            self._tcp_passed |= await health.connect(plan.probe)
            plan = readiness(state.releases, backends, checked, self._tcp_passed)
        for name in plan.ready:
            await self._mark_ready(manager, name, state.releases[name].new)

    async def _mark_ready(self, manager: StateManager, name: str, new: str) -> None:
        # With several replicas each may find the release ready; the store's conditional save
        # lets one write it, and the others reload and see it marked (READY is idempotent).
        try:
            await manager.change(mark_ready(name, new))
            self._release_blocked = False
        except Unavailable as e:
            if not self._release_blocked:  # once per outage, not every tick
                log.warning("release of %s not marked ready: %s", name, e.message)
            self._release_blocked = True
        except RouterError as e:  # the release changed or closed meanwhile (409, 404)
            log.warning("release of %s not marked ready: %s", name, e.message)
