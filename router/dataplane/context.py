"""What every connection of one data plane shares: the routing table (the swap point), the
upstream pool, the settings a reload may change, the response deadlines, the counters of
requests that reached no service, and the reports to passive health.

A new routing state is made live by one assignment to ``ProxyContext.table``; a request reads
the table once, when it is routed, and uses only that object (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from typing import Callable, Final

from .accesslog import AccessLog
from ..config import Config
from .counters import UnroutedStats
from .deadlines import ResponseDeadlines
from .health import PassiveHealth
from ..http.request_head import RequestIds
from ..logs import Throttled
from .pool import UpstreamPool
from .routing import PREVIEW_PARAM  # noqa: F401 (the admin API builds preview links with it)
from .sticky import TokenCodec
from .table import Backend, RoutingTable
from .upstream import Tunnel

warn = logging.getLogger("router.error")

# File descriptors kept free of client connections: the admin API, health checks, the store.
FD_RESERVE: Final = 128
# The most a client connection reads at once: while it is between requests or reading a head
# (HAProxy's default bufsize), and while it is reading a body or tunnelling. Bytes read past
# the requests being answered wait unparsed, so these bound what a pipelining client holds.
HEAD_READ: Final = 16384
BODY_READ: Final = 65536


def fd_connection_cap() -> int:
    """Client connections this process can hold without running out of file descriptors.

    Each client connection may hold a backend connection too, so half of what RLIMIT_NOFILE
    leaves after a reserve: past it, new connections are refused at accept (closed at once)
    and the admin API still has descriptors to answer with.
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1 << 30
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, (soft - FD_RESERVE) // 2)


def connection_cap_note(config: Config) -> str | None:
    """What to tell the operator when ``limits.max_connections`` cannot be had in full in
    this process (each worker has the same limit); None when it can."""
    cap = fd_connection_cap()
    if cap >= config.limits.max_connections:
        return None
    return (f"limits.max_connections {config.limits.max_connections} lowered to {cap}: "
            "RLIMIT_NOFILE leaves room for no more (each client may hold a backend connection "
            "too)")


class ClientBase(Tunnel):
    """What the data plane asks of a client connection (``router.dataplane.client.ClientConnection``),
    which is also the client's end of a tunnel (``upstream.Tunnel``)."""

    __slots__ = ()

    def idle_since(self) -> float:
        """When it became idle between requests (loop time), or -1.0 if it is not idle."""
        raise NotImplementedError

    def rest(self, now: float) -> None:
        """If it has been idle a while: let go of what only reading a request needs (loop
        time ``now``; see router.dataplane.client.REST_AFTER)."""
        raise NotImplementedError

    def stuck_since(self) -> float:
        """Since when it has made no progress (loop time): a client not reading its responses,
        a tunnel with no byte either way; -1.0 if it is not stuck that way."""
        raise NotImplementedError

    def shutdown(self) -> bool:
        """Graceful stop: close it if idle (and ask its current response to close it after);
        True while it still has a request in progress."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def unread(self) -> int:
        """Bytes the client sent that the kernel holds and this side has not read yet
        (FIONREAD): a stopping router never closes a connection that has some."""
        raise NotImplementedError

    def detach(self) -> int:
        """Let go of the connection for a successor router: if it is idle with nothing read or
        left to write on this side, a duplicate of its socket's descriptor (the caller's to pass
        on and close), and this side closed without a word to the client (the duplicate keeps the
        connection open); -1 otherwise."""
        raise NotImplementedError


class ProxyContext:
    """Everything one data plane's connections share."""

    def __init__(self, config: Config, table: RoutingTable, pool: UpstreamPool,
                 codec: TokenCodec, loop: asyncio.AbstractEventLoop, passive: PassiveHealth) -> None:
        self.table = table
        self.pool = pool
        self.passive = passive  # this data plane's observations of its backends (router.dataplane.health)
        # The same dict as passive.watching (never replaced, only changed): read per response.
        self.watching: dict[Backend, int] = passive.watching
        self.codec = codec
        self.loop = loop
        # The clocks routing reads: wall-clock seconds for tokens, monotonic seconds for drains
        # (a test moves them).
        self.clock: Callable[[], float] = time.time
        self.monotonic: Callable[[], float] = time.monotonic
        self.unrouted = UnroutedStats()
        self.deadlines = ResponseDeadlines(loop, config.timeouts.response)
        self.connections: set[ClientBase] = set()
        self.refused = 0  # connections refused at the cap (router_connections_refused_total)
        self.connections_peak = 0  # the most client connections at once since the last trim
        # Client connections closed by a timeout, by reason (router_client_timeouts_total).
        self.timeouts: dict[str, int] = {}
        # Shared by every client connection: what one read brings is used before the next.
        self.read_head_buf = bytearray(HEAD_READ)
        self.read_head = memoryview(self.read_head_buf)
        self.read_body = memoryview(bytearray(BODY_READ))
        self.no_idle_until = 0.0  # no idle connection to close at the cap until then
        self.accepting = True  # False: every answer says Connection: close (a stop)
        # While the router hands its connections to a successor: called with each connection
        # whose idle timer fires (the data plane sets the idle timeout to 0 meanwhile).
        self.handoff: Callable[[ClientBase], None] | None = None
        self.ids = RequestIds(os.urandom(6).hex().encode() + b"-")
        self.throttled = Throttled(warn, 10.0, loop)
        self.log_access: AccessLog | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Settings that a reload may change (listen addresses are not among them)."""
        self.config = config
        t = config.timeouts
        self.deadlines.timeout = t.response
        self.client_header_timeout = t.client_header
        self.client_idle_timeout = t.client_idle
        self.client_body_timeout = t.client_body
        self.client_send_timeout = t.client_send
        self.tunnel_idle_timeout = t.tunnel_idle
        self.reuse_always = config.upstream.reuse == "always"
        lim = config.limits
        self.max_request_line = lim.max_request_line
        self.max_header = lim.max_header
        self.max_headers = lim.max_headers
        self.max_header_fields = lim.max_header_fields
        # Bytes a head in progress may take over further reads before it is refused: a bound
        # no head within the limits reaches (each field line adds ": " and CRLF to what the
        # limits count; 12 bytes more per field leave room for whitespace around values).
        self.max_head_read = (lim.max_request_line + lim.max_headers
                              + 16 * lim.max_header_fields + 64)
        # Said once by the main process (connection_cap_note), not by each worker at each reload.
        self.max_connections = min(lim.max_connections, fd_connection_cap())
        self.trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
            config.trusted_proxies)
        # Client address: (it, it as bytes, its forwarded tail, whether it is trusted), for
        # its connections to share (router.dataplane.client); trusted_proxies may have changed.
        self.peers: dict[str, tuple[str, bytes, bytes, bool]] = {}
        if self.log_access is not None:
            self.log_access.flush()
        self.log_access = (AccessLog(self.loop, config.access_log.format)
                           if config.access_log.enabled else None)

    def backend_failed(self, be: Backend, reason: str, passive: bool = True) -> None:
        """Count a failed use of ``be`` (metrics) and report it to passive health."""
        be.stats.error(reason)
        if passive:
            self.passive.failure(be)

    def backend_ok(self, be: Backend) -> None:
        """A response began on ``be``: its run of failures, if any, ends, and an unchecked backend
        is known to work (one truth test when no backend is failing or unchecked)."""
        be.answered += 1
        if self.watching:
            self.passive.success(be)
