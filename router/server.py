"""The router process: listeners, the admin API, signals, graceful stop, new states.

``Server.apply`` is the one way a new routing state goes live: it builds a table and swaps
it into the proxy context with one assignment, so every request sees the whole old state or
the whole new one (SPEC 4.4). Requests already sent keep the backend they were sent to;
idle pooled connections to addresses no longer routed are closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import AppConfig, Config, ConfigError, HealthCheckConfig, load_config, split_hostport
from .health import HealthChecker, probe
from .release import Status
from .state import State, StateManager, load_file_apps, mark_ready
from .store import FileStore, StoreError
from .metrics import DataPlaneCollector
from .proxy import ClientConnection, ProxyContext, setup_access_log
from .sticky import TokenCodec, load_or_create_secret
from .table import TableBuilder
from .upstream import UpstreamPool

log = logging.getLogger("router")


class Server:
    """One router process."""

    def __init__(self, config: Config, store_path: str | None = None) -> None:
        self.config = config
        self.store: FileStore | None = FileStore(store_path) if store_path else None
        self.manager: StateManager | None = None
        self._release_task: asyncio.Task[None] | None = None
        self._tcp_passed: set[tuple[str, str, str]] = set()
        self.ready = False
        self.generation = 0
        self.apps: tuple[AppConfig, ...] = config.apps
        self.ctx: ProxyContext | None = None
        self.pool: UpstreamPool | None = None
        self.builder: TableBuilder | None = None
        self.health: HealthChecker | None = None
        self.registry = CollectorRegistry()
        self._listener: asyncio.base_events.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._secret = b""
        self.port = 0
        self.admin_port = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        secret_path = cfg.sticky.secret_file
        if secret_path is None and cfg.source:
            secret_path = os.path.join(os.path.dirname(os.path.abspath(cfg.source)), "router-secret")
        self._secret = load_or_create_secret(secret_path)
        codec = TokenCodec(self._secret, cfg.sticky.max_idle, cfg.sticky.max_life)
        self.builder = TableBuilder(codec)
        state = State.initial(cfg.apps)
        if self.store is not None:
            data = self.store.load()  # StoreError: refuse to start on a corrupt state file
            if data is not None:
                # Once the store exists, its state wins over the configuration's apps (SPEC 6).
                state = State.from_dict(data, self.store.path)
                log.info("routing state from %s: generation %d", self.store.path, state.generation)
        self.manager = StateManager(state, self.store.save if self.store else None, self.apply_state)
        self.apps = state.apps
        self.generation = state.generation
        table = self.builder.build(self.apps, self.generation)
        self.pool = UpstreamPool(loop, cfg.timeouts.connect)
        self.ctx = ProxyContext(cfg, table, self.pool, codec, loop)
        if cfg.access_log.enabled:
            setup_access_log()
        self.registry.register(DataPlaneCollector(
            lambda: self.ctx.table, self.ctx.unrouted, lambda: self.manager.state.releases))  # type: ignore[union-attr]
        self.health = HealthChecker(self.builder, self._health_changed)
        self.health.update(self.apps)
        ctx = self.ctx
        self._listener = await loop.create_server(
            lambda: ClientConnection(ctx), cfg.listen_host, cfg.listen_port,
            reuse_port=True, backlog=2048)
        self.port = self._listener.sockets[0].getsockname()[1]
        from admin.app import create_app  # the admin API sits on top of the server

        self._admin_runner = web.AppRunner(create_app(self), access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        site = web.TCPSite(self._admin_runner, cfg.admin.host, cfg.admin.port, reuse_address=True)
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._stopping = asyncio.Event()
        self._release_task = loop.create_task(self._watch_releases())
        self.ready = True
        log.info("listening on %s:%d, admin on %s:%d, %d apps",
                 cfg.listen_host, self.port, cfg.admin.host, self.admin_port, len(self.apps))

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
        ctx = self.ctx
        assert ctx is not None
        ctx.accepting = False
        if self._listener is not None:
            self._listener.close()
        grace = self.config.timeouts.grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            busy = False
            for conn in list(ctx.connections):
                if conn.active is None and conn.tunnel is None and conn.parsing is None:
                    conn.transport.close()  # type: ignore[union-attr]
                else:
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.05)
        for conn in list(ctx.connections):
            conn.transport.abort()  # type: ignore[union-attr]
        if self._release_task is not None:
            self._release_task.cancel()
        if self.health is not None:
            self.health.stop()
        if self.pool is not None:
            self.pool.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        log.info("stopped")

    # -- new states -----------------------------------------------------------------------
    def apply_state(self, state: State) -> None:
        """Make ``state`` live: one table swap (the StateManager calls this after persisting)."""
        assert self.builder is not None and self.ctx is not None and self.health is not None
        self.generation = state.generation
        self.apps = state.apps
        self._swap()
        self.health.update(state.apps)


    def _swap(self) -> None:
        table = self.builder.build(self.apps, self.generation)  # type: ignore[union-attr]
        self.ctx.table = table  # type: ignore[union-attr]
        routed = {be.key for be in self.builder.all_backends()}  # type: ignore[union-attr]
        self.pool.close_idle(keep=routed)  # type: ignore[union-attr]

    def _health_changed(self) -> None:
        # Same generation: health is observed, not a change of the configured state.
        self._swap()

    def reload(self) -> None:
        """SIGHUP: load the configuration file again; a bad file changes nothing."""
        path = self.config.source
        if path is None:
            log.warning("SIGHUP ignored: started without --config")
            return
        try:
            new = load_config(path)
        except ConfigError as e:
            log.error("reload refused, running configuration kept: %s", e)
            return
        for attr in ("listen_host", "listen_port", "admin"):
            if getattr(new, attr) != getattr(self.config, attr):
                log.warning("reload: %s changed; it takes effect only after a restart", attr)
        if new.sticky.secret_file != self.config.sticky.secret_file:
            log.warning("reload: sticky.secret_file changed; it takes effect only after a restart")
        self.config = new
        self.ctx.configure(new)  # type: ignore[union-attr]
        self.ctx.codec = TokenCodec(self._secret, new.sticky.max_idle, new.sticky.max_life)  # type: ignore[union-attr]
        asyncio.get_running_loop().create_task(self._reload_apps(path, new.apps))

    async def _reload_apps(self, path: str, apps: tuple[AppConfig, ...]) -> None:
        try:
            state = await self.manager.change(load_file_apps(apps))  # type: ignore[union-attr]
        except Exception as e:  # e.g. a route clash or the store unwritable
            log.error("reload of %s refused, running state kept: %s", path, e)
            return
        log.info("reloaded %s: generation %d, %d apps", path, state.generation, len(apps))

    # -- releases ---------------------------------------------------------------------------
    async def releases_changed(self) -> None:
        """Check open releases now rather than at the next tick."""
        await self._check_releases()

    async def _watch_releases(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            try:
                await self._check_releases()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("release check failed")

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
            ready = True
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
                try:
                    await self.manager.change(mark_ready(name, release.new))  # type: ignore[union-attr]
                except Exception as e:
                    log.info("release of %s not marked ready: %s", name, e)
