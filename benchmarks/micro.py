"""Micro-benchmark of the hot objects: so a change that slows them shows up.

    python3 -m benchmarks.micro            # prints ns per operation, median of 5 runs

Each line times one operation the data plane does per request, on objects built the way a
routing snapshot builds them.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from typing import Callable

from router.dataplane.balancer import LeastInFlight, SmoothWeightedRoundRobin
from router.config import config_from_dict
from router.dataplane.health import Health, PassiveHealth
from router.dataplane.sticky import TokenCodec, cookie_value
from router.dataplane.table import TableBuilder


def _table():  # type: ignore[no-untyped-def]
    apps = {f"app{i}": {"routes": [f"app{i}.example.com", f"example.com/app{i}"], "services": {
        "blue": {"weight": 50, "backends": [f"10.0.{i}.{j}:80" for j in range(1, 5)]},
        "green": {"weight": 50, "backends": [f"10.1.{i}.{j}:80" for j in range(1, 5)]}}}
        for i in range(100)}
    cfg = config_from_dict({"apps": apps})
    codec = TokenCodec(b"k" * 32, 1800, 28800)
    return TableBuilder(codec).build(cfg.apps, 1), codec


def cases() -> dict[str, Callable[[], object]]:
    table, codec = _table()
    app = table.apps["app42"]
    svc = app.services[0]
    be = svc.backends[0]
    now = int(time.time())
    token = codec.issue(app.name_b, svc.token_id, be.token_id, now, now)
    cookie = b"_ga=GA1.2.3; CONTAINERID=" + token + b"; theme=dark"

    class W:
        def __init__(self, w: int) -> None:
            self.weight = w
            self.inflight = 0

    wrr2 = SmoothWeightedRoundRobin([W(1), W(3)])
    wrr5 = SmoothWeightedRoundRobin([W(5), W(1), W(1), W(3), W(2)])
    lif4 = LeastInFlight([W(1) for _ in range(4)])
    return {
        "table.lookup host (100 apps)": lambda: table.lookup(b"app42.example.com", b"/"),
        "table.lookup host:port, mixed case": lambda: table.lookup(b"App42.Example.com:8080", b"/"),
        "table.lookup path prefix": lambda: table.lookup(b"example.com", b"/app42/x"),
        "wrr.pick (2 services)": wrr2.pick,
        "wrr.pick (5 services)": wrr5.pick,
        "least_in_flight.pick (4 backends)": lif4.pick,
        "app.pick + service.pick": lambda: app.pick().pick(),  # type: ignore[union-attr]
        "cookie_value (3 cookies)": lambda: cookie_value(cookie, b"CONTAINERID="),
        "token.verify": lambda: codec.verify(app.name_b, token, now),
        "token.issue (reused within the second)": lambda: codec.issue(app.name_b, svc.token_id, be.token_id, now, now),
        "token.issue, first in its second (HMAC)": lambda: codec._sign(app.name_b, svc.token_id, be.token_id, now, now),
    }


_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 15:00:00 GMT\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 100\r\n"
             b"Last-Modified: Thu, 26 Nov 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n"
             b'ETag: "6925e0a0-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"b" * 100)


def _response(size: int) -> bytes:
    return _RESPONSE.replace(b"Content-Length: 100", b"Content-Length: %d" % size)[:-100] + b"b" * size


def proxy_case(sticky: bool, size: int = 100, reads: int = 1) -> Callable[[], object]:
    """One keep-alive request and its response (a body of ``size`` bytes, arriving in ``reads``
    reads) through ClientConnection, the balancer and a pooled UpstreamConnection, with
    in-memory transports: the Python cost per request."""
    import uvloop

    from router.dataplane.client import ClientConnection
    from router.dataplane.context import ProxyContext
    from router.dataplane.pool import UpstreamPool
    from router.dataplane.upstream import UpstreamConnection
    from tests.memory import CountingTransport

    loop = uvloop.new_event_loop()
    cfg = config_from_dict({"apps": {"bench": {"session_sticky": sticky, "routes": ["bench.local"], "services": {
        "blue": {"weight": 50, "backends": ["127.0.0.1:1"]},
        "green": {"weight": 50, "backends": ["127.0.0.1:2"]}}}}})
    codec = TokenCodec(b"k" * 32, 1800, 28800)
    pool = UpstreamPool(loop, 3.0)
    passive = PassiveHealth(Health(lambda: None, cfg.passive_health, loop), cfg.passive_health.failures)
    ctx = ProxyContext(cfg, TableBuilder(codec).build(cfg.apps, 1), pool, codec, loop, passive)
    ups = []
    for key in ("127.0.0.1:1", "127.0.0.1:2"):
        up = UpstreamConnection(pool, key)
        up.connection_made(CountingTransport())  # type: ignore[arg-type]
        pool.put(up, 0.0)
        ups.append(up)
    client = ClientConnection(ctx)
    client.connection_made(CountingTransport())  # type: ignore[arg-type]
    # Measured: the keep-alive requests after a connection's first, which (upstream.reuse safe)
    # opens a backend connection of its own.
    client.first_request = False
    request = (b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\n"
               b"Accept: */*\r\n\r\n")

    response = _response(size)
    step = -(-len(response) // reads)
    parts = [response[i:i + step] for i in range(0, len(response), step)]

    def one() -> None:
        client.data_received(request)
        up = client.active.upstream  # type: ignore[union-attr]
        for part in parts:
            up.data_received(part)  # type: ignore[union-attr]

    return one


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--number", type=int, default=200_000)
    args = p.parse_args()
    print(f"| operation | ns/op (median of {args.repeat} x {args.number}) |")
    print("|---|--:|")
    all_cases = cases()
    all_cases["proxy: one request, no sockets"] = proxy_case(False)
    all_cases["proxy: one request, sticky cookie issued"] = proxy_case(True)
    all_cases["proxy: one request, 64 KiB body in 4 reads"] = proxy_case(False, 65536, 4)
    for name, fn in all_cases.items():
        runs = timeit.repeat(fn, number=args.number, repeat=args.repeat)
        print(f"| {name} | {statistics.median(runs) / args.number * 1e9:,.0f} |")


if __name__ == "__main__":
    main()
