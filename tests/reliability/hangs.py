"""Versions that hang: the way real versions break (they accept connections and never answer),
a black-holed backend (its connects time out), a slow one (which is not hung), and a guarded
ramp of such a version. Each scenario runs the router (in this process, the master of
``workers`` worker processes when more than one) against real backends on loopback, under a
bounded load of keep-alive clients that give up on a request after ``CLIENT_TIMEOUT``, as
browsers and load balancers do: the connection closed, a new one for the next request.

``HANGS`` lists them; ``tests/reliability/test_hangs.py`` runs them with ``--workers 1`` and
``2``, and ``python3 -m benchmarks.reliability`` puts them in the report. docs/health.md and
docs/release-ramp.md say what the router does in each.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Callable

from .faultserver import FaultServer
from .harness import ROOT, config, inproc_router, metric_sum, metrics, until
from .production import Outcome, admin_call, healthy, keepalive_load
from .scenarios import Result

# A client gives up on a request after this long (then closes its connection).
CLIENT_TIMEOUT = 2.0
# How long after a hang starts the router may take before requests stop failing: the stall
# limit of a service answering in milliseconds (2 s), a sweep (0.5 s), a client timeout.
SETTLE = 10.0


async def load(port: int, clients: int, seconds: float, timeout: float = CLIENT_TIMEOUT,
               stop: asyncio.Event | None = None) -> list[Outcome]:
    """``clients`` keep-alive connections sending GETs for ``seconds``, or until ``stop``; each
    request's start, end and outcome (a status, or the error's name: ``TimeoutError`` when the
    client gave up). A request started before the end has its whole ``timeout``."""
    stop = stop or asyncio.Event()
    timer = asyncio.get_running_loop().call_later(seconds, stop.set)
    try:
        return await keepalive_load(port, clients, stop, pause=0.02,
                                    limit=seconds + timeout + 1, timeout=timeout)
    finally:
        timer.cancel()


def _failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.result != "200"]


def _two_versions(blue: str, green: str, blue_weight: int, green_weight: int,
                  sticky: bool = False, **top: Any) -> dict[str, Any]:
    return config({"shop": {"routes": ["app.test"], "session_sticky": sticky, "services": {
        "blue": {"weight": blue_weight, "backends": [blue]},
        "green": {"weight": green_weight, "backends": [green]}}}}, **top)


async def _settled(admin_port: int, name: str, want: float, timeout: float = 10.0,
                   **labels: str) -> float:
    """The sum of the series ``name`` (with ``labels``) once it is ``want``, or whatever it is
    after ``timeout``: the caller's check then says how far off it is."""
    deadline = time.monotonic() + timeout
    while True:
        got = metric_sum(await metrics(admin_port), name, **labels)
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


# -- a hung version takes the whole weight --------------------------------------------------

