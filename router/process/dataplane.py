"""What one process needs to proxy: the table builder, the upstream pool, the proxy context,
its passive health and its listeners; how it stops (with no successor) and how it hands its
connections to a successor or takes them from a predecessor (docs/upgrade.md). The
single-process server owns one; with ``--workers N`` every worker owns one and the master keeps
a listener-less one for health and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from bisect import bisect_left
from typing import Callable, Iterable, Mapping, cast

from .. import eventlog
from ..dataplane.client import ClientConnection
from ..config import AppConfig, Config
from ..dataplane.context import ClientBase, ProxyContext
from ..dataplane.counters import BUCKETS, Stats
from ..dataplane.health import (STALL_SWEEP, UNHEALTHY, BackendKey, HealthMap, PassiveHealth, Reporter,
                                apply_states)
from .ipc import close_fds
from ..dataplane.routing import elsewhere
from ..dataplane.sticky import TokenCodec
from ..dataplane.table import RoutingTable, TableBuilder
from .trim import Trimmer
from ..dataplane.parking import Parking
from ..dataplane.pool import UpstreamPool

log = logging.getLogger("router")

# The kernel's queue of connections not yet accepted (nginx and HAProxy default to 511 and
# somaxconn; the kernel caps it at net.core.somaxconn).
BACKLOG = 2048
# A stopping router closes a connection idle this long (and not one idle for less): a client
# that sends requests less than a second apart gets its last answer with Connection: close
# instead, and one that has waited a second is unlikely to send in the very instant of the close.
IDLE_BEFORE_CLOSE = 1.0
# How often a stop looks at its connections again.
DRAIN_POLL = 0.05
# How often a handover looks again for connections whose answer was still being written when
# they turned idle.
HANDOVER_POLL = 0.01
# The apps with an open release: its new service and when it started (router.control.state.State.previews).
Previews = Mapping[str, tuple[str, str]]


class DataPlane:
    def __init__(self, config: Config, secret: bytes, apps: tuple[AppConfig, ...], generation: int,
                 reporter: Reporter, previews: Previews | None = None) -> None:
        """``reporter`` hears what this data plane's passive health observes (``router.dataplane.health``);
        ``previews``: the apps with an open release (preview routing, router.dataplane.table.Preview)."""
        self.config = config
        eventlog.use(config.logging.format)  # a worker's log, from its first line on
        self.secret = secret
        self.apps = apps
        self.generation = generation
        self.previews: Previews = previews or {}
        self.health: HealthMap = {}
        codec = TokenCodec(secret, config.sticky.max_idle, config.sticky.max_life)
        self.builder = TableBuilder(codec, config.sticky.cookie)
        loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(loop, config.timeouts.connect)
        self.passive = PassiveHealth(reporter, config.passive_health.failures)
        self.ctx = ProxyContext(config, self.builder.build(apps, generation, self.previews),
                                self.pool, codec, loop, self.passive)
        self.passive.follow(self.builder.all_backends(), self.health)
        self._listeners: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.parking = Parking(self.ctx)
        self.trimmer = Trimmer()

    @property
    def table(self) -> RoutingTable:
        return self.ctx.table

    async def serve(self, socks: list[socket.socket]) -> None:
        """Accept on ``socks``: bound and listening, made by the caller (with ``--workers N`` the
        master made them and every worker inherited them; see docs/workers.md). The data plane
        serves duplicates: the caller keeps its sockets to hand them to a successor, or to serve
        them again after ``stop_accepting``."""
        loop = asyncio.get_running_loop()
        for sock in socks:
            self._listeners.append(await loop.create_server(self._factory, sock=sock.dup(),
                                                            backlog=BACKLOG))
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def stop_accepting(self) -> None:
        """No new connection from here on (the listening sockets stay open: the caller's)."""
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    async def adopt(self, fds: list[int]) -> int:
        """Serve connections another process accepted (a predecessor's, handed over between
        requests: docs/upgrade.md); the descriptors are this data plane's from here on. Bytes
        the client sent meanwhile wait in the kernel and are read at once. How many it took."""
        loop = asyncio.get_running_loop()
        taken = 0
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                close_fds([fd])
                continue
            try:
                await loop.connect_accepted_socket(self._factory, sock=sock)
                taken += 1
            except OSError as e:
                log.warning("a connection handed over could not be served: %s", e)
                sock.close()
        return taken

    def _factory(self) -> asyncio.Protocol:
        # ClientConnection is a protocol by duck typing (no asyncio.Protocol base: see its doc).
        return cast("asyncio.Protocol", ClientConnection(self.ctx))

    async def _sweep(self) -> None:
        """Stalled backends (``router.dataplane.health.STALL_FACTOR``), what idle client
        connections hold (``router.dataplane.client.REST_AFTER``, then
        ``router.dataplane.parking``), and memory given back after
        a burst of client connections (``router.process.trim``), off the request path."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(STALL_SWEEP)
            waiting = ctx.deadlines.waiting()
            if waiting:
                self.passive.sweep(waiting, ctx.deadlines.timeout, loop.time())
            # (the transports of those parked by the sweep before are closed by now)
            parked = self.parking.parked
            self.parking.parked = 0
            self.parking.sweep(ctx.connections, loop.time())
            now = len(ctx.connections)
            if self.trimmer.observe(now, ctx.connections_peak, parked):
                ctx.connections_peak = now

    def apply(self, apps: tuple[AppConfig, ...], generation: int, health: HealthMap | None = None,
              previews: Previews | None = None) -> None:
        """A new state: build the table and swap it in with one assignment."""
        self.apps = apps
        self.generation = generation
        self.previews = previews or {}
        self.rebuild(health)

    def rebuild(self, health: HealthMap | None = None) -> None:
        """A new table; with ``health``, the backends' states first (``router.dataplane.health``)."""
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
        (``router.dataplane.routing.elsewhere``, the rule the master applies too)."""
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
        eventlog.use(config.logging.format)
        self.ctx.configure(config)
        self.pool.connect_timeout = config.timeouts.connect
        self.ctx.codec = TokenCodec(self.secret, config.sticky.max_idle, config.sticky.max_life)
        self.passive.failures = config.passive_health.failures
        if self.builder.cookie != config.sticky.cookie:
            self.builder.cookie = config.sticky.cookie  # the apps' cookies are the table's
            self.rebuild()

    def stats(self) -> Stats:
        ctx = self.ctx
        st = self.table.stats(ctx.unrouted)
        st.removed = self.builder.removed()
        st.refused = ctx.refused
        st.waiting = _waiting_ages(ctx.deadlines.waiting(), ctx.loop.time())
        st.timeouts = dict(ctx.timeouts)
        return st

    async def drain(self, delay: float, grace: float) -> None:
        """A stop with no successor (docs/upgrade.md, "A stop"). From now on every answer says
        ``Connection: close``; new connections are still accepted for ``delay``
        (``timeouts.drain_delay``), then the listener closes. A connection is closed only once it
        has been idle for ``IDLE_BEFORE_CLOSE`` with no request bytes waiting in the kernel: one
        in use gets its last answer with ``Connection: close`` instead, so its client never sends
        on a connection being closed, except in the instant between the look and the close.
        Requests in flight get ``grace``; what is left then is cut."""
        ctx = self.ctx
        ctx.accepting = False
        ctx.handoff = None
        loop = asyncio.get_running_loop()
        if delay > 0:
            await asyncio.sleep(delay)
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = loop.time() + grace
        parking = self.parking
        while (ctx.connections or parking.adopting) and loop.time() < deadline:
            now = loop.time()
            for conn in list(ctx.connections):
                since = conn.idle_since()
                if since >= 0 and now - since >= IDLE_BEFORE_CLOSE and not conn.unread():
                    conn.shutdown()
            await asyncio.sleep(min(DRAIN_POLL, max(0.0, deadline - loop.time())))
        for conn in list(ctx.connections):
            if conn.idle_since() >= 0 and not conn.unread():
                conn.shutdown()  # a FIN, not a reset: nothing of it is lost
            else:
                conn.abort()
        parking.stop()
        self.pool.close()
        if ctx.log_access is not None:
            ctx.log_access.flush()

    async def hand_over(self, send: Callable[[list[int]], None], grace: float) -> tuple[int, int]:
        """Give every connection to a successor as soon as it is idle (docs/upgrade.md): stop
        accepting, then each connection between two requests, with nothing read or left to
        write here, goes to ``send`` as a descriptor (a batch per loop turn). A request already
        read is answered here first. A connection never idle within half of ``grace`` (a client
        that pipelines without a pause, a tunnel) gets ``Connection: close`` on its next answer;
        at ``grace`` what is left is cut. Returns (handed over, closed)."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        self.stop_accepting()
        batch: list[int] = []
        handed = 0

        def flush() -> None:
            nonlocal handed
            fds = batch[:]
            batch.clear()
            handed += len(fds)
            send(fds)

        def take(conn: ClientBase) -> None:
            fd = conn.detach()
            if fd >= 0:
                batch.append(fd)
                if len(batch) == 1:
                    loop.call_soon(flush)

        # Every connection that turns idle fires its idle timer on the next loop turn, before
        # the loop reads anything more from it; the client's next request then waits in the
        # kernel and goes with the socket.
        idle_timeout = ctx.client_idle_timeout
        ctx.client_idle_timeout = 0.0
        ctx.handoff = take
        seen = len(ctx.connections)
        start = loop.time()
        try:
            for conn in list(ctx.connections):
                take(conn)
            while (ctx.connections or self.parking.adopting) and loop.time() < start + grace:
                await asyncio.sleep(HANDOVER_POLL)
                if ctx.accepting and loop.time() >= start + grace / 2:
                    ctx.accepting = False
                for conn in list(ctx.connections):
                    if conn.idle_since() >= 0:
                        take(conn)  # one whose answer was still being written at its idle timer
        finally:
            ctx.handoff = None
            ctx.client_idle_timeout = idle_timeout
            if batch:
                flush()
        for conn in list(ctx.connections):
            conn.abort()
        self.parking.stop()
        return handed, max(0, seen - handed)

    def resume(self) -> None:
        """After a handover that failed (the successor went away): serve as before (the caller
        then serves the listening sockets again)."""
        ctx = self.ctx
        ctx.handoff = None
        ctx.accepting = True


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
