"""The data plane's counters (router.dataplane.counters) as the request path bumps them: the
latency histogram's bucket as ``bisect_left`` gives it, and a backend's responses by status,
whose runs of one status are kept apart from the dict until the counters are read, equal to
the dict they replace whatever the order, across a worker's pickling and the master's sum, and
in the Prometheus text byte for byte."""

from __future__ import annotations

import bisect
import pickle
import random
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest

from router.config import config_from_dict
from router.control.metrics import DataPlaneCollector
from router.control.state import State
from router.dataplane.counters import BUCKETS, BackendStats, ServiceStats, Stats
from router.dataplane.sticky import TokenCodec
from router.dataplane.table import TableBuilder


def test_observe_counts_in_the_bucket_bisect_gives() -> None:
    values = [0.0, 1e-9, 100.0, float("inf")]
    for b in BUCKETS:
        values += [b, b * (1 - 1e-12), b * (1 + 1e-12)]
    st = ServiceStats()
    want = [0] * (len(BUCKETS) + 1)
    for v in values:
        st.observe(v)
        want[bisect.bisect_left(BUCKETS, v)] += 1
    assert st.buckets == want and st.dsum == sum(values)


def test_codes_equal_a_dict_counted_per_response() -> None:
    rng = random.Random(7)
    be, want = BackendStats(), Counter[int]()
    for i in range(2000):
        status = rng.choice([200] * 8 + [404, 500, 0, 101])
        be.count(status)
        want[status] += 1
        if i % 97 == 0:  # read in the middle of a run: nothing lost, nothing counted twice
            assert be.codes == want
    assert be.codes == want and be.codes == want


def test_codes_cross_pickling_and_sums_mid_run() -> None:
    a, b = BackendStats(), BackendStats()
    for status in (200, 200, 503, 200, 200, 200):
        a.count(status)
    for status in (404, 200, 200):
        b.count(status)
    sent = pickle.loads(pickle.dumps(a))  # a worker's counters, as the master gets them
    total = BackendStats()
    total.add(sent)
    total.add(b)
    assert total.codes == {200: 7, 503: 1, 404: 1}
    # Set whole (as the tests of the ramp do): the run counted before is not added to it.
    b.codes = {500: 3}
    b.count(500)
    assert b.codes == {500: 4}


def _text(stats: Stats, state: State) -> bytes:
    table = TableBuilder(TokenCodec(b"k" * 32, 1800, 28800)).build(state.apps, state.generation)
    registry = CollectorRegistry()
    registry.register(DataPlaneCollector(lambda: table, lambda: stats, lambda: state,
                                         lambda key: "healthy"))
    return generate_latest(registry)


def test_the_prometheus_text_is_the_dicts() -> None:
    cfg = config_from_dict({"apps": {"shop": {"routes": ["shop.test"], "services": {
        "web": {"weight": 100, "backends": ["10.0.0.1:80", "10.0.0.2:80"]}}}}})
    state = State(7, cfg.apps, {}, {"shop": 7})
    statuses = [200, 200, 204, 200, 502, 502, 200, 404]
    counted, by_dict = Stats(), Stats()
    for stats, bump in ((counted, True), (by_dict, False)):
        for addr in ("10.0.0.1:80", "10.0.0.2:80"):
            be = BackendStats()
            for status in statuses:
                if bump:
                    be.count(status)
                else:
                    be.codes[status] = be.codes.get(status, 0) + 1
            stats.backends[("shop", "web", addr)] = be
        stats.services[("shop", "web")] = ServiceStats()
    assert b'code="502"' in _text(counted, state)
    assert _text(counted, state) == _text(by_dict, state)