async def hung_only_backend(scale: int = 1, workers: int = 1) -> Result:
    clients, seconds = 8, 10.0 + 10 * scale
    r = Result("a hung new version at weight 100, the old one at 0",
               f"{clients} keep-alive clients for {seconds:g} s, giving up after "
               f"{CLIENT_TIMEOUT:g} s", "green's only backend accepts and never answers "
               "(defaults: passive health 3 / 10 s, response timeout 60 s)", workers=workers)
    blue, green = await FaultServer("blue").start(), await FaultServer("green").start()
    try:
        async with inproc_router(_two_versions(blue.addr, green.addr, 0, 100), workers) as srv:
            warm = await load(srv.port, 2, 1.0)  # green answers first: its latency is known
            t_hang = time.monotonic()
            green.inject("silence", 1_000_000)
            outcomes = await load(srv.port, clients, seconds)
            gave_up = sum(1 for o in outcomes if o.result == "TimeoutError")
            # Every request a client gave up on is counted (499) and leaves the in-flight gauge.
            abandoned = await _settled(srv.admin_port, "router_requests_total", gave_up,
                                       code="499")
            inflight = await _settled(srv.admin_port, "router_inflight_requests", 0)
            fallback = metric_sum(await metrics(srv.admin_port), "router_fallback_requests_total",
                                  service="blue")
            green_health = await healthy(srv.admin_port, green.addr)
        late = [o for o in outcomes if o.started - t_hang >= SETTLE]
        late_failed = _failed(late)
        r.sent = len(warm) + len(outcomes)
        r.failed = len(_failed(warm)) + len(_failed(outcomes))
        r.expected = r.failed  # the hang's first seconds; bounded by the checks below
        r.check(not _failed(warm), f"before the hang: {Counter(o.result for o in _failed(warm))}")
        r.check(len(late) > 0 and len(late_failed) <= 0.05 * len(late),
                f"{len(late_failed)} of {len(late)} requests failed from {SETTLE:g} s after the "
                f"hang on: at most 5% may ({Counter(o.result for o in late_failed)})")
        r.check(green_health == 0, f"green not shown out of rotation (router_backend_healthy "
                                   f"{green_health})")
        r.check(fallback > 0, "no request counted as a fallback to blue")
        r.check(abandoned == gave_up, f"router_requests_total{{code=499}} = {abandoned:g}, but "
                                      f"clients gave up on {gave_up} requests")
        r.check(inflight == 0, f"router_inflight_requests = {inflight:g} after the clients left")
        first_ok = min((o.started - t_hang for o in outcomes
                        if o.result == "200" and o.started > t_hang + 0.1), default=None)
        r.notes = (f"{r.failed} failed, all in the first seconds of the hang ({gave_up} given up, "
                   f"counted 499); from {SETTLE:g} s on {len(late_failed)} of {len(late)}; blue "
                   f"served {blue.handled} as the fallback"
                   + (f", from {first_ok:.1f} s" if first_ok is not None else ""))
    finally:
        await blue.stop()
        await green.stop()
    return r


# -- a black-holed backend ----------------------------------------------------------------------

class BlackHole:
    """A loopback port whose connects time out, as a host that is down without a reset: a
    listener with a backlog of 0 whose queue is full (the kernel drops further SYNs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self._fill: list[socket.socket] = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self._fill.append(c)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for c in self._fill:
            c.close()
        self.sock.close()


async def black_hole(scale: int = 1, workers: int = 1, connect: float = 1.0) -> Result:
    clients, seconds = 8, 6.0 + 4 * scale
    r = Result("a black-holed last backend (connects time out)",
               f"{clients} keep-alive clients for {seconds:g} s", f"green's only backend drops "
               f"SYNs (connect timeout {connect:g} s; cooldown 2 s, so it is asked again)",
               workers=workers)
    blue = await FaultServer("blue").start()
    hole = BlackHole()
    try:
        cfg = _two_versions(blue.addr, hole.addr, 0, 100, timeouts={"connect": f"{connect:g}s"},
                            passive_health={"failures": 3, "cooldown": "2s"})
        async with inproc_router(cfg, workers) as srv:
            t0 = time.monotonic()
            outcomes = await load(srv.port, clients, seconds, timeout=connect * 4)
            hole_health = await healthy(srv.admin_port, hole.addr)
        # A request that met a connect timeout was retried on blue: slow, not failed. Once the
        # hole is out, none is: the first few per client only.
        slow = [o for o in outcomes if o.ended - o.started > connect / 2]
        late = [round(o.started - t0, 2) for o in slow if o.started - t0 > 2 * connect + 1]
        r.sent, r.failed = len(outcomes), len(_failed(outcomes))
        r.check(hole_health == 0, f"the black hole not shown out of rotation ({hole_health})")
        r.check(not late, f"requests that waited for a connect after it was ejected: at {late}")
        r.notes = (f"{len(slow)} requests waited for a connect timeout (each then served by "
                   f"blue), none started after {2 * connect + 1:g} s; {blue.handled} served")
    finally:
        hole.close()
        await blue.stop()
    return r


# -- a slow version is not a hung one -------------------------------------------------------------

async def slow_not_stalled(scale: int = 1, workers: int = 1, delay: float = 5.0) -> Result:
    clients, seconds = 4, 2 * delay + 2 + 4 * scale
    r = Result("a version answering every request in 5 s is slow, not stalled",
               f"{clients} keep-alive clients for {seconds:g} s, giving up after {delay * 2:g} s",
               f"both backends of green answer after {delay:g} s, from the first request",
               workers=workers)
    blue = await FaultServer("blue").start()
    greens = [await FaultServer("green", delay=delay).start() for _ in range(2)]
    try:
        cfg = config({"shop": {"routes": ["app.test"], "session_sticky": False, "services": {
            "blue": {"weight": 0, "backends": [blue.addr]},
            "green": {"weight": 100, "backends": [g.addr for g in greens]}}}})
        async with inproc_router(cfg, workers) as srv:
            traffic = asyncio.ensure_future(load(srv.port, clients, seconds, timeout=delay * 2))
            out: set[str] = set()  # backends seen out of rotation, watched all along
            while not traffic.done():
                out |= {g.addr for g in greens if await healthy(srv.admin_port, g.addr) == 0}
                await asyncio.sleep(0.2)  # a look every 0.2 s while the traffic runs
            outcomes = await traffic
        r.sent, r.failed = len(outcomes), len(_failed(outcomes))
        r.check(not out, f"green's backends {sorted(out)} taken out of rotation as stalled")
        r.check(blue.handled == 0, f"blue served {blue.handled}: green was taken out")
        r.notes = (f"green's backends served {greens[0].handled} and {greens[1].handled}, each "
                   f"in {delay:g} s; {len(out) or 'none'} taken out")
    finally:
        await blue.stop()
        for g in greens:
            await g.stop()
    return r


# -- the guarded ramp of a version that hangs ----------------------------------------------------

async def _api(admin_port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, data, _ = await admin_call(admin_port, method, "/api/v1" + path,
                                       json.dumps(body).encode() if body is not None else b"")
    return status, json.loads(data) if data else None


async def _release(admin_port: int, green: str, ramp: dict[str, Any]) -> None:
    status, body = await _api(admin_port, "POST", "/apps/shop/release",
                              {"service": "green", "backends": [green]})
    assert status == 201, body

    async def ready() -> bool:
        _, body = await _api(admin_port, "GET", "/apps/shop/release")
        return body.get("status") == "awaiting_confirmation"
    await until(ready, 10, "the release ready")
    status, body = await _api(admin_port, "POST", "/apps/shop/release/ramp", ramp)
    assert status == 201, body


async def _rollback(admin_port: int) -> dict[str, Any] | None:
    """The history entry of the ramp's rollback, if there is one."""
    _, body = await _api(admin_port, "GET", "/history?app=shop&limit=100")
    return next((e for e in body["history"] if e["operation"] == "ramp_rollback"), None)


