"""The router process: the admin API, the state, signals, graceful stop -- and the data plane,
in this process (one worker) or in N worker processes sharing the port (``--workers N``).

``Server.apply_state`` is the one way a new routing state goes live. With one worker it swaps
the table in this process; with several it sends the state to every worker and returns only
when each has swapped it in, so an admin call answers once the change is live everywhere
(SPEC 4.4, 6). Health checks and release readiness run here, once, and the workers are told
the results; /metrics sums the workers' counters.

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
import sys
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import compiled, ipc
from .config import Config, ConfigError, HealthCheckConfig, load_config, split_hostport
from .config.settings import keep_bound, setting_changes
from .counters import Stats
from .dataplane import DataPlane
from .errors import Unavailable
from .health import HealthChecker, probe
from .metrics import DataPlaneCollector, StoreCollector
from .pins import SAMPLE_INTERVAL, PinWatch
from .providers.docker import DockerProvider
from .release import Status
from .state import State, StateManager, apply_apps, mark_ready
from .sticky import load_or_create_secret
from .store import Store, StoreConflict, StoreUnavailable, open_store

log = logging.getLogger("router")

# How long a starting router waits for an unreachable shared store before giving up (exit 1):
# long enough for etcd and the routers to be started together, short enough that a wrong
# address is reported rather than waited on forever. A router never serves a state it could
# not read: the configuration's apps may be older than what the replicas serve.
STORE_START_TIMEOUT = 10.0


class Worker:
    """The master's handle on one worker process: one request at a time, in order."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def start(self, init: tuple[Any, ...]) -> None:
        parent, child = socket.socketpair()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.worker", str(child.fileno()), pass_fds=[child.fileno()])
        child.close()
        self.reader, self.writer = await asyncio.open_connection(sock=parent)
        await ipc.send(self.writer, init)
        reply = await asyncio.wait_for(ipc.recv(self.reader), 30)
        if reply[0] != "ready":
            raise RuntimeError(f"worker {self.index}: unexpected {reply!r}")

    async def request(self, *msg: Any) -> Any:
        async with self._lock:
            assert self.reader is not None and self.writer is not None
            await ipc.send(self.writer, msg)
            return await ipc.recv(self.reader)


