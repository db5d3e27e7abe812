"""The data plane's metrics as Prometheus reads them (router.control.metrics): the latency histogram's
buckets, which the console's stats and the guarded ramp read too, and the generation of each
app's last change, which the dashboard marks changes with."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.config import config_from_dict
from router.dataplane.counters import BUCKETS, Stats
from router.control.metrics import DataPlaneCollector, cumulative_buckets
from router.control.rampjudge import counts, quantile
from router.control.state import State
from router.dataplane.sticky import TokenCodec
from router.dataplane.table import TableBuilder

# A proxy in front of a fast backend: the latencies of one service, seconds.
FAST = (0.0003,) * 40 + (0.0008,) * 40 + (0.0015,) * 19 + (0.004,)


def _scrape(state: State, stats: Stats) -> dict[str, list[tuple[dict[str, str], float]]]:
    table = TableBuilder(TokenCodec(b"k" * 32, 1800, 28800)).build(state.apps, state.generation)
    registry = CollectorRegistry()
    registry.register(DataPlaneCollector(lambda: table, lambda: stats, lambda: state,
                                         lambda key: "healthy"))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _state() -> State:
    cfg = config_from_dict({"apps": {
        "shop": {"routes": ["shop.test"], "services": {"web": {"weight": 100,
                                                               "backends": ["10.0.0.1:80"]}}},
        "cart": {"routes": ["cart.test"], "services": {"web": {"weight": 100,
                                                               "backends": ["10.0.0.2:80"]}}}}})
    return State(7, cfg.apps, {}, {"shop": 7, "cart": 3})


def test_buckets_resolve_a_millisecond_service() -> None:
    assert BUCKETS[0] == 0.00025 and list(BUCKETS) == sorted(BUCKETS) and BUCKETS[-1] == 10.0
    # Every bound of the Prometheus client's default buckets is still one: queries on them work.
    assert {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0} <= set(BUCKETS)
    state, stats = _state(), Stats()
    table = TableBuilder(TokenCodec(b"k" * 32, 1800, 28800)).build(state.apps, state.generation)
    svc = table.apps["shop"].services[0]
    for seconds in FAST:
        svc.stats.observe(seconds)
    stats.services[("shop", "web")] = svc.stats
    stats.backends[("shop", "web", "10.0.0.1:80")] = svc.backends[0].stats
    svc.backends[0].stats.codes[200] = len(FAST)
    samples = _scrape(state, stats)["router_request_duration_seconds_bucket"]
    shop = {labels["le"]: n for labels, n in samples if labels["service"] == "web"
            and labels["app"] == "shop"}
    assert shop["0.00025"] == 0 and shop["0.0005"] == 40 and shop["0.001"] == 80
    assert shop["0.002"] == 99 and shop["0.005"] == 100 and shop["+Inf"] == 100
    assert list(shop) == [repr(b) for b in BUCKETS] + ["+Inf"]
    # The ramp judges the same histogram, and sees what the service does: p50 0.5..1 ms, p99
    # 1..2 ms (the client's default buckets made them 2.5 ms and 4.95 ms).
    delta = counts(stats, "shop", ["web"])
    assert [n for _, n in cumulative_buckets(stats.services[("shop", "web")])] == [
        sum(delta.buckets[:i + 1]) for i in range(len(delta.buckets))]
    p50, p99 = quantile(0.5, delta.buckets), quantile(0.99, delta.buckets)
    assert p50 is not None and p99 is not None
    assert 0.0005 < p50 <= 0.001 and 0.001 < p99 <= 0.002


def test_each_app_shows_the_generation_of_its_last_change() -> None:
    samples = _scrape(_state(), Stats())
    assert sorted((labels["app"], n) for labels, n in samples["router_app_generation"]) == [
        ("cart", 3.0), ("shop", 7.0)]
    assert samples["router_config_generation"] == [({}, 7.0)]
