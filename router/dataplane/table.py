"""The immutable routing table: (host, path prefix) -> app -> services -> backends.

A table is built from the configured apps whenever anything changes (a reload, an admin
call, a backend's health) and swapped in with one assignment; a request reads the table once
and uses only that object (docs/architecture.md). Everything a request needs that does not depend on the
request itself is computed here, once per snapshot: the byte keys for host lookup, the
candidate services and their balancer, each service's healthy backends, the ids used in
stickiness tokens.

What must outlive a snapshot -- a backend's requests in flight, its health, the counters
behind the metrics, when a service's weight dropped to 0 -- lives in ``Backend`` and
``ServiceStats`` objects that the builder hands from one table to the next. A service's
counters outlive the service itself by ``REMOVED_KEEP`` (``Stats.removed``).
"""

from __future__ import annotations

import time
from typing import Container, Final, Iterable, Mapping

from .balancer import LeastInFlight, RoundRobin, SmoothWeightedRoundRobin
from ..config import AppConfig, StickyConfig, split_hostport
from .counters import BackendStats, RemovedService, ServiceStats, Stats, UnroutedStats
from .sticky import TokenCodec

DEFAULT_COOKIE: Final = StickyConfig().cookie
# The preview cookie is the sticky cookie's name with this after it: CONTAINERID_PREVIEW.
PREVIEW_COOKIE_SUFFIX: Final = b"_PREVIEW"
# How long the last counters of a deleted service stay readable: the console's chart window
# (5 minutes), so that a page whose readings are far apart (a tab in the background polls
# about once a minute) still gets the numbers of a version rolled back between two of them.
REMOVED_KEEP = 300.0


class Backend:
    """One backend address of one service; shared by every snapshot that contains it."""

    __slots__ = ("key", "ident", "host", "port", "inflight", "healthy", "stats", "token_id",
                 "answered")

    def __init__(self, key: str, token_id: bytes, ident: tuple[str, str, str] = ("", "", "")) -> None:
        self.key = key
        self.ident = ident  # (app, service, address): how health reports name it across processes
        self.host, self.port = split_hostport(key)
        self.inflight = 0
        self.healthy = True
        self.stats = BackendStats()
        self.token_id = token_id
        self.answered = 0  # final response heads received: the stall sweep's sign of life

    def __repr__(self) -> str:
        return f"Backend({self.key!r}, inflight={self.inflight}, healthy={self.healthy})"


class Service:
    """A service as one snapshot sees it."""

    __slots__ = ("name", "weight", "backends", "healthy", "by_token", "token_id", "stats",
                 "zero_since", "_picker")

    def __init__(self, name: str, weight: int, backends: tuple[Backend, ...], token_id: bytes,
                 stats: ServiceStats, zero_since: float | None) -> None:
        self.name = name
        self.weight = weight
        self.backends = backends
        self.healthy = tuple(b for b in backends if b.healthy)
        self.by_token = {b.token_id: b for b in backends}
        self.token_id = token_id
        self.stats = stats
        self.zero_since = zero_since
        self._picker = LeastInFlight(self.healthy)

    def pick(self, exclude: Container[object] | None = None) -> Backend | None:
        """The healthy backend with the fewest requests in flight."""
        return self._picker.pick(exclude)

    def __repr__(self) -> str:
        return f"Service({self.name!r}, weight={self.weight})"


class Preview:
    """The new version of an app's open release, as one snapshot sees it: where a request with
    a preview marker goes whatever its weight, and the markers (docs/release-ramp.md)."""

    __slots__ = ("service", "token_id", "header", "value")

    def __init__(self, service: Service, token_id: bytes, header: bytes, value: bytes) -> None:
        self.service = service
        self.token_id = token_id  # what a preview token of this release names
        self.header = header  # the marker field's name, lower case; b"": none
        self.value = value

    def __repr__(self) -> str:
        return f"Preview({self.service.name!r})"


class App:
    """An app as one snapshot sees it."""

    __slots__ = ("name", "name_b", "sticky", "drain_timeout", "services", "by_token",
                 "by_name", "unavailable", "preview", "_wrr", "_fallback")

    def __init__(self, cfg: AppConfig, services: tuple[Service, ...],
                 preview: Preview | None = None) -> None:
        self.name = cfg.name
        self.name_b = cfg.name.encode()
        self.sticky = cfg.session_sticky
        self.drain_timeout = cfg.drain_timeout
        self.services = services
        self.by_token = {s.token_id: s for s in services}
        self.by_name = {s.name: s for s in services}
        # Candidates: weight > 0 and at least one healthy backend.
        self._wrr = SmoothWeightedRoundRobin([s for s in services if s.weight > 0 and s.healthy])
        weighted = any(s.weight > 0 for s in services)
        # When no weighted service has a healthy backend, the services at weight 0 that have
        # one serve rather than the app failing (docs/routing.md, "Fallback"); not when every
        # weight is 0, which is the operator's way of stopping the app.
        self._fallback = RoundRobin([s for s in services if s.weight == 0 and s.healthy]
                                    if weighted else [])
        # Why a request finds no service (the text of its 503).
        self.unavailable = (b"no healthy backend for this app\n" if weighted
                            else b"all weights of this app are 0\n")
        # None unless the app has an open release: the only cost of preview for other apps.
        self.preview = preview

    def pick(self, exclude: Container[object] | None = None) -> Service | None:
        """The next service by smooth weighted round robin, or None if none can serve."""
        return self._wrr.pick(exclude)

    def pick_fallback(self, exclude: Container[object] | None = None) -> Service | None:
        """A weight-0 service with a healthy backend, when no weighted one has any."""
        return self._fallback.pick(exclude)

    def __repr__(self) -> str:
        return f"App({self.name!r})"