class Server:
    """One router: the admin API and state here, the data plane here or in workers."""

    def __init__(self, config: Config, store: str | None = None, workers: int = 1,
                 admin: "Callable[[Server], web.Application] | None" = None) -> None:
        """``store``: a file path or an ``etcd://`` URL (see ``router.store.open_store``);
        None keeps the state in memory only. ``admin`` makes the admin listener's application
        for this server (``admin.app.create_app``); None: no admin listener."""
        self.config = config
        self.admin = admin
        self.store_spec = store
        self.store: Store | None = None
        self.nworkers = workers
        self.manager: StateManager | None = None
        self.plane: DataPlane | None = None
        self.health: HealthChecker | None = None
        self.docker: DockerProvider | None = None
        self.registry = CollectorRegistry()
        self.ready = False
        self.port = 0
        self.admin_port = 0
        self._workers: list[Worker] = []
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._stats: Stats | None = None  # the workers' counters, summed at the last scrape
        self._reserved: socket.socket | None = None
        self._release_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._pins_task: asyncio.Task[None] | None = None
        self.pins = PinWatch()
        self._release_blocked = False
        self._tcp_passed: set[tuple[str, str, str]] = set()
        self._admin_runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._closing = False

    # The proxy context, pool and table of the in-process data plane (tests and handlers).
    @property
    def ctx(self):  # type: ignore[no-untyped-def]
        return self.plane.ctx  # type: ignore[union-attr]

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        return self.plane.pool  # type: ignore[union-attr]

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        secret_path = cfg.sticky.secret_file
        if secret_path is None and cfg.source:
            secret_path = os.path.join(os.path.dirname(os.path.abspath(cfg.source)), "router-secret")
        state, version, stored = State.initial(cfg.apps), 0, False
        if self.store_spec is not None:
            self.store = open_store(self.store_spec, secret_path)
            state, version, stored = await self._load_state(self.store, state)
        if cfg.sticky.secret_file is not None or self.store is None:
            secret = load_or_create_secret(secret_path)  # an explicit file always wins
        else:
            secret = await self.store.secret()  # etcd: one secret for every replica
        self.manager = StateManager(state, self.store, self.apply_state, version)
        self.plane = DataPlane(cfg, secret, state.apps, state.generation)
        self.registry.register(DataPlaneCollector(
            lambda: self.plane.table, self._current_stats,  # type: ignore[union-attr]
            lambda: self.manager.state.releases))  # type: ignore[union-attr]
        if self.store is not None:
            self.registry.register(StoreCollector(lambda: self.store.up))  # type: ignore[union-attr]
        self.health = HealthChecker(self.plane.builder, self._health_changed)
        self.health.update(state.apps)
        if self.nworkers == 1:
            self.port = await self.plane.listen(cfg.listen_host, cfg.listen_port)
        else:
            await self._start_workers(state)
        if self.admin is not None:
            self._admin_runner = web.AppRunner(self.admin(self), access_log=None,
                                               handle_signals=False)
            await self._admin_runner.setup()
            site = web.TCPSite(self._admin_runner, cfg.admin.host, cfg.admin.port,
                               reuse_address=True)
            await site.start()
            self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
        """Make every change another replica stores live here (a shared store only)."""
        manager = self.manager
        assert manager is not None
        while not self._closing:
            try:
                async for data, version in store.watch(manager.version):
                    await manager.adopt(data, version)
                return  # the store has nothing to watch, or was closed
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following %s failed; starting again", store.name)
                await asyncio.sleep(1)

    async def _start_workers(self, state: State) -> None:
        cfg = self.config
        # Hold the port (bound, not listening) so that port 0 names one port for every worker.
        family = socket.AF_INET6 if ":" in cfg.listen_host else socket.AF_INET
        self._reserved = socket.socket(family, socket.SOCK_STREAM)
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserved.bind((cfg.listen_host, cfg.listen_port))
        self.port = self._reserved.getsockname()[1]
        self._workers = [Worker(i) for i in range(self.nworkers)]
        await asyncio.gather(*(w.start(self._init_message(state)) for w in self._workers))
        self._worker_tasks = [asyncio.get_running_loop().create_task(self._supervise(w))
                              for w in self._workers]

    def _init_message(self, state: State) -> tuple[Any, ...]:
        plane = self.plane
        assert plane is not None
        return ("init", self.config, plane.secret, state.apps, state.generation,
                plane.health_map(), self.port)

    async def _supervise(self, worker: Worker) -> None:
        """A worker that dies is started again with the current state."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self._closing:
                return
            log.error("worker %d exited with %s; starting it again", worker.index, code)
            await asyncio.sleep(0.5)
            try:
                await worker.start(self._init_message(self.manager.state))  # type: ignore[union-attr]
            except Exception:
                log.exception("worker %d did not start", worker.index)

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
        if self._workers:
            await asyncio.gather(*(self._stop_worker(w, grace) for w in self._workers))
            for t in self._worker_tasks:
                t.cancel()
            if self._reserved is not None:
                self._reserved.close()
        assert self.plane is not None
        await self.plane.drain(grace)
        if self._release_task is not None:
            self._release_task.cancel()
        if self._follow_task is not None:
            self._follow_task.cancel()
        if self._pins_task is not None:
            self._pins_task.cancel()
        if self.health is not None:
            self.health.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.store is not None:
            await self.store.close()
        log.info("stopped")

    async def _stop_worker(self, worker: Worker, grace: float) -> None:
        try:
            await asyncio.wait_for(worker.request("stop", grace), grace + 5)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
            log.warning("worker %d did not stop cleanly: %r", worker.index, e)
        if worker.proc is not None and worker.proc.returncode is None:
            try:
                await asyncio.wait_for(worker.proc.wait(), 5)
            except asyncio.TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()

    # -- new states -----------------------------------------------------------------------
    async def apply_state(self, state: State) -> None:
        """Make ``state`` live here and in every worker (the StateManager calls this after
        persisting; the admin call answers when this returns)."""
        assert self.plane is not None and self.health is not None
        self.plane.apply(state.apps, state.generation)
        self.health.update(state.apps)
        if self.docker is not None:
            self.docker.state_changed()
        await self._tell_workers("state", state.apps, state.generation, self.plane.health_map())

    async def _tell_workers(self, *msg: Any) -> None:
        if not self._workers:
            return
        replies = await asyncio.gather(*(w.request(*msg) for w in self._workers),
                                       return_exceptions=True)
        for w, r in zip(self._workers, replies):
            if isinstance(r, BaseException):
                # A dead worker is restarted with the current state by its supervisor.
                log.error("worker %d did not take %s: %r", w.index, msg[0], r)

    def _health_changed(self) -> None:
        # Same generation: health is observed, not a change of the configured state.
        assert self.plane is not None
        self.plane.rebuild()
        if self._workers:
            asyncio.get_running_loop().create_task(
                self._tell_workers("health", self.plane.health_map()))

    def _current_stats(self) -> Stats:
        if self._workers and self._stats is not None:
            return self._stats
        return self.plane.stats()  # type: ignore[union-attr]

    async def summed_stats(self) -> Stats:
        """Every counter of the data plane now, summed across the worker processes: what
        ``/metrics`` and the stats endpoint read. Only reads counters; the request path is not
        touched."""
        await self.refresh_stats()
        return self._current_stats()

    async def refresh_stats(self) -> None:
        """Sum the workers' counters (before a scrape)."""
        if not self._workers:
            return
        total = Stats()
        replies = await asyncio.gather(*(w.request("stats") for w in self._workers),
                                       return_exceptions=True)
        for r in replies:
            if not isinstance(r, BaseException):
                total.add(r[1])
        self._stats = total

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
        self.plane.reconfigure(self.config)  # type: ignore[union-attr]
        asyncio.get_running_loop().create_task(self._tell_workers("config", self.config))
        self._report_file_apps(new)

    def _report_file_apps(self, cfg: Config) -> None:
        """Log how the file's apps differ from the routing state, and the command that would
        import them: the file is where an operator may look first, and it may be stale."""
        if not cfg.apps:
            return  # the file leaves the apps to the admin API
        manager = self.manager
        assert manager is not None
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

    # -- releases ---------------------------------------------------------------------------
    async def releases_changed(self) -> None:
        """Check open releases now rather than at the next tick."""
        await self._check_releases()

    async def _check_releases(self) -> None:
        """An in-progress release whose new backends have all passed a check is ready.

        A backend with a configured health check must have passed it; one without is checked
        with a TCP connect (SPEC 5).
        """
        state = self.manager.state  # type: ignore[union-attr]
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
                passed = self.health.passed(*key)  # type: ignore[union-attr]
                if passed is None:  # no configured check: a TCP connect
                    if key not in self._tcp_passed:
                        host, port = split_hostport(addr)
                        if await probe(host, port, HealthCheckConfig(timeout=1.0)):
                            self._tcp_passed.add(key)
                    passed = key in self._tcp_passed
                ready = ready and passed
            if ready:
                # With several replicas each may find the release ready; the store's conditional
                # save lets one write it, and the others reload, see it marked, and get a 409.
                try:
                    await self.manager.change(mark_ready(name, release.new))  # type: ignore[union-attr]
                    self._release_blocked = False
                except Unavailable as e:
                    if not self._release_blocked:  # once per outage, not every tick
                        log.warning("release of %s not marked ready: %s", name, e.message)
                    self._release_blocked = True
                except Exception as e:
                    log.info("release of %s not marked ready: %s", name, e)
