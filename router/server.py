"""The router process: the admin API, the state, signals, graceful stop -- and the data plane,
in this process (one worker) or in N worker processes sharing the port (``--workers N``).

``Server.apply_state`` is the one way a new routing state goes live. With one worker it swaps
the table in this process; with several it sends the state to every worker and returns only
when each has swapped it in or was replaced with it, so an admin call answers once the change
is live everywhere (``router.supervisor``, docs/workers.md). Health is decided here, once
(``router.health``): active checks run here, every data plane reports what its requests see,
and the workers are told the results; /metrics sums the workers' counters.

The routing state lives in a store (``router.store``): a file by default, or etcd shared by
several replicas. With a shared store this process also follows the store's watch and makes
every other replica's change live here (``StateManager.adopt``); when the store is unreachable
the data plane keeps serving the last state and only admin changes are refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry

from . import compiled
from .config import AppConfig, Config, ConfigError, HealthCheckConfig, load_config, split_hostport
from .config.settings import keep_bound, setting_changes
from .context import ProxyContext
from .counters import Stats
from .dataplane import BACKLOG, DataPlane
from .errors import Unavailable
from .health import HEALTHY, UNCHECKED, BackendKey, Health, probe
from .listeners import bind, listen, port_of
from .logs import Throttled
from .metrics import DataPlaneCollector, StoreCollector, WorkersCollector
from .pins import SAMPLE_INTERVAL, PinWatch
from .ramp import RampCollector, RampDriver, driver_for
from .providers.docker import DockerProvider
from .release import Status
from .manager import StateCollector, StateManager
from .state import State, apply_apps, mark_ready
from .sticky import load_or_create_secret
from .store import Store, StoreConflict, StoreLost, StoreUnavailable, open_store
from .supervisor import Supervisor
from .upstream import UpstreamPool

log = logging.getLogger("router")

# How long a starting router waits for an unreachable shared store before giving up (exit 1):
# long enough for etcd and the routers to be started together, short enough that a wrong
# address is reported rather than waited on forever. A router never serves a state it could
# not read: the configuration's apps may be older than what the replicas serve.
STORE_START_TIMEOUT = 10.0
# The sticky secret's file in the state directory (unless sticky.secret_file names another).
SECRET_FILE = "router-secret"
# A one-off probe of a backend nothing has shown to work yet (a weight change to its service).
READY_PROBE = HealthCheckConfig(timeout=1.0)


class AdminServerLog(logging.LoggerAdapter[logging.Logger]):
    """The admin listener's HTTP server logger (aiohttp's, which logs every request it cannot
    parse as an ERROR with a traceback). Such a request is the client's error, answered 400
    before any handler runs: one warning line for it, throttled like the data plane's."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("router.admin"), {})
        self.throttled = Throttled(self.logger, 10.0, asyncio.get_running_loop())

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            lines = [ln.strip() for ln in exc_info.message.splitlines()]
            why = " ".join(ln for ln in lines if ln.strip("^"))[:200]
            self.throttled.warning("bad request", "admin API: a request that is not valid HTTP "
                                   "(%s), answered %d", why, exc_info.code)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