async def _hung_ramp(name: str, steps: list[int], hang_at: int, scale: int, workers: int,
                     interval: float = 3.0) -> Result:
    clients = 8
    r = Result(name, f"{clients} keep-alive clients giving up after {CLIENT_TIMEOUT:g} s; steps "
               f"{', '.join(f'{s}%' for s in steps)} every {interval:g} s",
               f"green hangs from step {hang_at} on", workers=workers)
    blue, green = await FaultServer("blue").start(), await FaultServer("green").start()
    try:
        cfg = config({"shop": {"routes": ["app.test"], "session_sticky": False, "services": {
            "blue": {"weight": 100, "backends": [blue.addr]}}}})
        async with inproc_router(cfg, workers) as srv:
            stop = asyncio.Event()
            traffic = asyncio.ensure_future(load(srv.port, clients, 30.0 + 10 * scale,
                                                 stop=stop))
            await until(lambda: blue.handled >= 50, 10, "traffic before the release")
            await _release(srv.admin_port, green.addr,
                           {"steps": steps, "interval": f"{interval:g}s"})
            t_hang = None
            rolled = None
            deadline = time.monotonic() + (len(steps) + 2) * interval + 5
            while time.monotonic() < deadline:
                status, body = await _api(srv.admin_port, "GET", "/apps/shop/release/ramp")
                if status == 404:
                    rolled = time.monotonic()
                    break
                if t_hang is None and body["ramp"]["step"] >= hang_at:
                    t_hang = time.monotonic()
                    green.inject("silence", 1_000_000)
                if body["ramp"]["status"] != "running":
                    break
                await asyncio.sleep(0.02)
            entry = await _rollback(srv.admin_port)
            await asyncio.sleep(CLIENT_TIMEOUT + 0.5)  # the requests green held: given up
            stop.set()
            outcomes = await traffic
        r.sent, r.failed = len(outcomes), len(_failed(outcomes))
        r.expected = r.failed  # green's share until the rollback: bounded by the checks below
        r.check(t_hang is not None, "the ramp never reached the step where green hangs")
        r.check(rolled is not None and entry is not None,
                f"not rolled back: the ramp {body.get('ramp', {}).get('status')} at step "
                f"{body.get('ramp', {}).get('step')}")
        if rolled is not None and t_hang is not None and entry is not None:
            took = rolled - t_hang
            r.check(took <= 2 * interval, f"rolled back {took:.1f} s after the hang began: "
                                          f"more than 2 steps of {interval:g} s")
            after = _failed([o for o in outcomes if o.started > rolled + 0.5])
            r.check(not after, f"{len(after)} requests failed after the rollback")
            r.notes = f"rolled back {took:.1f} s after green began hanging: {entry['reason']}"
    finally:
        await blue.stop()
        await green.stop()
    return r


