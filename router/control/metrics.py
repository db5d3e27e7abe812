"""Data-plane metrics for Prometheus, from the counters of ``router.dataplane.counters``.

A custom collector turns those integers into Prometheus families when ``/metrics`` is
scraped, walking the *current* routing table, so the series of a deleted service or backend
disappear with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..dataplane.counters import BUCKETS, BackendStats, ServiceStats, Stats
from .ramp import RampStatus

if TYPE_CHECKING:
    from .state import State
    from ..dataplane.table import RoutingTable

# The reasons of router_client_timeouts_total (the timeouts of router.dataplane.client).
TIMEOUT_REASONS = ("client_header", "client_body", "client_send", "tunnel_idle")


class DataPlaneCollector:
    """Renders the counters at scrape time, shaped by the current table."""

    def __init__(self, table: Callable[[], "RoutingTable"], stats: Callable[[], Stats],
                 state: Callable[[], "State"],
                 health: Callable[[tuple[str, str, str]], str]) -> None:
        """``state``: the routing state (its releases, the generation of each app's last
        change); ``health``: a backend's state (``router.dataplane.health``): healthy, unhealthy,
        unchecked."""
        self._table = table
        self._stats = stats
        self._state = state
        self._health = health

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
            "router_backend_healthy", "1 if the backend is known to work, 0 if it is out of "
            "rotation; no series while it is unchecked", labels=["app", "service", "backend"])
        unchecked = GaugeMetricFamily(
            "router_backend_unchecked", "1 while nothing has shown that the backend works (no "
            "active check passed, no response yet); it takes requests meanwhile",
            labels=["app", "service", "backend"])
        sticky = CounterMetricFamily(
            "router_sticky_requests", "Requests routed by the stickiness cookie",
            labels=["app", "service"])
        fallback = CounterMetricFamily(
            "router_fallback_requests", "Requests sent to a weight-0 service because no "
            "weighted service had a healthy backend", labels=["app", "service"])
        preview = CounterMetricFamily(
            "router_preview_requests", "Requests sent to the new version of an open release by "
            "a preview marker (header or cookie)", labels=["app", "service"])
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
                fallback.add_metric(labels, st.fallback)
                preview.add_metric(labels, st.preview)
                duration.add_metric(labels, cumulative_buckets(st), st.dsum)
                for be in svc.backends:
                    blabels = [app.name, svc.name, be.key]
                    state = self._health((app.name, svc.name, be.key))
                    if state == "unchecked" and be.healthy:
                        unchecked.add_metric(blabels, 1)
                    else:
                        unchecked.add_metric(blabels, 0)
                        healthy.add_metric(blabels, 1 if be.healthy else 0)
                    bst = stats.backends.get((app.name, svc.name, be.key), none_b)
                    for code, n in sorted(bst.codes.items()):
                        requests.add_metric(blabels + [str(code)], n)
                    for reason, n in sorted(bst.errors.items()):
                        errors.add_metric(blabels + [reason], n)
        yield from (requests, errors, retries, inflight, weight, healthy, unchecked, sticky,
                    fallback, preview, duration)
        yield from self._state_series(table)
        refused = CounterMetricFamily(
            "router_connections_refused", "Client connections refused at limits.max_connections "
            "with no idle connection to close")
        refused.add_metric([], stats.refused)
        timeouts = CounterMetricFamily(
            "router_client_timeouts", "Client connections closed by a timeout, by reason "
            "(client_header, client_body, client_send, tunnel_idle)", labels=["reason"])
        for reason in TIMEOUT_REASONS:  # each from 0, so that rate() sees the first one
            timeouts.add_metric([reason], stats.timeouts.get(reason, 0))
        yield from (refused, timeouts)

    def _state_series(self, table: "RoutingTable") -> Iterator[Metric]:
        """The routing state's series: its generation, each app's, the open releases."""
        generation = GaugeMetricFamily(
            "router_config_generation", "Generation of the routing state in use")
        generation.add_metric([], table.generation)
        state = self._state()
        # What a dashboard marks changes with: it moves exactly when the app changes.
        app_generation = GaugeMetricFamily(
            "router_app_generation", "Generation of an app's last change (its ETag)",
            labels=["app"])
        for app in state.apps:
            app_generation.add_metric([app.name], state.app_generations.get(app.name,
                                                                             state.generation))
        release_info = GaugeMetricFamily(
            "router_release_info", "1 for each open blue-green release",
            labels=["app", "old", "new", "status"])
        share = GaugeMetricFamily(
            "router_release_share", "Percent of the weight of an open release's app on its new "
            "service (its share of unpinned traffic)", labels=["app", "new"])
        step = GaugeMetricFamily(
            "router_release_step", "The step a release's ramp has applied (0: none yet)",
            labels=["app", "new"])
        paused = GaugeMetricFamily(
            "router_release_ramp_paused", "1 while a release's ramp is paused (by an operator, "
            "or for too little traffic to judge), else 0", labels=["app", "new"])
        for app_name, r in sorted(state.releases.items()):
            release_info.add_metric([app_name, ",".join(r.old), r.new, r.status.value], 1)
            live = table.apps.get(app_name)
            if live is not None:
                total = sum(s.weight for s in live.services)
                new = live.by_name.get(r.new)
                share.add_metric([app_name, r.new], 100.0 * new.weight / total
                                 if new is not None and total else 0.0)
            if r.ramp is not None:
                step.add_metric([app_name, r.new], r.ramp.step)
                paused.add_metric([app_name, r.new], 1 if r.ramp.status is RampStatus.PAUSED else 0)
        yield from (generation, app_generation, release_info, share, step, paused)


def cumulative_buckets(st: ServiceStats) -> list[tuple[str, int]]:
    """A service's latency histogram as Prometheus shows it: (upper bound, requests at or
    under it), the last bound ``+Inf`` holding the count."""
    out = []
    acc = 0
    for bound, n in zip(BUCKETS + (float("inf"),), st.buckets):
        acc += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), acc))
    return out


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


class WorkersCollector:
    """``router_workers_up``: worker processes serving and answering the master (1 without
    ``--workers``); ``router_worker_restarts_total``: workers replaced, by reason (``exited``,
    or ``hung``: killed by the watchdog)."""

    def __init__(self, up: Callable[[], int], restarts: Callable[[], Mapping[str, int]]) -> None:
        self._up = up
        self._restarts = restarts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("router_workers_up", "Worker processes serving and answering")
        up.add_metric([], self._up())
        restarts = CounterMetricFamily("router_worker_restarts", "Worker processes replaced",
                                       labels=["reason"])
        for reason in ("exited", "hung"):
            restarts.add_metric([reason], self._restarts().get(reason, 0))
        yield from (up, restarts)