class HostApp:
    """An app as the routes of one host reach it: the app, and its cookies on that host, their
    bytes made once per snapshot (``cookie_name``, ``cookie_path``)."""

    __slots__ = ("app", "cookie_eq", "set_cookie", "cookie_attrs", "preview_eq", "preview_attrs")

    def __init__(self, app: App, name: str, path: str) -> None:
        self.app = app
        self.cookie_eq = name.encode() + b"="
        self.set_cookie = b"Set-Cookie: " + self.cookie_eq
        self.cookie_attrs = b"; Path=" + path.encode() + b"; HttpOnly; SameSite=Lax"
        self.preview_eq = name.encode() + PREVIEW_COOKIE_SUFFIX + b"="
        self.preview_attrs = b"; Path=" + path.encode()

    def __repr__(self) -> str:
        return f"HostApp({self.app.name!r}, {self.cookie_attrs!r})"


def cookie_name(cfg: AppConfig, cookie: str) -> str:
    """The name of an app's sticky cookie (``cookie``: ``sticky.cookie``; the preview cookie is
    it with ``_PREVIEW``): ``cookie``, unless the app has routes on two paths of one host, which
    share no path that its cookie could have alone: then ``<cookie>_<app>``
    (docs/routing.md, "The cookie")."""
    seen: dict[str, str] = {}
    for r in cfg.routes:
        if seen.setdefault(r.host, r.path) != r.path:
            return f"{cookie}_{cfg.name}"
    return cookie


def cookie_path(paths: Iterable[str]) -> str:
    """An app's cookie ``Path`` on one host, from the paths of its routes there: the longest
    path they all share (its one path, nearly always), so the cookie is sent with every request
    to the app and with none to another app of the host whose path is not inside it."""
    shared: list[str] | None = None
    for path in paths:
        segments = path.split("/")
        if shared is None:
            shared = segments
            continue
        n = 0
        while n < min(len(shared), len(segments)) and shared[n] == segments[n]:
            n += 1
        shared = shared[:n]
    return "/".join(shared or ()) or "/"


class _Host:
    """The routes of one host: the app for "/", and path prefixes by value.

    A prefix matches whole segments, so the only candidates for a path are the path itself
    and its parts that end before a "/": ``/api/v2/x`` -> ``/api/v2/x``, ``/api/v2``,
    ``/api``. Trying those, longest first, costs one dict lookup per segment (no longer than
    the longest prefix) however many prefixes the host has.
    """

    __slots__ = ("root", "prefixes", "longest")

    def __init__(self) -> None:
        self.root: HostApp | None = None
        self.prefixes: dict[bytes, HostApp] = {}
        self.longest = 0

    def match(self, path: bytes) -> HostApp | None:
        prefixes = self.prefixes
        if len(path) > self.longest:
            end = path.rfind(b"/", 0, self.longest + 1)
            path = path[:end] if end > 0 else b""
        while path:
            hit = prefixes.get(path)
            if hit is not None:
                return hit
            end = path.rfind(b"/")
            path = path[:end] if end > 0 else b""
        return self.root


class RoutingTable:
    """Host and path prefix to app; immutable once built."""

    __slots__ = ("generation", "apps", "_hosts")

    def __init__(self, generation: int, apps: dict[str, App], hosts: dict[bytes, _Host]) -> None:
        self.generation = generation
        self.apps = apps
        self._hosts = hosts

    def stats(self, unrouted: UnroutedStats) -> Stats:
        """The live counters of this process by name (no copy)."""
        st = Stats()
        for app in self.apps.values():
            for svc in app.services:
                st.services[(app.name, svc.name)] = svc.stats
                for be in svc.backends:
                    st.backends[(app.name, svc.name, be.key)] = be.stats
        st.unrouted = unrouted.codes
        return st

    def lookup(self, host: bytes, path: bytes) -> HostApp | None:
        """The app for a ``Host`` header value and a request path (no query), with its cookies
        on that host."""
        entry = self._hosts.get(host)
        if entry is None:
            entry = self._hosts.get(normalize_host(host))
            if entry is None:
                return None
        if not entry.prefixes:
            return entry.root
        return entry.match(path)