async def hung_ramp(scale: int = 1, workers: int = 1) -> Result:
    return await _hung_ramp("the guarded ramp of a version that starts hanging", [10, 50, 100],
                            1, scale, workers)


async def hung_at_the_last_step(scale: int = 1, workers: int = 1) -> Result:
    return await _hung_ramp("the guarded ramp of a version that hangs at 100%", [50, 100], 2,
                            scale, workers)


# -- a ramp whose traffic is all pinned ------------------------------------------------------

async def pinned_ramp(scale: int = 1, workers: int = 1) -> Result:
    clients = 4
    r = Result("a guarded ramp whose every client was pinned before the release",
               f"{clients} clients keeping their sticky cookie", "none: the weights move no one",
               workers=workers)
    blue, green = await FaultServer("blue").start(), await FaultServer("green").start()
    try:
        cfg = config({"shop": {"routes": ["app.test"], "session_sticky": True, "services": {
            "blue": {"weight": 100, "backends": [blue.addr]}}}})
        async with inproc_router(cfg, workers) as srv:
            outcomes: list[Outcome] = []
            stop = asyncio.Event()

            async def pinned_client() -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                cookie = b""
                try:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n%s\r\n" % cookie)
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                        length = 0
                        for line in head.split(b"\r\n")[1:]:
                            k, _, v = line.partition(b":")
                            if k.lower() == b"set-cookie":
                                cookie = b"Cookie: " + v.strip().split(b";")[0] + b"\r\n"
                            elif k.lower() == b"content-length":
                                length = int(v)
                        await reader.readexactly(length)
                        outcomes.append(Outcome(t0, time.monotonic(), head.split(b" ")[1].decode()))
                        await asyncio.sleep(0.01)  # the client's pace
                finally:
                    writer.close()

            tasks = [asyncio.ensure_future(pinned_client()) for _ in range(clients)]
            await until(lambda: len(outcomes) >= 40, 10, "the clients pinned")
            await _release(srv.admin_port, green.addr, {"steps": [10, 100], "interval": "0.5s",
                                                        "max_waits": 2})

            async def ended() -> dict[str, Any] | None:
                _, body = await _api(srv.admin_port, "GET", "/apps/shop/release/ramp")
                return body["ramp"] if body["ramp"]["status"] != "running" else None
            ramp = await until(ended, 10, "the ramp no longer running")
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            ctl = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "admin.ctl", "--url", f"http://127.0.0.1:{srv.admin_port}",
                "release", "status", "shop", cwd=ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
            out, err = await ctl.communicate()
        r.sent, r.failed = len(outcomes), sum(1 for o in outcomes if o.result != "200")
        reason = ramp.get("reason") or ""
        r.check(ramp.get("status") == "paused", f"the ramp is {ramp.get('status')}, not paused")
        r.check("pinned" in reason and "cannot progress" in reason,
                f"the ramp's status does not say its traffic is pinned: {reason!r}")
        text = " ".join(out.decode().split())
        r.check("cannot progress while those pins last" in text,
                f"routerctl release status does not say so: {text[-400:]!r} {err.decode()[-200:]}")
        r.check(green.handled == 0, f"green got {green.handled} requests")
        r.notes = f"paused: {reason}"
    finally:
        await blue.stop()
        await green.stop()
    return r


HANGS: list[Callable[[int, int], Any]] = [hung_only_backend, hung_ramp, hung_at_the_last_step,
                                          black_hole, slow_not_stalled, pinned_ramp]
