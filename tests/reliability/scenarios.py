"""The reliability scenarios: each runs real routers and backends on loopback under a bounded
load, injects faults, and returns a ``Result`` with exact counts and the problems found.

The tests run them small (``scale=1``); ``python3 -m benchmarks.reliability`` runs them bigger
and prints the table. A scenario never judges speed, only counts; the one timing bound (504
within 10% of the configured response timeout) is the documented one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .faultserver import FaultServer
from .harness import (ROOT, KeepAliveClient, app, config, free_port, http_status, inproc_router,
                      metric_sum, metrics, router_process, until)


@dataclass
class Result:
    scenario: str
    load: str
    faults: str
    sent: int = 0
    failed: int = 0
    expected: int = 0  # failures the contract allows (e.g. POSTs a dying backend had read)
    workers: int = 1  # the router's --workers
    notes: str = ""
    problems: list[str] = field(default_factory=list)

    def check(self, cond: bool, what: str) -> None:
        if not cond:
            self.problems.append(what)

    @property
    def ok(self) -> bool:
        return not self.problems and self.failed == self.expected


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (method, status or error)
    elapsed: list[float] = field(default_factory=list)
    sent_by: Counter[str] = field(default_factory=Counter)
    failed_at: list[tuple[float, str, str]] = field(default_factory=list)  # (sent at, method, id)

    def failed(self, method: str | None = None) -> int:
        return sum(1 for m, _ in self.failures if method is None or m == method)


_ids = itertools.count(1)

Request = tuple[str, str, bytes, dict[str, str]]


def get(path: str = "/") -> Callable[[int], Request]:
    return lambda i: ("GET", path, b"", {})


def mixed(post_every: int = 3) -> Callable[[int], Request]:
    """GETs and about one POST in ``post_every`` (a fixed pseudo-random mix, so POSTs also
    land on reused connections), each POST with a unique X-Test-Id."""
    def make(i: int) -> Request:
        if (i * 2654435761) % 1000 < 1000 // post_every:
            return ("POST", "/", b"x" * 100, {"X-Test-Id": str(next(_ids))})
        return ("GET", "/", b"", {})
    return make


async def drive(port: int, clients: int, per_client: int, make: Callable[[int], Request],
                deadline: float = 40.0, pause: float = 0.0, host: str = "app.test",
                stop: asyncio.Event | None = None, tally: Tally | None = None) -> Tally:
    """``clients`` keep-alive connections, each sending ``per_client`` requests in turn.

    Bounded in count and in time (``deadline`` seconds); a failed request (status other than
    200, reset, short body) is tallied and the client reconnects for the next one. ``tally``:
    counted there as they end (a caller can watch the load run).
    """
    tally = tally if tally is not None else Tally()
    end = time.monotonic() + deadline

    async def one(c: int) -> None:
        client = KeepAliveClient(port, host)
        try:
            for i in range(per_client):
                if time.monotonic() > end or (stop is not None and stop.is_set()):
                    return
                method, path, body, headers = make(c * per_client + i)
                tally.sent += 1
                tally.sent_by[method] += 1
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(max(1.0, end - time.monotonic())):
                        status, _ = await client.request(method, path, body, headers)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                    tally.failures.append((method, type(e).__name__))
                    tally.failed_at.append((t0, method, headers.get("X-Test-Id", "")))
                    client.close()
                    continue
                tally.elapsed.append(time.monotonic() - t0)
                if status == 200:
                    tally.ok += 1
                else:
                    tally.failures.append((method, str(status)))
                    tally.failed_at.append((t0, method, headers.get("X-Test-Id", "")))
                if pause:
                    await asyncio.sleep(pause)  # the load's pace
        finally:
            client.close()

    await asyncio.gather(*(one(c) for c in range(clients)))
    return tally


async def _errors(admin_port: int, reason: str, backend: str | None = None) -> float:
    m = await metrics(admin_port)
    labels = {"reason": reason}
    if backend:
        labels["backend"] = backend
    return metric_sum(m, "router_upstream_errors_total", **labels)


async def _retries(admin_port: int) -> float:
    return metric_sum(await metrics(admin_port), "router_retries_total")


# -- item 2: failing backends ----------------------------------------------------------------------
# Passive health off: these scenarios count every injected fault on one backend, and
# ejecting it would change where the next requests go (item 3 tests that on its own).
NO_PASSIVE = {"passive_health": {"failures": 0}}


async def malformed_502(scale: int = 1, workers: int = 1) -> Result:
    n, k = 60 * scale, 5 * scale
    r = Result("malformed status line -> 502", f"{n} GETs, 4 keep-alive clients",
               f"{k} malformed responses")
    r.workers = workers
    be = await FaultServer("a").start()
    try:
        async with inproc_router(config({"shop": app([be.addr])}, **NO_PASSIVE), workers) as srv:
            be.inject("malformed", k)
            t = await drive(srv.port, 4, n // 4, get())
            r.sent, r.failed, r.expected = t.sent, t.failed(), k
            r.check(all(s == "502" for _, s in t.failures), f"failures not all 502: {t.failures}")
            r.check(be.pending == 0, "not every fault was used")
            got = await _errors(srv.admin_port, "protocol", be.addr)
            r.check(got == k, f"router_upstream_errors_total{{reason=protocol}} = {got}, want {k}")
    finally:
        await be.stop()
    return r


async def silence_504(scale: int = 1, workers: int = 1, timeout: float = 1.0) -> Result:
    k = 4 * scale
    n = 40 * scale
    r = Result("silent backend -> 504", f"{k} silent requests beside {n} GETs",
               f"{k} silences, response timeout {timeout:g} s")
    r.workers = workers
    be = await FaultServer("a").start()
    try:
        cfg = config({"shop": app([be.addr])}, timeouts={"response": f"{timeout}s"}, **NO_PASSIVE)
        async with inproc_router(cfg, workers) as srv:
            async def silent(i: int) -> tuple[list[int], float]:
                # Started a quarter timeout apart: each deadline is its own, not its batch's.
                await asyncio.sleep(i * timeout / 4)
                client = KeepAliveClient(srv.port)
                t0 = time.monotonic()
                try:
                    status, _ = await asyncio.wait_for(client.request("GET", "/fault/silence"),
                                                       timeout * 3)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    status = 0
                client.close()
                return [status], time.monotonic() - t0

            silent_runs = asyncio.gather(*(silent(i) for i in range(k)))
            t = await drive(srv.port, 4, n // 4, get())
            runs = await silent_runs
            r.sent = t.sent + k
            r.failed = t.failed() + sum(1 for st, _ in runs if st != [200])
            r.expected = k
            r.check([st for st, _ in runs] == [[504]] * k, f"silent requests got {runs}")
            # 504 within 10% of the configured timeout. The timer starts when the
            # request is written to the backend, so the client sees a hair more: loopback
            # connect and one event-loop turn, well under the 10% allowance.
            late = [round(e, 3) for _, e in runs if not 0.9 * timeout <= e <= 1.1 * timeout]
            r.check(not late, f"504 outside {0.9 * timeout:g}..{1.1 * timeout:g} s: {late}")
            r.notes = "504 after " + ", ".join(f"{e:.3f}" for _, e in runs) + " s"
            got = await _errors(srv.admin_port, "timeout", be.addr)
            r.check(got == k, f"router_upstream_errors_total{{reason=timeout}} = {got}, want {k}")
    finally:
        await be.stop()
    return r


async def midbody_abort(scale: int = 1, workers: int = 1) -> Result:
    k = 5 * scale
    n = 40 * scale
    r = Result("backend dies mid-body -> client aborted", f"{k} broken downloads beside {n} GETs",
               f"{k} resets after 100 of 1000 body bytes")
    r.workers = workers
    be = await FaultServer("a").start()
    try:
        async with inproc_router(config({"shop": app([be.addr])}, **NO_PASSIVE), workers) as srv:
            async def broken() -> tuple[bool, int]:
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                writer.write(b"GET /fault/midbody HTTP/1.1\r\nHost: app.test\r\n\r\n")
                data = b""
                closed = False
                try:
                    async with asyncio.timeout(5):
                        while True:
                            chunk = await reader.read(65536)
                            if not chunk:
                                closed = True
                                break
                            data += chunk
                except ConnectionResetError:
                    closed = True
                except TimeoutError:
                    pass
                writer.close()
                head, _, body = data.partition(b"\r\n\r\n")
                return closed, len(body)

            broken_runs = asyncio.gather(*(broken() for _ in range(k)))
            t = await drive(srv.port, 4, n // 4, get())
            runs = await broken_runs
            r.sent = t.sent + k
            # A broken download is a failure the client can see: closed before 1000 bytes.
            r.failed = t.failed() + sum(1 for closed, size in runs if closed and size < 1000)
            r.expected = k
            r.check(all(c and s < 1000 for c, s in runs), f"not aborted: {runs}")
            got = await _errors(srv.admin_port, "reset", be.addr)
            r.check(got == k, f"router_upstream_errors_total{{reason=reset}} = {got}, want {k}")
    finally:
        await be.stop()
    return r


async def reset_retry(scale: int = 1, workers: int = 1) -> Result:
    n, k = 120 * scale, 8 * scale
    r = Result("reset before headers -> retry", f"{n} requests (1 POST in 3), 2 backends",
               f"{k} resets on backend a")
    r.workers = workers
    a, b = await FaultServer("a").start(), await FaultServer("b").start()
    try:
        async with inproc_router(config({"shop": app([a.addr, b.addr])}, **NO_PASSIVE), workers) as srv:
            a.inject("reset", k)
            t = await drive(srv.port, 4, n // 4, mixed())
            reset_posts = sum(1 for s in a.seen if s.fault == "reset" and s.method == "POST")
            r.sent, r.failed = t.sent, t.failed()
            # A POST whose bytes reached the backend is not replayed: its 502 is due.
            r.expected = reset_posts
            r.check(t.failed("GET") == 0, f"GETs failed: {t.failures}")
            r.check(all(s == "502" for _, s in t.failures), f"failures not 502: {t.failures}")
            r.check(a.pending == 0, "not every fault was used")
            got = await _errors(srv.admin_port, "reset", a.addr)
            r.check(got == k, f"router_upstream_errors_total{{reason=reset}} = {got}, want {k}")
            retries = await _retries(srv.admin_port)
            r.check(retries == k - reset_posts, f"router_retries_total = {retries}, want {k - reset_posts}")
            _no_duplicate_posts(r, [a, b])
            r.notes = f"{k - reset_posts} GETs retried, {reset_posts} POSTs answered 502"
    finally:
        await a.stop()
        await b.stop()
    return r


def _no_duplicate_posts(r: Result, backends: list[FaultServer]) -> None:
    ids = Counter(i for be in backends for i in be.ids())
    dup = [i for i, c in ids.items() if c > 1]
    r.check(not dup, f"POSTs handled twice: {dup}")


async def keepalive_race(scale: int = 1, workers: int = 1) -> Result:
    n, k = 150 * scale, 10 * scale
    r = Result("keep-alive race (backend closes a reused connection)",
               f"{n} requests (1 POST in 3), 1 backend, 5 keep-alive clients",
               f"{k} requests dropped unanswered on reused connections")
    r.workers = workers
    be = await FaultServer("a").start()
    try:
        async with inproc_router(config({"shop": app([be.addr])}, **NO_PASSIVE), workers) as srv:
            be.inject("drop", k)
            t = await drive(srv.port, 5, n // 5, mixed())
            dropped_posts = sum(1 for s in be.dropped_seen if s.method == "POST")
            r.sent, r.failed = t.sent, t.failed()
            # A dropped POST may have been read: not replayed, so its 502 is due.
            r.expected = dropped_posts
            r.check(t.failed("GET") == 0, f"GETs failed: {t.failures}")
            r.check(be.dropped == k, f"{be.dropped} drops happened, want {k}")
            got = await _errors(srv.admin_port, "reset", be.addr)
            r.check(got == k, f"router_upstream_errors_total{{reason=reset}} = {got}, want {k}")
            _no_duplicate_posts(r, [be])
            handled_posts = sum(1 for s in be.seen if s.method == "POST")
            r.check(handled_posts + dropped_posts == t.sent_by["POST"],
                    f"POSTs handled {handled_posts} + dropped {dropped_posts} != sent {t.sent_by['POST']}")
            r.notes = f"{k - dropped_posts} GETs retried on a new connection, {dropped_posts} POSTs 502"
    finally:
        await be.stop()
    return r


async def keepalive_close_after(scale: int = 1, workers: int = 1) -> Result:
    n = 150 * scale
    r = Result("backend closes keep-alive connections after 3 requests",
               f"{n} requests (1 POST in 3), 5 keep-alive clients", "every 3rd response closes")
    r.workers = workers
    be = await FaultServer("a", close_after=3).start()
    try:
        async with inproc_router(config({"shop": app([be.addr])}, **NO_PASSIVE), workers) as srv:
            t = await drive(srv.port, 5, n // 5, mixed())
            posts_sent = t.sent_by["POST"]
            handled_posts = sum(1 for s in be.seen if s.method == "POST")
            r.sent, r.failed = t.sent, t.failed()
            # A POST can fail only if it met a closing connection, and then it was never handled.
            r.expected = posts_sent - handled_posts
            r.check(t.failed("GET") == 0, f"GETs failed: {t.failures}")
            _no_duplicate_posts(r, [be])
            r.notes = f"{be.connections} backend connections"
    finally:
        await be.stop()
    return r


BACKEND_FAULTS: list[Callable[[int], Awaitable[Result]]] = [
    malformed_502, silence_504, midbody_abort, reset_retry, keepalive_race, keepalive_close_after,
]


# -- item 3: passive health -------------------------------------------------------------------------

async def _healthy(admin_port: int, addr: str) -> float:
    return metric_sum(await metrics(admin_port), "router_backend_healthy", backend=addr)


async def passive_eject_return(scale: int = 1, workers: int = 1) -> Result:
    n = 30 * scale
    r = Result("passive health: eject after 3 failures, back after cooldown",
               f"{2 * n} sequential GETs, 2 backends", "backend a down, then up again")
    r.workers = workers
    port_a = free_port()
    addr_a = f"127.0.0.1:{port_a}"
    b = await FaultServer("b").start()
    a = FaultServer("a")
    try:
        cfg = config({"shop": app([addr_a, b.addr])},
                     passive_health={"failures": 3, "cooldown": "1s"})
        async with inproc_router(cfg, workers) as srv:
            t1 = await drive(srv.port, 1, n, get())
            refused = await _errors(srv.admin_port, "connect", addr_a)
            r.check(refused == 3, f"{refused} connects to a while it was down, want 3 then ejected")
            r.check(await _healthy(srv.admin_port, addr_a) == 0, "a not shown unhealthy while ejected")
            await a.start(port_a)
            t0 = time.monotonic()
            await until(lambda: srv.ctx.table.apps["shop"].services[0].backends[0].healthy,
                           timeout=5, what="a back after its cooldown")
            back_after = time.monotonic() - t0
            t2 = await drive(srv.port, 1, n, get())
            r.check(a.handled > 0, "a got no requests after its cooldown")
            r.check(await _healthy(srv.admin_port, addr_a) == 1, "a not shown healthy again")
            r.sent, r.failed = t1.sent + t2.sent, t1.failed() + t2.failed()
            r.notes = (f"3 failed connects (all retried on b), a back {back_after:.1f} s after it "
                       f"came up (cooldown 1 s), then served {a.handled} of {t2.sent}")
    finally:
        await a.stop()
        await b.stop()
    return r


def _spawn_backend(name: str, delay: float, log: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.faultserver", "--name", name,
                             "--delay", str(delay), "--log", log],
                            cwd=ROOT, stdout=subprocess.PIPE)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    return proc, f"127.0.0.1:{int(line)}"


async def sigkill_backend(scale: int = 1, workers: int = 1) -> Result:
    clients, per = 8, 60 * scale
    r = Result("backend SIGKILLed under load", f"{clients * per} requests (1 POST in 3), "
               f"{clients} clients, 2 backends, 20 ms each", "SIGKILL of backend a after 0.5 s")
    r.workers = workers
    tmp = tempfile.mkdtemp(prefix="rel-kill-")
    log = os.path.join(tmp, "a.log")
    proc, addr_a = _spawn_backend("a", 0.02, log)
    b = await FaultServer("b", delay=0.02).start()
    try:
        cfg = config({"shop": app([addr_a, b.addr])},
                     passive_health={"failures": 3, "cooldown": "30s"})
        async with inproc_router(cfg, workers) as srv:
            load = asyncio.ensure_future(drive(srv.port, clients, per, mixed()))
            await asyncio.sleep(0.5)  # time is the subject: the kill comes 0.5 s into the load
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            t = await load
        with open(log) as f:
            a_ids = [line.split()[1] for line in f if line.startswith("POST ")]
        failed_posts = [i for _, m, i in t.failed_at if m == "POST"]
        r.sent, r.failed = t.sent, t.failed()
        r.expected = len(failed_posts)
        r.check(t.failed("GET") == 0, f"GETs failed: {t.failures}")
        # Each failed POST was in flight on a when it died: sent to a (which may or may not have
        # read, let alone logged it, before SIGKILL), never replayed to b.
        b_ids = set(i.decode() for i in b.ids())
        r.check(all(i not in b_ids for i in failed_posts),
                f"failed POSTs that b handled too: {failed_posts}")
        r.check(len(failed_posts) <= clients, "more failed POSTs than requests in flight")
        dup = set(a_ids) & b_ids
        r.check(not dup, f"POSTs handled by both backends: {dup}")
        r.notes = f"{len(failed_posts)} POSTs were in flight on a; a served {len(a_ids)} POSTs before"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await b.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return r


# -- item 4: slow and many clients ---------------------------------------------------------------------

async def slowloris(scale: int = 1, workers: int = 1) -> Result:
    slow, normal, per = 400, 50, 10 * scale
    r = Result("slowloris: slow heads and stalled bodies",
               f"{slow} slow connections + {normal} normal clients x {per} GETs",
               f"{slow // 2} heads at 1 byte/0.3 s, {slow // 2} bodies stalled")
    r.workers = workers
    be = await FaultServer("a").start()
    try:
        cfg = config({"shop": app([be.addr])},
                     timeouts={"client_header": "2s", "client_body": "1s"})
        async with inproc_router(cfg, workers) as srv:
            opened: list[None] = []  # one per slow connection open

            async def slow_head() -> str:
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                opened.append(None)
                writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: ")
                try:
                    async with asyncio.timeout(10):
                        while True:
                            try:
                                data = await asyncio.wait_for(reader.read(100), 0.3)
                            except TimeoutError:
                                writer.write(b"a")
                                continue
                            return data[:12].decode("latin-1")
                except (TimeoutError, ConnectionError):
                    return "no answer"
                finally:
                    writer.close()

            async def stalled_body() -> str:
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                opened.append(None)
                writer.write(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n"
                             + b"x" * 10)
                try:
                    async with asyncio.timeout(10):
                        data = await reader.read(100)
                        return data[:12].decode("latin-1")
                except (TimeoutError, ConnectionError):
                    return "no answer"
                finally:
                    writer.close()

            slow_tasks = asyncio.gather(*[slow_head() for _ in range(slow // 2)],
                                        *[stalled_body() for _ in range(slow // 2)])
            await until(lambda: len(opened) == slow // 2 * 2, 10, "the slow connections open")
            t = await drive(srv.port, normal, per, get())
            answers = await slow_tasks
            heads, bodies = answers[: slow // 2], answers[slow // 2:]
            r.sent, r.failed = t.sent, t.failed()
            r.check(heads == ["HTTP/1.1 408"] * len(heads), f"slow heads: {Counter(heads)}")
            r.check(bodies == ["HTTP/1.1 408"] * len(bodies), f"stalled bodies: {Counter(bodies)}")
            posts = sum(1 for s in be.seen if s.method == "POST")
            r.check(posts == 0, f"the backend handled {posts} incomplete POSTs")
            await until(lambda: len(srv.ctx.connections) == 0, 5, "slow connections closed")
            r.notes = f"{len(heads)} heads and {len(bodies)} bodies got 408; 0 reached a backend whole"
    finally:
        await be.stop()
    return r


async def many_idle_connections(scale: int = 1, workers: int = 1, nofile: int = 512) -> Result:
    idle = 2000 * scale
    r = Result("many idle connections, low RLIMIT_NOFILE",
               f"{idle} idle connections to a router with {nofile} file descriptors",
               "file-descriptor exhaustion")
    r.workers = workers
    be = await FaultServer("a").start()
    conns: list[asyncio.StreamWriter] = []
    try:
        cfg = config({"shop": app([be.addr])})
        async with router_process(cfg, nofile=nofile, workers=workers) as rp:
            async def opener(k: int) -> None:
                for _ in range(k):
                    try:
                        _, w = await asyncio.open_connection("127.0.0.1", rp.port)
                        conns.append(w)
                    except OSError:
                        pass

            await asyncio.gather(*(opener(idle // 100) for _ in range(100)))
            await asyncio.sleep(1.0)  # time is the subject: the router holds the flood a while
            alive = rp.proc.poll() is None
            health = await http_status(rp.admin_port, "/healthz")
            m = await metrics(rp.admin_port) if health == 200 else {}
            kept = sum(1 for w in conns if not w.transport.is_closing()
                       and not w.transport.get_extra_info("socket") is None)
            r.sent = idle + 2
            r.check(alive, "the router process died")
            r.check(health == 200, f"admin /healthz answered {health}")
            r.check("router_config_generation" in m, "admin /metrics did not answer")
            for w in conns:
                w.close()
            conns.clear()
            # Serving again once it has seen the closes and has file descriptors again.
            await until(lambda: _status_is(rp.port, 200), 10, "an answer after the flood")
            statuses = [await http_status(rp.port, "/", "app.test") for _ in range(5)]
            r.check(statuses == [200] * 5, f"after the flood: {statuses}")
            r.check(rp.proc.poll() is None, "the router process died")
            r.sent += 5
            r.failed = sum(1 for s in statuses if s != 200) + (health != 200)
            cap = max(16, (nofile - 128) // 2)
            r.notes = f"connection cap {cap} from RLIMIT_NOFILE {nofile}; {len(conns) or kept} opened"
    finally:
        for w in conns:
            w.close()
        await be.stop()
    return r


# -- item 5: restarts ------------------------------------------------------------------------------------

async def sigterm_under_load(scale: int = 1, workers: int = 1, grace: float = 5.0) -> Result:
    clients, per = 10, 200 * scale
    r = Result("SIGTERM under load", f"{clients} clients (1 POST in 3), backend 100 ms each",
               f"SIGTERM after 1 s, grace {grace:g} s")
    r.workers = workers
    be = await FaultServer("a", delay=0.1).start()
    try:
        cfg = config({"shop": app([be.addr])}, timeouts={"grace": f"{grace}s"})
        async with router_process(cfg, workers=workers) as rp:
            # Clients stop starting requests at SIGTERM, as a load balancer that watches
            # readiness would; every request started before it must complete.
            stop = asyncio.Event()
            load = asyncio.ensure_future(drive(rp.port, clients, per, mixed(), deadline=30,
                                               stop=stop))
            await asyncio.sleep(1.0)  # time is the subject: SIGTERM comes 1 s into the load
            t_term = time.monotonic()
            stop.set()
            rp.proc.send_signal(signal.SIGTERM)
            ready = 200
            while ready == 200 and time.monotonic() - t_term < 0.5:
                ready = await http_status(rp.admin_port, "/readyz", timeout=1)
            ready_after = time.monotonic() - t_term
            t = await load
            code = await asyncio.get_running_loop().run_in_executor(None, rp.proc.wait, 30)
            took = time.monotonic() - t_term
        lost = [(m, i) for at, m, i in t.failed_at if at < t_term]
        refused = [(m, i) for at, m, i in t.failed_at if at >= t_term]
        r.sent, r.failed = t.sent, t.failed()
        r.expected = len(refused)  # sent after SIGTERM to a closed listener: refused, not lost
        r.check(ready in (503, 0), f"/readyz still answered {ready} 0.5 s after SIGTERM")
        r.check(not lost, f"requests sent before SIGTERM failed: {lost}")
        r.check(code == 0, f"exit code {code}")
        r.check(took <= grace + 2, f"exit {took:.1f} s after SIGTERM, grace {grace:g} s")
        handled = sum(1 for s in be.seen)
        r.check(handled == t.ok, f"backend handled {handled}, clients got {t.ok} answers")
        r.notes = (f"readyz {ready or 'refused'} after {ready_after * 1000:.0f} ms; {t.sent} requests "
                   f"started before SIGTERM all answered; exit {code} after {took:.1f} s")
    finally:
        await be.stop()
    return r


async def sighup_under_load(scale: int = 1, workers: int = 1) -> Result:
    clients, per = 10, 150 * scale
    r = Result("SIGHUP and apply under load", f"{clients} clients x {per} (1 POST in 3)",
               "3 weight changes: the file written, SIGHUP (settings only), routerctl apply")
    r.workers = workers
    a, b = await FaultServer("a", delay=0.005).start(), await FaultServer("b", delay=0.005).start()
    try:
        def cfg(wa: int, wb: int) -> dict:
            return config({"shop": {"routes": ["app.test"], "session_sticky": False, "services": {
                "blue": {"weight": wa, "backends": [a.addr]},
                "green": {"weight": wb, "backends": [b.addr]}}}})

        async with router_process(cfg(100, 0), workers=workers) as rp:
            tally = Tally()
            load = asyncio.ensure_future(drive(rp.port, clients, per, mixed(), deadline=30,
                                               tally=tally))
            gen = 1
            for i, (wa, wb) in enumerate(((50, 50), (0, 100), (100, 0)), 1):
                answered = tally.ok + len(tally.failures)
                await until(lambda: tally.ok + len(tally.failures) >= answered + 50, 10,  # noqa: B023
                            "traffic before the change")
                rp.write(cfg(wa, wb))
                rp.proc.send_signal(signal.SIGHUP)
                await until(lambda: rp.log().count("reload of") >= i, 10, "the reload")  # noqa: B023
                now = metric_sum(await metrics(rp.admin_port), "router_config_generation")
                r.check(now == gen, f"SIGHUP changed the routing state: generation {now}")
                ctl = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "admin.ctl", "--url", f"http://127.0.0.1:{rp.admin_port}",
                    "apply", rp.path, cwd=ROOT, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
                _, err = await ctl.communicate()
                r.check(ctl.returncode == 0, f"routerctl apply: {err.decode().strip()}")
                gen += 1
                await _wait_generation(rp.admin_port, gen)
            t = await load
        r.sent, r.failed = t.sent, t.failed()
        r.check(a.handled > 0 and b.handled > 0, "both services served")
        r.check(a.handled + b.handled == t.ok, "backends handled a different number than answered")
        _no_duplicate_posts(r, [a, b])
        r.notes = f"blue served {a.handled}, green {b.handled}"
    finally:
        await a.stop()
        await b.stop()
    return r


async def _wait_generation(admin_port: int, gen: int, timeout: float = 10) -> None:
    async def reached() -> bool:
        return metric_sum(await metrics(admin_port), "router_config_generation") >= gen
    await until(reached, timeout, f"generation {gen}")


async def _status_is(port: int, status: int) -> bool:
    return await http_status(port, "/", "app.test") == status


PASSIVE_HEALTH = [passive_eject_return, sigkill_backend]
SLOW_CLIENTS = [slowloris, many_idle_connections]
RESTARTS = [sigterm_under_load, sighup_under_load]
ALL = BACKEND_FAULTS + PASSIVE_HEALTH + SLOW_CLIENTS + RESTARTS
