"""What one process needs to proxy: the table builder, the upstream pool, the proxy context
and the listening socket. The single-process server owns one; with ``--workers N`` every
worker owns one and the master keeps a listener-less one for health and metrics.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping, cast

from .client import ClientConnection
from .config import AppConfig, Config
from .context import ProxyContext
from .counters import Stats
from .sticky import TokenCodec
from .table import RoutingTable, TableBuilder
from .upstream import UpstreamPool

log = logging.getLogger("router")

HealthMap = Mapping[tuple[str, str, str], bool]  # (app, service, backend) -> healthy


class DataPlane:
    def __init__(self, config: Config, secret: bytes, apps: tuple[AppConfig, ...], generation: int) -> None:
        self.config = config
        self.secret = secret
        self.apps = apps
        self.generation = generation
        codec = TokenCodec(secret, config.sticky.max_idle, config.sticky.max_life)
        self.builder = TableBuilder(codec)
        loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(loop, config.timeouts.connect)
        self.ctx = ProxyContext(config, self.builder.build(apps, generation), self.pool, codec, loop)
        self._listener: asyncio.base_events.Server | None = None

    @property
    def table(self) -> RoutingTable:
        return self.ctx.table

    async def listen(self, host: str, port: int) -> int:
        """Accept on host:port (SO_REUSEPORT, so workers can share it); returns the port."""
        ctx = self.ctx
        # ClientConnection is a protocol by duck typing (no asyncio.Protocol base: see its doc).
        factory = cast("Callable[[], asyncio.Protocol]", lambda: ClientConnection(ctx))
        self._listener = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_port=True, backlog=2048)
        return int(self._listener.sockets[0].getsockname()[1])

    def apply(self, apps: tuple[AppConfig, ...], generation: int, health: HealthMap | None = None) -> None:
        """A new state: build the table and swap it in with one assignment."""
        self.apps = apps
        self.generation = generation
        self.rebuild(health)

    def rebuild(self, health: HealthMap | None = None) -> None:
        if health is not None:
            self.builder.build(self.apps, self.generation)  # make sure every backend exists
            for be_key, healthy in health.items():
                be = self.builder.backend(*be_key)
                if be is not None:
                    be.healthy = healthy
        self.ctx.table = self.builder.build(self.apps, self.generation)
        routed = {be.key for be in self.builder.all_backends()}
        self.pool.close_idle(keep=routed)

    def health_map(self) -> dict[tuple[str, str, str], bool]:
        return {(a.name, s.name, b.key): b.healthy
                for a in self.table.apps.values() for s in a.services for b in s.backends}

    def reconfigure(self, config: Config) -> None:
        """Settings a reload may change (not the listen addresses)."""
        self.config = config
        self.ctx.configure(config)
        self.pool.connect_timeout = config.timeouts.connect
        self.ctx.codec = TokenCodec(self.secret, config.sticky.max_idle, config.sticky.max_life)

    def stats(self) -> Stats:
        st = self.table.stats(self.ctx.unrouted)
        st.refused = self.ctx.refused
        return st

    async def drain(self, grace: float) -> None:
        """Graceful stop: no new connections; in-flight requests get ``grace`` seconds."""
        ctx = self.ctx
        ctx.accepting = False
        if self._listener is not None:
            self._listener.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            busy = False
            for conn in list(ctx.connections):
                if conn.shutdown():
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.05)
        for conn in list(ctx.connections):
            conn.abort()
        self.pool.close()
        if ctx.log_access is not None:
            ctx.log_access.flush()