class Server:
    """One router: the admin API and state here, the data plane here or in workers."""

    def __init__(self, config: Config, store: str | None = None, workers: int = 1,
                 admin: "Callable[[Server], web.Application] | None" = None,
                 state_dir: str | None = None) -> None:
        """``store``: a file path or an ``etcd://`` URL (see ``router.store.open_store``);
        None keeps the state in memory only. ``admin`` makes the admin listener's application
        for this server (``admin.app.create_app``); None: no admin listener. ``state_dir``
        holds the sticky secret (unless ``sticky.secret_file`` names one); None: a secret for
        this process only."""
        self.config = config
        self.admin = admin
        self.store_spec = store
        self.store: Store | None = None
        self.state_dir = state_dir
        self.nworkers = workers
        self._manager: StateManager | None = None
        self._plane: DataPlane | None = None
        self.health: Health | None = None
        self.workers: Supervisor | None = None
        self.docker: DockerProvider | None = None
        self.registry = CollectorRegistry()
        self.ready = False
        self.port = 0
        self.admin_port = 0
        self._stats: Stats | None = None  # the workers' counters, summed at the last scrape
        self._listen: list[socket.socket] = []
        self._health_task: asyncio.Task[None] | None = None
        self._health_dirty = False
        self._release_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._pins_task: asyncio.Task[None] | None = None
        self.ramps: RampDriver | None = None
        self._ramp_task: asyncio.Task[None] | None = None
        self.pins = PinWatch()
        self._release_blocked = False
        self._tcp_passed: set[tuple[str, str, str]] = set()
        self._admin_runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._closing = False

    @property
    def manager(self) -> StateManager:
        """The routing state's manager (from ``start`` on)."""
        if self._manager is None:
            raise RuntimeError("the router has not started")
        return self._manager

    @property
    def plane(self) -> DataPlane:
        """This process's data plane: serving with one worker, a listener-less one for health
        and metrics with several (from ``start`` on)."""
        if self._plane is None:
            raise RuntimeError("the router has not started")
        return self._plane

    # The proxy context and pool of the in-process data plane (tests and handlers).
    @property
    def ctx(self) -> ProxyContext:
        return self.plane.ctx

    @property
    def pool(self) -> UpstreamPool:
        return self.plane.pool

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        # Every address first, before the store is touched or anything listens: a router whose
        # port is taken exits naming it (router.listeners).
        self._listen = bind(cfg.listen_host, cfg.listen_port, "data plane")
        try:
            admin_socks = bind(cfg.admin.host, cfg.admin.port, "admin API") if self.admin else []
        except OSError:
            for s in self._listen:
                s.close()
            raise
        self.port = port_of(self._listen)
        secret_path = cfg.sticky.secret_file
        if secret_path is None and self.state_dir is not None:
            secret_path = os.path.join(self.state_dir, SECRET_FILE)
        state, version, stored = State.initial(cfg.apps), 0, False
        if self.store_spec is not None:
            self.store = open_store(self.store_spec, secret_path)
            state, version, stored = await self._load_state(self.store, state)
        if cfg.sticky.secret_file is not None or self.store is None:
            secret = load_or_create_secret(secret_path)  # an explicit file always wins
        else:
            secret = await self.store.secret()  # etcd: one secret for every replica
        self._manager = StateManager(state, self.store, self.apply_state, version)
        self.health = Health(self._health_changed, cfg.passive_health, loop)
        self._plane = DataPlane(cfg, secret, state.apps, state.generation, self.health,
                                state.previews())
        self.health.update(state.apps)
        self.plane.rebuild(self.health.states())
        health = self.health
        self.registry.register(DataPlaneCollector(
            lambda: self.plane.table, self._current_stats,
            lambda: self.manager.state.releases,
            lambda key: health.state(key)[0]))
        self.registry.register(WorkersCollector(self._workers_up, self._worker_restarts))
        store = self.store
        if store is not None:
            self.registry.register(StoreCollector(lambda: store.up))
            self.registry.register(StateCollector(self.manager, store))
        listen(self._listen, BACKLOG, "data plane")
        listen(admin_socks, BACKLOG, "admin API")
        if self.nworkers == 1:
            for sock in self._listen:
                await self.plane.serve(sock)
        else:
            self.workers = Supervisor(self.nworkers, self._listen, self._init_message,
                                      self._sync_message, self._worker_notes,
                                      lambda: self.config.timeouts.worker)
            await self.workers.start()
        if self.admin is not None:
            self._admin_runner = web.AppRunner(self.admin(self), access_log=None,
                                               handle_signals=False, logger=AdminServerLog())
            await self._admin_runner.setup()
            for sock in admin_socks:
                await web.SockSite(self._admin_runner, sock).start()
            self.admin_port = port_of(admin_socks)
        if cfg.providers.docker is not None:
            self.docker = DockerProvider(cfg.providers.docker, cfg.domain, self.manager)
            self.registry.register(self.docker.collector())
            await self.docker.start()
        self._stopping = asyncio.Event()
        self._release_task = loop.create_task(
            self._every(0.25, self._check_releases, "release check"))
        self._pins_task = loop.create_task(
            self._every(SAMPLE_INTERVAL, self._sample_pins_once, "sampling the sticky counters"))
        if self.store is not None:
            self._follow_task = loop.create_task(self._follow_store(self.store))
        self._start_ramps()
        self.ready = True
        log.info("listening on %s:%d (%d worker%s), admin on %s:%d, %d apps; data plane %s",
                 cfg.listen_host, self.port, self.nworkers, "s" if self.nworkers > 1 else "",
                 cfg.admin.host, self.admin_port, len(state.apps),
                 "compiled (mypyc)" if compiled() else "plain Python (not compiled: slower)")
        if stored:
            self._report_file_apps(cfg)

    async def _load_state(self, store: Store, initial: State) -> tuple[State, int, bool]:
        """The stored state, its version, and whether it was there before; ``initial`` (the
        configuration's apps) seeds an empty store. Once the store has a state, it wins over
        the configuration (``docs/state.md``)."""
        deadline = asyncio.get_running_loop().time() + STORE_START_TIMEOUT
        waited = False
        while True:
            try:
                data, version = await store.load()  # StoreError: refuse to start on a bad state
                if data is None:
                    # Seed it, so that every replica serves one state from the start; if another
                    # replica seeded it first, its state wins.
                    assert initial.change is not None
                    try:
                        saved = await store.save(initial.to_dict(), 0, initial.change.to_dict())
                    except StoreConflict:
                        continue
                    log.info("seeded %s from %s: generation 1, %d apps", store.name,
                             self.config.source or "the defaults", len(initial.apps))
                    return initial, saved, False
                break
            except StoreUnavailable as e:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                if not waited:
                    log.warning("waiting up to %.0f s for the routing-state store: %s",
                                STORE_START_TIMEOUT, e)
                waited = True
                await asyncio.sleep(0.5)
        state = State.from_dict(data, store.name)
        log.info("routing state from %s: generation %d", store.name, state.generation)
        return state, version, True

    async def _follow_store(self, store: Store) -> None:
        """Make every change another replica stores live here (a shared store only); write back
        the newest state this replica holds if the store lost its data."""
        manager = self.manager
        # The secret goes back only if it came from the store (not from sticky.secret_file).
        secret = self.plane.secret if self.config.sticky.secret_file is None else None
        while not self._closing:
            try:
                async for data, version in store.watch(manager.version):
                    await manager.adopt(data, version)
                return  # the store has nothing to watch, or was closed
            except asyncio.CancelledError:
                raise
            except StoreLost:
                await manager.recover(secret)
            except Exception:
                log.exception("following %s failed; starting again", store.name)
                await asyncio.sleep(1)

    # -- worker processes (router.supervisor) ------------------------------------------------
    def _init_message(self) -> tuple[Any, ...]:
        return ("init", self.config, self.plane.secret, *self._sync_message()[1:])

    def _sync_message(self) -> tuple[Any, ...]:
        """What a worker needs just before it serves: the current everything."""
        assert self.health is not None
        state = self.manager.state
        return (self.config, state.apps, state.generation, self.health.states(),
                state.previews())

    def _worker_notes(self, notes: list[Any]) -> None:
        """What a worker's passive health saw; a worker that took a backend out of its own
        rotation ahead of a decision that did not come is told the decided states again."""
        health = self.health
        assert health is not None
        resync = False
        for note in notes:
            kind, key = note[0], note[1]
            if kind == "failure":
                resync |= note[3] and not health.failure(key, note[2])
            elif kind == "success":
                health.success(key)
            elif kind == "stalled":
                resync |= note[3] and not health.stalled(key, note[2])
        if resync:
            self._push_health()

    def _push_health(self) -> None:
        """Tell the workers the backends' states: one broadcast at a time, with the newest."""
        self._health_dirty = True
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._send_health())

    async def _send_health(self) -> None:
        assert self.workers is not None and self.health is not None
        while self._health_dirty and not self._closing:
            self._health_dirty = False
            await self.workers.broadcast("health", self.health.states())

    def _workers_up(self) -> int:
        if self.workers is None:
            return 1 if self.ready else 0
        return self.workers.up

    def _worker_restarts(self) -> dict[str, int]:
        return dict(self.workers.restarts) if self.workers is not None else {}

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz."""
        if not self.ready:
            return False, "stopping" if self._closing or self._stopping is not None else "starting"
        if self.workers is not None:
            up = self.workers.up
            if up == 0:
                return False, f"no worker is serving (0 of {self.nworkers}; being replaced)"
            if up < self.nworkers:
                return True, f"ready; {up} of {self.nworkers} workers serving, the others being replaced"
        return True, "ready"

    async def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP reloads the configuration file."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        assert self._stopping is not None
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def stop(self) -> None:
        """Graceful stop: not ready, no new connections, in-flight requests finish."""
        self.ready = False
        if self.config.timeouts.drain_delay > 0:
            # Not ready, still serving: load balancers see /readyz fail and stop sending.
            await asyncio.sleep(self.config.timeouts.drain_delay)
        self._closing = True
        if self.docker is not None:
            await self.docker.stop()
        grace = self.config.timeouts.grace
        if self.workers is not None:
            await self.workers.stop(grace)
        await self.plane.drain(grace)
        for sock in self._listen:
            sock.close()
        if self._release_task is not None:
            self._release_task.cancel()
        if self._follow_task is not None:
            self._follow_task.cancel()
        if self._pins_task is not None:
            self._pins_task.cancel()
        self._stop_ramps()
        if self._manager is not None:
            self._manager.close()
        if self.health is not None:
            self.health.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.store is not None:
            await self.store.close()
        log.info("stopped")

    # -- new states -----------------------------------------------------------------------
    async def apply_state(self, state: State) -> None:
        """Make ``state`` live here and in every worker (the StateManager calls this after
        persisting; the admin call answers when this returns)."""
        assert self.health is not None
        self.health.update(state.apps)
        health = self.health.states()
        self.plane.apply(state.apps, state.generation, health, state.previews())
        if self.docker is not None:
            self.docker.state_changed()
        if self.workers is not None:
            self.workers.keep({(a.name, s.name) for a in state.apps for s in a.services},
                              set(health))
            await self.workers.broadcast("state", state.apps, state.generation, health,
                                         state.previews())

    async def _tell_workers(self, kind: str, *args: Any) -> None:
        """Every worker takes the call, or is replaced (``Supervisor.broadcast``)."""
        if self.workers is not None:
            await self.workers.broadcast(kind, *args)

    def _health_changed(self) -> None:
        # Same generation: health is observed, not a change of the configured state.
        assert self.health is not None
        self.plane.rebuild(self.health.states())
        if self.workers is not None:
            self._push_health()

    def _current_stats(self) -> Stats:
        if self.workers is not None and self._stats is not None:
            return self._stats
        return self.plane.stats()

    async def summed_stats(self) -> Stats:
        """Every counter of the data plane now, summed across the worker processes: what
        ``/metrics`` and the stats endpoint read. Only reads counters; the request path is not
        touched."""
        await self.refresh_stats()
        return self._current_stats()

    async def refresh_stats(self) -> None:
        """Sum the workers' counters (before a scrape), within ``supervisor.STATS_TIMEOUT``."""
        if self.workers is not None:
            self._stats = await self.workers.stats()

    async def ready_services(self, app: AppConfig, names: Iterable[str]) -> set[str]:
        """Which of the services ``names`` of ``app`` have a backend ready to take requests: one
        shown to work, or an unchecked one that accepts a connection now (a one-off probe, as a
        release's readiness check does without a configured check)."""
        health = self.health
        assert health is not None
        services = {s.name: s for s in app.services}
        ready: set[str] = set()
        unproven: list[tuple[str, BackendKey]] = []
        for name in names:
            svc = services.get(name)
            if svc is None:
                continue
            keys = [(app.name, name, addr) for addr in svc.backends]
            if any(health.state(k)[0] == HEALTHY for k in keys):
                ready.add(name)
            else:
                unproven += [(name, k) for k in keys if health.state(k)[0] == UNCHECKED]

        async def try_one(name: str, key: BackendKey) -> None:
            host, port = split_hostport(key[2])
            if await probe(host, port, READY_PROBE):
                health.worked(key)
                ready.add(name)
        await asyncio.gather(*(try_one(n, k) for n, k in unproven))
        return ready

    def reload(self) -> None:
        """SIGHUP: the process settings of the configuration file again (timeouts, limits,
        logging, ...); never the routing state (``docs/state.md``). A bad file changes nothing."""
        path = self.config.source
        if path is None:
            log.warning("SIGHUP ignored: started without --config")
            return
        try:
            new = load_config(path)
        except ConfigError as e:
            log.error("reload refused, running configuration kept: %s", e)
            return
        changes = setting_changes(self.config, new)
        for c in changes:
            if c.needs_restart:
                log.warning("reload of %s: %s needs a restart; running with the old value", path, c)
        applied = [str(c) for c in changes if not c.needs_restart]
        if applied or not changes:
            log.info("reload of %s: %s", path, "; ".join(applied) or "no setting changed")
        self.config = keep_bound(self.config, new)
        self.plane.reconfigure(self.config)
        if self.health is not None:
            self.health.configure(self.config.passive_health)
        asyncio.get_running_loop().create_task(self._tell_workers("config", self.config))
        self._report_file_apps(new)

    def _report_file_apps(self, cfg: Config) -> None:
        """Log how the file's apps differ from the routing state, and the command that would
        import them: the file is where an operator may look first, and it may be stale."""
        if not cfg.apps:
            return  # the file leaves the apps to the admin API
        manager = self.manager
        planned = manager.preview(apply_apps(cfg.apps, force=True))
        if planned is manager.state or planned.change is None:
            return
        shown = planned.change.changes[:10]
        more = len(planned.change.changes) - len(shown)
        log.warning("the apps in %s differ from the routing state (generation %d, in %s): %s%s; "
                    "`routerctl apply %s` imports them (with --dry-run, shows what it would do)",
                    cfg.source, manager.state.generation, manager.store_name, "; ".join(shown),
                    f"; and {more} more" if more else "", cfg.source)

    async def pinned_services(self) -> frozenset[tuple[str, str]]:
        """(app, service) pairs that got a request by cookie within ``sticky.max_idle``: the
        services clients are still pinned to (``router.pins``)."""
        await self._sample_pins_once()
        return self.pins.pinned(asyncio.get_running_loop().time(), self.config.sticky.max_idle)

    async def _sample_pins_once(self) -> None:
        self.pins.observe(await self.summed_stats(), asyncio.get_running_loop().time())

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``step`` every ``seconds`` until cancelled; a failure is logged, not fatal."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", what)

    # -- guarded ramps (router.ramp) --------------------------------------------------------
    def _start_ramps(self) -> None:
        self.ramps = driver_for(self.manager, self.store, self.summed_stats)
        self.registry.register(RampCollector(self.ramps))
        self._ramp_task = asyncio.get_running_loop().create_task(self.ramps.run())

    def _stop_ramps(self) -> None:
        if self._ramp_task is not None:
            self._ramp_task.cancel()

    # -- releases ---------------------------------------------------------------------------
    async def releases_changed(self) -> None:
        """Check open releases now rather than at the next tick."""
        await self._check_releases()

    async def _check_releases(self) -> None:
        """An in-progress release whose new backends have all passed a check is ready.

        A backend with a configured health check must have passed it; one without is checked
        with a TCP connect (docs/behaviour.md, "Words").
        """
        state = self.manager.state
        health = self.health
        assert health is not None
        watched = {(n, r.new, a) for n, r in state.releases.items() if r.status == Status.IN_PROGRESS
                   for a in next(s for s in state.app(n).services if s.name == r.new).backends}
        self._tcp_passed &= watched
        for name, release in state.releases.items():
            if release.status != Status.IN_PROGRESS:
                continue
            app = state.app(name)
            svc = next(s for s in app.services if s.name == release.new)
            ready = bool(svc.backends)  # a version with no backend (yet) has proven nothing
            for addr in svc.backends:
                key = (name, svc.name, addr)
                passed = health.passed(*key)
                if passed is None:  # no configured check: a TCP connect
                    if key not in self._tcp_passed:
                        host, port = split_hostport(addr)
                        if await probe(host, port, READY_PROBE):
                            self._tcp_passed.add(key)
                            health.worked(key)
                    passed = key in self._tcp_passed
                ready = ready and passed
            if ready:
                # With several replicas each may find the release ready; the store's conditional
                # save lets one write it, and the others reload, see it marked, and get a 409.
                try:
                    await self.manager.change(mark_ready(name, release.new))
                    self._release_blocked = False
                except Unavailable as e:
                    if not self._release_blocked:  # once per outage, not every tick
                        log.warning("release of %s not marked ready: %s", name, e.message)
                    self._release_blocked = True
                except Exception as e:
                    log.info("release of %s not marked ready: %s", name, e)
