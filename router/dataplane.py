"""What one process needs to proxy: the table builder, the upstream pool, the proxy context,
its passive health and the listening socket. The single-process server owns one; with
``--workers N`` every worker owns one and the master keeps a listener-less one for health and
metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from bisect import bisect_left
from typing import Callable, Iterable, Mapping, cast

from .client import ClientConnection
from .config import AppConfig, Config
from .context import ProxyContext
from .counters import BUCKETS, Stats
from .health import STALL_SWEEP, UNHEALTHY, BackendKey, HealthMap, PassiveHealth, Reporter, apply_states
from .routing import elsewhere
from .sticky import TokenCodec
from .table import RoutingTable, TableBuilder
from .upstream import UpstreamPool

log = logging.getLogger("router")

# The kernel's queue of connections not yet accepted (nginx and HAProxy default to 511 and
# somaxconn; the kernel caps it at net.core.somaxconn).
BACKLOG = 2048
# The apps with an open release: its new service and when it started (router.state.State.previews).
Previews = Mapping[str, tuple[str, str]]


class DataPlane:
    def __init__(self, config: Config, secret: bytes, apps: tuple[AppConfig, ...], generation: int,
                 reporter: Reporter, previews: Previews | None = None) -> None:
        """``reporter`` hears what this data plane's passive health observes (``router.health``);
        ``previews``: the apps with an open release (preview routing, router.table.Preview)."""
        self.config = config
        self.secret = secret
        self.apps = apps
        self.generation = generation
        self.previews: Previews = previews or {}
        self.health: HealthMap = {}
        codec = TokenCodec(secret, config.sticky.max_idle, config.sticky.max_life)
        self.builder = TableBuilder(codec)
        loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(loop, config.timeouts.connect)
        self.passive = PassiveHealth(reporter, config.passive_health.failures)
        self.ctx = ProxyContext(config, self.builder.build(apps, generation, self.previews),
                                self.pool, codec, loop, self.passive)
        self.passive.follow(self.builder.all_backends(), self.health)
        self._listener: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def table(self) -> RoutingTable:
        return self.ctx.table

    async def serve(self, sock: socket.socket) -> None:
        """Accept on ``sock``: bound and listening, made by the caller (with ``--workers N`` the
        master made it and every worker inherited it; see docs/workers.md)."""
        ctx = self.ctx
        # ClientConnection is a protocol by duck typing (no asyncio.Protocol base: see its doc).
        factory = cast("Callable[[], asyncio.Protocol]", lambda: ClientConnection(ctx))
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(factory, sock=sock, backlog=BACKLOG)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Stalled backends (``router.health.STALL_FACTOR``), off the request path."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(STALL_SWEEP)
            if ctx.deadlines.waiting:
                self.passive.sweep(ctx.deadlines.waiting, ctx.deadlines.timeout, loop.time())

    def apply(self, apps: tuple[AppConfig, ...], generation: int, health: HealthMap | None = None,
              previews: Previews | None = None) -> None:
        """A new state: build the table and swap it in with one assignment."""
        self.apps = apps
        self.generation = generation
        self.previews = previews or {}
        self.rebuild(health)

    def rebuild(self, health: HealthMap | None = None) -> None:
        """A new table; with ``health``, the backends' states first (``router.health``)."""
        if health is not None:
            self.health = health
            # make sure every backend exists
            self.builder.build(self.apps, self.generation, self.previews)
            apply_states(self.builder.all_backends(), health)
        self.ctx.table = self.builder.build(self.apps, self.generation, self.previews)
        self.passive.follow(self.builder.all_backends(), self.health)
        routed = {be.key for be in self.builder.all_backends()}
        self.pool.close_idle(keep=routed)

    def eject(self, key: BackendKey) -> bool:
        """Take a backend out of this data plane's rotation now, ahead of the decision that the
        master sends to every worker; not when nothing else in its app could take its requests
        (``router.routing.elsewhere``, the rule the master applies too)."""
        be = self.builder.backend(*key)
        if be is None or not be.healthy:
            return False
        app = self.table.apps.get(key[0])
        svc = app.by_name.get(key[1]) if app is not None else None
        if app is None or svc is None or not elsewhere(app, svc, be):
            return False
        be.healthy = False
        self.health = {**self.health, key: UNHEALTHY}
        self.rebuild()
        return True

    def reconfigure(self, config: Config) -> None:
        """Settings a reload may change (not the listen addresses)."""
        self.config = config
        self.ctx.configure(config)
        self.pool.connect_timeout = config.timeouts.connect
        self.ctx.codec = TokenCodec(self.secret, config.sticky.max_idle, config.sticky.max_life)
        self.passive.failures = config.passive_health.failures

    def stats(self) -> Stats:
        ctx = self.ctx
        st = self.table.stats(ctx.unrouted)
        st.refused = ctx.refused
        st.waiting = _waiting_ages(ctx.deadlines.waiting, ctx.loop.time())
        return st

    async def drain(self, grace: float) -> None:
        """Graceful stop: no new connections; in-flight requests get ``grace`` seconds."""
        ctx = self.ctx
        ctx.accepting = False
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
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


def _waiting_ages(waiting: Iterable[object], now: float) -> dict[tuple[str, str], list[int]]:
    """``Stats.waiting`` from the exchanges waiting for a response head (each with ``app``,
    ``service`` and ``started``, the loop time it was routed; ``now`` on the same clock)."""
    out: dict[tuple[str, str], list[int]] = {}
    for ex in waiting:
        app, svc = getattr(ex, "app", None), getattr(ex, "service", None)
        if app is None or svc is None:
            continue
        key = (app.name, svc.name)
        ages = out.get(key)
        if ages is None:
            ages = out[key] = [0] * (len(BUCKETS) + 1)
        ages[bisect_left(BUCKETS, now - getattr(ex, "started", now))] += 1
    return out
