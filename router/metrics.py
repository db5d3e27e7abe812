"""Data-plane metrics (SPEC 7).

The hot path only bumps plain integers on objects it already holds (a backend's counters, a
service's histogram buckets); nothing here takes a lock or builds a label tuple per request.
A custom collector turns those integers into Prometheus families when ``/metrics`` is
scraped, walking the *current* routing table, so the series of a deleted service or backend
disappear with it.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from .release import Release
    from .table import RoutingTable

# Prometheus client's default buckets: the usual latency range of an HTTP service.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class ServiceStats:
    """Counters of one service of one app; outlives routing snapshots."""

    __slots__ = ("inflight", "sticky", "retries", "buckets", "dsum")

    def __init__(self) -> None:
        self.inflight = 0
        self.sticky = 0
        self.retries = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.dsum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.dsum += seconds

    def add(self, other: "ServiceStats") -> None:
        self.inflight += other.inflight
        self.sticky += other.sticky
        self.retries += other.retries
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        self.dsum += other.dsum


class BackendStats:
    """Counters of one backend of one service; outlives routing snapshots."""

    __slots__ = ("codes", "errors")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}  # responses by status (ClientConnection._account)
        self.errors: dict[str, int] = {}

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def add(self, other: "BackendStats") -> None:
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        for reason, n in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n


class UnroutedStats:
    """Responses the router gave before any app or service was chosen (404, 400, ...)."""

    __slots__ = ("codes",)

    def __init__(self) -> None:
        self.codes: dict[tuple[str, int], int] = {}

    def count(self, app: str, code: int) -> None:
        key = (app, code)
        self.codes[key] = self.codes.get(key, 0) + 1


class Stats:
    """Every counter of a process by name: what a scrape reads, and what a worker process
    sends to the master (plain picklable objects), summed there across workers."""

    __slots__ = ("services", "backends", "unrouted")

    def __init__(self) -> None:
        self.services: dict[tuple[str, str], ServiceStats] = {}
        self.backends: dict[tuple[str, str, str], BackendStats] = {}
        self.unrouted: dict[tuple[str, int], int] = {}

    @classmethod
    def of(cls, table: "RoutingTable", unrouted: UnroutedStats) -> "Stats":
        """The live counters of this process (no copy)."""
        st = cls()
        for app in table.apps.values():
            for svc in app.services:
                st.services[(app.name, svc.name)] = svc.stats
                for be in svc.backends:
                    st.backends[(app.name, svc.name, be.key)] = be.stats
        st.unrouted = unrouted.codes
        return st

    def add(self, other: "Stats") -> None:
        for key, s in other.services.items():
            self.services.setdefault(key, ServiceStats()).add(s)
        for bkey, b in other.backends.items():
            self.backends.setdefault(bkey, BackendStats()).add(b)
        for ukey, n in other.unrouted.items():
            self.unrouted[ukey] = self.unrouted.get(ukey, 0) + n


class DataPlaneCollector:
    """Renders the counters at scrape time, shaped by the current table."""

    def __init__(self, table: Callable[[], "RoutingTable"], stats: Callable[[], Stats],
                 releases: Callable[[], Mapping[str, "Release"]]) -> None:
        self._table = table
        self._stats = stats
        self._releases = releases

    def describe(self) -> list[Metric]:
        return []  # names are dynamic; registering without describe avoids a scrape at register

    def collect(self) -> Iterator[Metric]:
        table = self._table()
        requests = CounterMetricFamily(
            "router_requests", "Requests answered, by app, service, backend and status code",
            labels=["app", "service", "backend", "code"])
        errors = CounterMetricFamily(
            "router_upstream_errors", "Failed attempts to use a backend, by reason",
            labels=["app", "service", "backend", "reason"])
        retries = CounterMetricFamily(
            "router_retries", "Requests sent again to another backend", labels=["app", "service"])
        inflight = GaugeMetricFamily(
            "router_inflight_requests", "Requests in flight", labels=["app", "service"])
        weight = GaugeMetricFamily(
            "router_service_weight", "Configured weight of a service", labels=["app", "service"])
        healthy = GaugeMetricFamily(
            "router_backend_healthy", "1 if the backend takes new requests",
            labels=["app", "service", "backend"])
        sticky = CounterMetricFamily(
            "router_sticky_requests", "Requests routed by the stickiness cookie",
            labels=["app", "service"])
        duration = HistogramMetricFamily(
            "router_request_duration_seconds", "Time from request head to response end",
            labels=["app", "service"])
        stats = self._stats()
        for (app_name, code), n in sorted(stats.unrouted.items()):
            requests.add_metric([app_name, "", "", str(code)], n)
        none_s, none_b = ServiceStats(), BackendStats()
        for app in table.apps.values():
            for svc in app.services:
                st = stats.services.get((app.name, svc.name), none_s)
                labels = [app.name, svc.name]
                retries.add_metric(labels, st.retries)
                inflight.add_metric(labels, st.inflight)
                weight.add_metric(labels, svc.weight)
                sticky.add_metric(labels, st.sticky)
                cumulative = []
                acc = 0
                for bound, n in zip(BUCKETS + (float("inf"),), st.buckets):
                    acc += n
                    cumulative.append((_fmt_bound(bound), acc))
                duration.add_metric(labels, cumulative, st.dsum)
                for be in svc.backends:
                    blabels = [app.name, svc.name, be.key]
                    healthy.add_metric(blabels, 1 if be.healthy else 0)
                    bst = stats.backends.get((app.name, svc.name, be.key), none_b)
                    for code, n in sorted(bst.codes.items()):
                        requests.add_metric(blabels + [str(code)], n)
                    for reason, n in sorted(bst.errors.items()):
                        errors.add_metric(blabels + [reason], n)
        generation = GaugeMetricFamily(
            "router_config_generation", "Generation of the routing state in use")
        generation.add_metric([], table.generation)
        release_info = GaugeMetricFamily(
            "router_release_info", "1 for each open blue-green release",
            labels=["app", "old", "new", "status"])
        for app_name, r in sorted(self._releases().items()):
            release_info.add_metric([app_name, ",".join(r.old), r.new, r.status.value], 1)
        yield from (requests, errors, retries, inflight, weight, healthy, sticky, duration,
                    generation, release_info)


def _fmt_bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


class StoreCollector:
    """``router_store_up``: whether the routing-state store answered its last request.

    0 while etcd is unreachable: the data plane keeps serving the last state (``/readyz`` stays
    200), but admin changes are refused until it is back.
    """

    def __init__(self, up: Callable[[], bool]) -> None:
        self._up = up

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "router_store_up", "1 if the routing-state store answered its last request, else 0")
        gauge.add_metric([], 1 if self._up() else 0)
        yield gauge
