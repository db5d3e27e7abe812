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

from .config import AppConfig, Config, ConfigError, load_config
from .health import HealthChecker
from .metrics import DataPlaneCollector
from .proxy import ClientConnection, ProxyContext, setup_access_log
from .sticky import TokenCodec, load_or_create_secret
from .table import TableBuilder
from .upstream import UpstreamPool

log = logging.getLogger("router")


class Server:
    """One router process."""

    def __init__(self, config: Config) -> None:
        self.config = config
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
        self.generation = 1
        table = self.builder.build(self.apps, self.generation)
        self.pool = UpstreamPool(loop, cfg.timeouts.connect)
        self.ctx = ProxyContext(cfg, table, self.pool, codec, loop)
        if cfg.access_log.enabled:
            setup_access_log()
        self.registry.register(DataPlaneCollector(lambda: self.ctx.table, self.ctx.unrouted))  # type: ignore[union-attr]
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
        if self.health is not None:
            self.health.stop()
        if self.pool is not None:
            self.pool.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        log.info("stopped")

    # -- new states -----------------------------------------------------------------------
    def apply(self, apps: tuple[AppConfig, ...]) -> int:
        """Make ``apps`` the routing state; returns the new generation."""
        assert self.builder is not None and self.ctx is not None
        self.generation += 1
        self.apps = apps
        self._swap()
        assert self.health is not None
        self.health.update(apps)
        return self.generation

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
        gen = self.apply(new.apps)
        log.info("reloaded %s: generation %d, %d apps", path, gen, len(new.apps))
