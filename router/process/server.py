"""The router process: the admin API, the state, signals, graceful stop -- and the data plane,
in this process (one worker) or in N worker processes sharing the port (``--workers N``).

``Server.apply_state`` is the one way a new routing state goes live. With one worker it swaps
the table in this process; with several it sends the state to every worker and returns only
when each has swapped it in or was replaced with it, so an admin call answers once the change
is live everywhere (``router.process.supervisor``, docs/workers.md). Health is decided here, once
(``router.dataplane.health``): active checks run here, every data plane reports what its requests see,
and the workers are told the results; /metrics sums the workers' counters.

The routing state lives in a store (``router.control.store``): a file by default, or etcd shared by
several replicas. With a shared store this process also follows the store's watch and makes
every other replica's change live here (``StateManager.adopt``); when the store is unreachable
the data plane keeps serving the last state and only admin changes are refused.

A successor (``router serve --takeover``, or this router's own upgrade on SIGUSR2) takes over
through the handoff socket (``router.process.handoff``): both sides of it, the old router's
(``release_state``, ``hand_over``, ...) and the new one's (``_start_successor``), are in
``router.process.takeover``.
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

from .. import compiled
from ..config import AppConfig, Config, ConfigError, load_config
from ..config.settings import keep_bound, setting_changes
from ..dataplane.context import ProxyContext, connection_cap_note
from ..control.controllers import Controllers
from ..dataplane.counters import Stats
from .dataplane import BACKLOG, DataPlane
from .handoff import SOCKET_NAME, HandoffServer, StateLock, bind_handoff
from ..dataplane.health import Health
from .listeners import bind, listen, port_of
from ..logs import Throttled
from ..control.metrics import DataPlaneCollector, StoreCollector, WorkersCollector
from ..control.rampdriver import RampDriver
from ..providers.docker import DockerProvider
from ..control.manager import StateCollector, StateManager, load_state
from ..control.state import State, apply_apps
from ..dataplane.sticky import load_or_create_secret
from ..control.store import Store, open_store
from .supervisor import Supervisor
from .takeover import PredecessorSide, SuccessorSide
from ..dataplane.pool import UpstreamPool

log = logging.getLogger("router")

# The sticky secret's file in the state directory (unless sticky.secret_file names another).
SECRET_FILE = "router-secret"
# Stopping the admin listener (a stop, or a takeover): the requests in flight get this long. A
# state change waits at most timeouts.worker (2 s) for the workers, and a store write.
ADMIN_DRAIN = 10.0


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


class Server(SuccessorSide, PredecessorSide):
    """One router: the admin API and state here, the data plane here or in workers."""

    def __init__(self, config: Config, store: str | None = None, workers: int = 1,
                 admin: "Callable[[Server], web.Application] | None" = None,
                 state_dir: str | None = None, takeover: str | None = None,
                 argv: list[str] | None = None) -> None:
        """``store``: a file path or an ``etcd://`` URL (see ``router.control.store.open_store``);
        None keeps the state in memory only. ``admin`` makes the admin listener's application
        for this server (``router.admin.app.create_app``); None: no admin listener. ``state_dir``
        holds the sticky secret (unless ``sticky.secret_file`` names one) and the handoff
        socket (unless ``handoff.socket`` names one); None: a secret for this process only.
        ``takeover``: the handoff socket of a running router this one replaces (``router serve
        --takeover``). ``argv``: the command that runs this router, which SIGUSR2 runs again
        in its place (None: SIGUSR2 is refused)."""
        self.config = config
        self.admin = admin
        self.store_spec = store
        self.store: Store | None = None
        self.state_dir = state_dir
        self.nworkers = workers
        self.takeover = takeover
        self.argv = argv
        self.handoff_path = config.handoff.socket or (
            os.path.join(state_dir, SOCKET_NAME) if state_dir is not None else None)
        self._lock = (StateLock(store) if store is not None and not store.startswith("etcd://")
                      else None)
        self._manager: StateManager | None = None
        self._plane: DataPlane | None = None
        self.health: Health | None = None
        self.workers: Supervisor | None = None
        self.registry = CollectorRegistry()
        self.ready = False
        self.port = 0
        self.admin_port = 0
        self._stats: Stats | None = None  # the workers' counters, summed at the last scrape
        self._listen: list[socket.socket] = []
        self._admin_socks: list[socket.socket] = []
        self._handoff_sock: socket.socket | None = None
        self._handoff: HandoffServer | None = None
        #: What changes the routing state besides the admin API.
        self.controllers = Controllers(self.registry, lambda: self.manager, self._health_now,
                                       self.summed_stats)
        self._state_collector: StateCollector | None = None
        self._admin_runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._closing = False
        self._post: Callable[[list[int]], None] | None = None  # a handover's: to the successor
        self._early: list[int] | None = None  # given up by workers before the handover's start
        self._tasks: set[asyncio.Task[Any]] = set()
        self._upgrade: asyncio.subprocess.Process | None = None  # SIGUSR2's successor
        self._handed = False  # a successor serves everything now
        #: Set when this router handed over to its own upgrade (SIGUSR2): the command that runs
        #: the new code in this process once the event loop has ended (``router.process.run``).
        self.exec_argv: list[str] | None = None
        self._told: set[str] = set()  # notes logged once (_tell_once)

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

    def _health_now(self) -> Health:
        if self.health is None:
            raise RuntimeError("the router has not started")
        return self.health

    # The proxy context and pool of the in-process data plane (tests and handlers).
    @property
    def ctx(self) -> ProxyContext:
        return self.plane.ctx

    @property
    def pool(self) -> UpstreamPool:
        return self.plane.pool

    # The admin API's Docker provider and ramp driver (from ``start`` on).
    @property
    def docker(self) -> DockerProvider | None:
        return self.controllers.docker

    @property
    def ramps(self) -> RampDriver | None:
        return self.controllers.ramps

    @property
    def store_name(self) -> str:
        """Where the routing state lives, as a successor must name it to take over."""
        return self.store_spec or "memory"

    @property
    def stopping(self) -> bool:
        return self._closing or self._stopping.is_set()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind, read the state, serve; or, with ``takeover``, take all of it over from the
        router running there (docs/upgrade.md)."""
        if self.takeover is not None:
            await self._start_successor(self.takeover)
        else:
            await self._start_fresh()
        self.ready = True
        cfg = self.config
        log.info("listening on %s:%d (%d worker%s), admin on %s:%d, %d apps; data plane %s",
                 cfg.listen_host, self.port, self.nworkers, "s" if self.nworkers > 1 else "",
                 cfg.admin.host, self.admin_port, len(self.manager.state.apps),
                 "compiled (mypyc)" if compiled() else "plain Python (not compiled: slower)")

    async def _start_fresh(self) -> None:
        cfg = self.config
        # Every address first, before the store is touched or anything listens: a router whose
        # port is taken exits naming it (router.process.listeners); then the state file's lock and the
        # handoff socket (another router on this state: exit naming it).
        self._listen = bind(cfg.listen_host, cfg.listen_port, "data plane")
        try:
            if self.admin is not None:
                self._admin_socks = bind(cfg.admin.host, cfg.admin.port, "admin API")
            if self._lock is not None:
                self._lock.acquire()
            if self.handoff_path is not None:
                self._handoff_sock = bind_handoff(self.handoff_path)
        except BaseException:
            self._close_sockets()
            raise
        state, version, stored, secret = await self._open_state()
        self._build(state, version, secret)
        listen(self._listen, BACKLOG, "data plane")
        listen(self._admin_socks, BACKLOG, "admin API")
        await self._serve_data()
        await self._start_admin()
        await self._start_control()
        self._start_handoff()
        if stored:
            self._report_file_apps(cfg)

    def _close_sockets(self) -> None:
        for s in (*self._listen, *self._admin_socks):
            s.close()
        if self._handoff_sock is not None:
            self._handoff_sock.close()

    async def _open_state(self) -> tuple[State, int, bool, bytes]:
        """The store opened and read: (state, its version, whether it was stored already, the
        sticky secret)."""
        cfg = self.config
        secret_path = cfg.sticky.secret_file
        if secret_path is None and self.state_dir is not None:
            secret_path = os.path.join(self.state_dir, SECRET_FILE)
        state, version, stored = State.initial(cfg.apps), 0, False
        if self.store_spec is not None:
            self.store = open_store(self.store_spec, secret_path)
            state, version, stored = await load_state(self.store, state, cfg.source)
        if cfg.sticky.secret_file is not None or self.store is None:
            secret = load_or_create_secret(secret_path)  # an explicit file always wins
        else:
            secret = await self.store.secret()  # etcd: one secret for every replica
        return state, version, stored, secret

    def _build(self, state: State, version: int, secret: bytes) -> None:
        """The state's manager, health, the data plane and the metrics."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        self._manager = StateManager(state, self.store, self.apply_state, version)
        self.health = Health(self._health_changed, cfg.passive_health, loop)
        self._plane = DataPlane(cfg, secret, state.apps, state.generation, self.health,
                                state.previews())
        self.health.update(state.apps)
        self.plane.rebuild(self.health.states())
        self._tell_once(connection_cap_note(cfg))
        health = self.health
        self.registry.register(DataPlaneCollector(
            lambda: self.plane.table, self._current_stats,
            lambda: self.manager.state, lambda key: health.state(key)[0]))
        self.registry.register(WorkersCollector(self._workers_up, self._worker_restarts))
        if self.store_spec is not None:
            self.registry.register(StoreCollector(lambda: self.store is not None and self.store.up))
        self._watch_state()

    def _watch_state(self) -> None:
        """The state's own series (router.control.manager.StateCollector) follow the manager and the
        store this router has now (a successor's second reading, a takeover called off)."""
        if self._state_collector is not None:
            self.registry.unregister(self._state_collector)
            self._state_collector = None
        if self.store is not None:
            self._state_collector = StateCollector(self.manager, self.store)
            self.registry.register(self._state_collector)

    async def _serve_data(self, hold: bool = False) -> None:
        """The data plane serves the listening sockets: here, or in the worker processes
        (``hold``: started, but serving only once ``Supervisor.serve`` says so)."""
        self.port = port_of(self._listen)
        if self.nworkers == 1:
            await self.plane.serve(self._listen)
            return
        assert self.health is not None
        self.workers = Supervisor(self.nworkers, self._listen, self.plane.secret,
                                  lambda: self.config, lambda: self.manager.state, self.health,
                                  self._pass_on)
        await self.workers.start(hold)

    async def _start_admin(self) -> None:
        if self.admin is None:
            return
        self._admin_runner = web.AppRunner(self.admin(self), access_log=None,
                                           handle_signals=False, logger=AdminServerLog(),
                                           shutdown_timeout=ADMIN_DRAIN)
        await self._admin_runner.setup()
        for sock in self._admin_socks:
            # A duplicate: the server closes what it serves, and the socket may go on to a
            # successor or be served again.
            await web.SockSite(self._admin_runner, sock.dup()).start()
        self.admin_port = port_of(self._admin_socks)

    async def _stop_admin(self) -> None:
        """No new admin connection; the requests in flight are answered (within ADMIN_DRAIN)."""
        runner, self._admin_runner = self._admin_runner, None
        if runner is not None:
            await runner.cleanup()

    async def _start_control(self) -> None:
        # The secret goes back to a store that lost it only if it came from the store.
        secret = self.plane.secret if self.config.sticky.secret_file is None else None
        await self.controllers.start(self.config, self.store, secret)

    def _start_handoff(self) -> None:
        if self._handoff_sock is not None and self._handoff is None:
            self._handoff = HandoffServer(self._handoff_sock, self)
            self._handoff.start()
            log.info("a successor takes over at %s (router serve --takeover; SIGUSR2 upgrades "
                     "in place)", self.handoff_path)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- worker processes (router.process.supervisor) ----------------------------------------
    def _workers_up(self) -> int:
        if self.workers is None:
            return 1 if self.ready else 0
        return self.workers.up

    def _worker_restarts(self) -> dict[str, int]:
        return dict(self.workers.restarts) if self.workers is not None else {}

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz."""
        if not self.ready:
            return False, "stopping" if self.stopping else "starting"
        if self.workers is not None:
            up = self.workers.up
            if up == 0:
                return False, f"no worker is serving (0 of {self.nworkers}; being replaced)"
            if up < self.nworkers:
                return True, f"ready; {up} of {self.nworkers} workers serving, the others being replaced"
        return True, "ready"

    def handle_signals(self) -> None:
        """SIGTERM/SIGINT stop gracefully, SIGHUP reloads the configuration file, SIGUSR2
        upgrades in place (from the start on: a successor told to stop during its takeover
        calls it off)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR2, self.upgrade)

    async def serve_forever(self) -> None:
        """Run until a stop is asked (``request_stop``) or a successor took over."""
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        if self._handoff is not None and self._handoff.handing_over:
            log.info("stop asked while handing over to a successor: this router exits once "
                     "its connections are handed over")
            return
        self._stopping.set()

    async def stop(self) -> None:
        """Graceful stop (docs/upgrade.md, "A stop"): not ready; every answer says Connection:
        close; new connections accepted for ``timeouts.drain_delay``; then no new connection,
        idle connections closed once idle a moment, requests in flight finished within
        ``timeouts.grace``. After a takeover, only what is left of this router."""
        self.ready = False
        self._closing = True
        if self._upgrade is not None and self._upgrade.returncode is None and not self._handed:
            self._upgrade.send_signal(signal.SIGTERM)  # the stop is for the upgrade too
        if self._handoff is not None:
            self._handoff.abort()
            await self._handoff.finished()
            self._handoff.close()
        t = self.config.timeouts
        delay, grace = (0.0, 0.0) if self._handed else (t.drain_delay, t.grace)
        await self.controllers.stop_docker()
        if self.workers is not None:
            for sock in self._listen:
                sock.close()  # the workers' copies are the last: they close after the delay
            await self.workers.stop(delay, grace)
            delay = grace = 0.0  # this process's data plane serves no connection
        await self.plane.drain(delay, grace)
        for task in list(self._tasks):
            task.cancel()
        await self.controllers.stop()
        if self._manager is not None:
            self._manager.close()
        if self.health is not None:
            self.health.stop()
        await self._stop_admin()
        if self.store is not None:
            await self.store.close()
        if self._lock is not None:
            self._lock.release()
        self._close_sockets()
        if self._handoff_sock is not None and not self._handed and self.handoff_path is not None:
            try:
                os.unlink(self.handoff_path)  # after a takeover the file is the successor's
            except OSError:
                pass
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
            await self.workers.apply(state, health)

    def _health_changed(self) -> None:
        # Same generation: health is observed, not a change of the configured state.
        assert self.health is not None
        self.plane.rebuild(self.health.states())
        if self.workers is not None:
            self.workers.push_health()

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
        """Which of the services ``names`` of ``app`` have a backend ready to take requests
        (``Health.ready_services``)."""
        assert self.health is not None
        return await self.health.ready_services(app, names)

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
        self._tell_once(connection_cap_note(self.config))
        if self.health is not None:
            self.health.configure(self.config.passive_health)
        if self.workers is not None:
            asyncio.get_running_loop().create_task(self.workers.reconfigure(self.config))
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
        # Normal once the API changed anything: said at start, again only when it changes.
        self._tell_once(
            f"the apps in {cfg.source} differ from the routing state (generation "
            f"{manager.state.generation}, in {manager.store_name}): {'; '.join(shown)}"
            f"{f'; and {more} more' if more else ''}; `routerctl apply {cfg.source}` imports "
            "them (with --dry-run, shows what it would do)")

    def _tell_once(self, note: str | None) -> None:
        """Log ``note`` at INFO unless it was logged before (a reload that changes nothing
        repeats nothing)."""
        if note is not None and note not in self._told:
            self._told.add(note)
            log.info("%s", note)

    async def pinned_services(self) -> frozenset[tuple[str, str]]:
        """(app, service) pairs that got a request by cookie within ``sticky.max_idle``."""
        return await self.controllers.pinned(self.config.sticky.max_idle)

    async def releases_changed(self) -> None:
        """Check open releases now rather than at the next tick."""
        await self.controllers.check_releases()