def normalize_host(host: bytes) -> bytes:
    """Lower case, no port, no trailing dot: ``Shop.Example.com.:8080`` -> ``shop.example.com``."""
    host = host.strip().lower()
    if host.startswith(b"["):  # IPv6 literal
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(b".")


class TableBuilder:
    """Builds successive tables, carrying per-backend and per-service state across them."""

    def __init__(self, codec: TokenCodec, cookie: str = DEFAULT_COOKIE) -> None:
        self._codec = codec
        self.cookie = cookie  # sticky.cookie
        self._backends: dict[tuple[str, str, str], Backend] = {}
        self._stats: dict[tuple[str, str], ServiceStats] = {}
        self._zero_since: dict[tuple[str, str], float] = {}
        self._services: dict[tuple[str, str], Service] = {}
        self._removed: dict[tuple[str, str], tuple[float, RemovedService]] = {}

    def backend(self, app: str, service: str, key: str) -> Backend | None:
        return self._backends.get((app, service, key))

    def build(self, apps: Iterable[AppConfig], generation: int,
              previews: Mapping[str, tuple[str, str]] | None = None) -> RoutingTable:
        """``previews``: for each app with an open release, its new service and the release's
        ``started_at``."""
        now = time.monotonic()
        backends: dict[tuple[str, str, str], Backend] = {}
        stats: dict[tuple[str, str], ServiceStats] = {}
        zero_since: dict[tuple[str, str], float] = {}
        kept: dict[tuple[str, str], Service] = {}
        built: dict[str, App] = {}
        hosts: dict[bytes, _Host] = {}
        for cfg in apps:
            services = []
            for scfg in cfg.services:
                skey = (cfg.name, scfg.name)
                bes = []
                for addr in scfg.backends:
                    bkey = (cfg.name, scfg.name, addr)
                    be = self._backends.get(bkey)
                    if be is None:
                        be = Backend(addr, self._codec.backend_id(cfg.name, scfg.name, addr), bkey)
                    backends[bkey] = be
                    bes.append(be)
                st = stats[skey] = self._stats.get(skey) or ServiceStats()
                zs = None
                if scfg.weight == 0:
                    zs = zero_since[skey] = self._zero_since.get(skey, now)
                svc = kept[skey] = Service(scfg.name, scfg.weight, tuple(bes),
                                           self._codec.service_id(cfg.name, scfg.name,
                                                                  scfg.incarnation), st, zs)
                services.append(svc)
            app = App(cfg, tuple(services), self._preview(cfg, services, previews))
            built[cfg.name] = app
            name = cookie_name(cfg, self.cookie)
            paths: dict[str, list[str]] = {}
            for route in cfg.routes:
                paths.setdefault(route.host, []).append(route.path)
            on_host = {h: HostApp(app, name, cookie_path(ps)) for h, ps in paths.items()}
            for route in cfg.routes:
                entry = hosts.setdefault(route.host.encode(), _Host())
                if route.path == "/":
                    entry.root = on_host[route.host]
                else:
                    p = route.path.encode()
                    entry.prefixes[p] = on_host[route.host]
                    entry.longest = max(entry.longest, len(p))
        self._backends = backends
        self._stats = stats
        self._zero_since = zero_since
        self._retire(kept, now)
        return RoutingTable(generation, built, hosts)

    def _retire(self, services: dict[tuple[str, str], Service], now: float) -> None:
        """Keep the counters of the services this build dropped; forget those kept long enough
        and those of a service made again (its counters start afresh)."""
        removed = {k: v for k, v in self._removed.items()
                   if k not in services and now - v[0] < REMOVED_KEEP}
        for skey, svc in self._services.items():
            if skey not in services:
                removed[skey] = (now, RemovedService(
                    svc.weight, svc.stats, {be.key: be.stats for be in svc.backends}))
        self._services = services
        self._removed = removed

    def removed(self) -> dict[tuple[str, str], RemovedService]:
        """The services dropped within ``REMOVED_KEEP``: their last counters (``Stats.removed``)."""
        now = time.monotonic()
        return {k: r for k, (since, r) in self._removed.items() if now - since < REMOVED_KEEP}

    def _preview(self, cfg: AppConfig, services: list[Service],
                 previews: Mapping[str, tuple[str, str]] | None) -> Preview | None:
        release = previews.get(cfg.name) if previews is not None else None
        if release is None:
            return None
        new, started = release
        for svc, scfg in zip(services, cfg.services):
            if svc.name == new:
                marker = cfg.preview
                header = marker.header.lower().encode() if marker is not None else b""
                value = (marker.value if marker is not None and marker.value is not None
                         else new).encode()
                return Preview(svc, self._codec.preview_id(cfg.name, new, scfg.incarnation,
                                                           started), header, value)
        return None

    def all_backends(self) -> Iterable[Backend]:
        return self._backends.values()
