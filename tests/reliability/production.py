"""Scenarios of the production shape: ``--workers N``, one router per port, frozen backends.

Each runs the real ``router serve`` process (or, for the stalled backend, the router in this
process) against real backends on loopback, injects one fault, and returns a ``Result`` with
exact counts and the times that matter: how long an admin change waited for a hung worker, how
long until the watchdog replaced it, how long a frozen backend kept getting requests.

``PRODUCTION`` lists each scenario with the worker counts it runs with.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import yaml

from tests.processes import stopped, until, worker_pids

from .faultserver import FaultServer
from .harness import (ROOT, RouterProc, app, config, free_port, http_status, metric_sum, metrics,
                      router_process)
from .scenarios import Result, _errors, _spawn_backend, drive, get

# The router's bounds these scenarios hold it to (router/process/supervisor.py, docs/workers.md).
PING_INTERVAL = 1.0
WORKER_TIMEOUT = 2.0  # timeouts.worker, the default
STATS_TIMEOUT = 1.0
# A hung worker: an admin change answers within WORKER_TIMEOUT (+ the kill); the watchdog
# kills it within PING_INTERVAL + WORKER_TIMEOUT; nothing it accepted waits longer than that.
# Each bound here has a second on top for a loaded machine's scheduling.
ADMIN_BOUND = WORKER_TIMEOUT + 1.0
STRANDED_BOUND = PING_INTERVAL + WORKER_TIMEOUT + 1.0


def client_connections(pid: int, port: int) -> int:
    """Established TCP connections to local ``port`` that process ``pid`` holds."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "01" and cols[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def busiest_worker(master: int, port: int) -> int:
    """The worker holding the most client connections (the one whose hang strands most)."""
    return max(worker_pids(master), key=lambda pid: client_connections(pid, port))


async def admin_call(port: int, method: str, path: str, body: bytes = b"",
                     timeout: float = 10.0) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one admin request; status 0 if no answer within ``timeout``."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (method.encode(), path.encode(), len(body), body))
            raw = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, b"", time.monotonic() - t0
    head, _, data = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), data, time.monotonic() - t0


async def scrape(admin_port: int, timeout: float = 10.0) -> tuple[dict[str, float], float]:
    t0 = time.monotonic()
    async with asyncio.timeout(timeout):
        m = await metrics(admin_port)
    return m, time.monotonic() - t0


@dataclass
class Outcome:
    started: float
    ended: float
    result: str  # "200", another status, or the error's name


async def keepalive_load(port: int, clients: int, stop: asyncio.Event, pause: float = 0.01,
                         limit: float = 60.0, timeout: float | None = None) -> list[Outcome]:
    """``clients`` keep-alive connections sending GETs until ``stop`` (or ``limit`` seconds);
    every request's start, end and outcome. A client reconnects after a failure, and gives up
    on a request after ``timeout`` (``TimeoutError``), as browsers do."""
    out: list[Outcome] = []
    end = time.monotonic() + limit

    async def one() -> None:
        from .harness import KeepAliveClient

        client = KeepAliveClient(port)
        try:
            while not stop.is_set() and time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(min(end - t0, timeout or end - t0)):
                        status, _ = await client.request("GET", "/")
                    result = str(status)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                    result = type(e).__name__
                    client.close()
                out.append(Outcome(t0, time.monotonic(), result))
                await asyncio.sleep(pause)  # the load's pace
        finally:
            client.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return out


async def healthy(admin_port: int, addr: str) -> float | None:
    """The backend's ``router_backend_healthy`` (None: no series, the backend is unchecked)."""
    for k, v in (await metrics(admin_port)).items():
        if k.startswith("router_backend_healthy{") and f'backend="{addr}"' in k:
            return v
    return None


async def replaced(rp: RouterProc, victim: int, workers: int) -> bool:
    """Whether ``victim`` is gone and ``workers`` workers serve again."""
    now = worker_pids(rp.proc.pid)
    if victim in now or len(now) != workers:
        return False
    return metric_sum((await scrape(rp.admin_port))[0], "router_workers_up") == workers


def _two_services(blue: str, green: str, **top: object) -> dict:
    return config({"shop": {"routes": ["app.test"], "session_sticky": False, "services": {
        "blue": {"weight": 100, "backends": [blue]},
        "green": {"weight": 0, "backends": [green]}}}}, **top)


# -- passive health across workers ---------------------------------------------------------------

async def passive_eject_workers(scale: int = 1, workers: int = 2) -> Result:
    n = 40 * scale
    r = Result("passive health across workers: a refusing backend, a new connection per request",
               f"{2 * n} GETs, each on a new connection", "backend a refuses connections",
               workers=workers)
    addr_a = f"127.0.0.1:{free_port()}"
    b = await FaultServer("b").start()
    try:
        cfg = config({"shop": app([addr_a, b.addr])},
                     passive_health={"failures": 3, "cooldown": "60s"})
        async with router_process(cfg, workers=workers) as rp:
            first = [await http_status(rp.port, "/", "app.test") for _ in range(n)]
            refused = await _errors(rp.admin_port, "connect", addr_a)
            r.check(await healthy(rp.admin_port, addr_a) == 0,
                    "a not shown unhealthy (router_backend_healthy) after its failures")
            # Each worker counts its own failures and reports them; the master ejects at the
            # third overall and tells every worker (3 to 5 attempts in our runs: another worker
            # may try again before the decision reaches it). Whatever the master's delay, a
            # worker stops by itself at its own third: never more than 3 per worker.
            r.check(3 <= refused <= 3 * workers,
                    f"{refused} connects to a, want 3 to {3 * workers}")
            then = [await http_status(rp.port, "/", "app.test") for _ in range(n)]
            after = await _errors(rp.admin_port, "connect", addr_a)
            r.check(after == refused, f"{after - refused} connects to a after it was ejected")
            statuses = first + then
            r.sent, r.failed = len(statuses), sum(1 for s in statuses if s != 200)
            r.notes = (f"{refused:.0f} connects to a (every one retried on b), then none in {n} "
                       f"more requests; b served {b.handled}")
    finally:
        await b.stop()
    return r


# -- a hung worker ----------------------------------------------------------------------------------

async def hung_worker(scale: int = 1, workers: int = 2) -> Result:
    clients = 8
    r = Result("a worker stopped with SIGSTOP under load", f"{clients} keep-alive clients, "
               "fresh connections, an admin change, scrapes", "SIGSTOP of one worker, twice",
               workers=workers)
    blue, green = await FaultServer("blue").start(), await FaultServer("green").start()
    frozen: list[int] = []
    try:
        cfg = _two_services(blue.addr, green.addr, timeouts={"worker": f"{WORKER_TIMEOUT:g}s"})
        async with router_process(cfg, workers=workers) as rp:
            stop = asyncio.Event()
            load = asyncio.ensure_future(keepalive_load(rp.port, clients, stop))
            await until(lambda: sum(client_connections(pid, rp.port)
                                    for pid in worker_pids(rp.proc.pid)) == clients,
                        10, "every client connected")
            pids = worker_pids(rp.proc.pid)
            r.check(len(pids) == workers, f"{len(pids)} workers, want {workers}")
            victim = busiest_worker(rp.proc.pid, rp.port)
            held = client_connections(victim, rp.port)
            t_stop = time.monotonic()
            os.kill(victim, signal.SIGSTOP)
            frozen.append(victim)

            # 1. An admin change: answered once every running worker has it, within the bound.
            status, body, took = await admin_call(
                rp.admin_port, "PUT", "/api/v1/apps/shop/weights", b'{"blue": 0, "green": 100}')
            r.check(status == 200, f"weights change answered {status} {body[:200]!r}")
            r.check(took <= ADMIN_BOUND, f"weights change took {took:.2f} s, bound {ADMIN_BOUND} s")
            # ... and from then on every worker routes by the new weights, on new connections
            # (none of which waits for the stopped worker) as on old ones.
            blue_then = blue.handled
            fresh = [await http_status(rp.port, "/", "app.test", timeout=STRANDED_BOUND)
                     for _ in range(20)]
            r.check(fresh == [200] * 20, f"new connections after the change: {Counter(fresh)}")

            # 2. /metrics within its timeout, saying how many workers serve.
            m, took_m = await scrape(rp.admin_port)
            r.check(took_m <= STATS_TIMEOUT + 1, f"/metrics took {took_m:.2f} s")
            r.check("router_workers_up" in m, "no router_workers_up in /metrics")
            ready = await http_status(rp.admin_port, "/readyz")
            r.check(ready == 200, f"/readyz {ready} while the other worker serves")

            # 3. Replaced: a new worker serves, the stopped one is gone.
            await until(lambda: replaced(rp, victim, workers), 30, "the stopped worker replaced")
            t_first = time.monotonic() - t_stop
            r.check(blue.handled == blue_then,
                    f"{blue.handled - blue_then} requests went to blue after its weight became 0")

            # 4. The watchdog alone (no admin call): stop another worker and wait.
            victim2 = busiest_worker(rp.proc.pid, rp.port)
            held2 = client_connections(victim2, rp.port)
            t_stop2 = time.monotonic()
            os.kill(victim2, signal.SIGSTOP)
            frozen.append(victim2)

            await until(lambda: replaced(rp, victim2, workers), 30,
                        "the second stopped worker replaced by the watchdog")
            t_second = time.monotonic() - t_stop2
            served = green.handled
            await until(lambda: green.handled >= served + 20, 10, "traffic after the replacement")
            stop.set()
            outcomes = await load
            m, _ = await scrape(rp.admin_port)
            restarts = metric_sum(m, "router_worker_restarts_total", reason="hung")
            r.check(restarts == 2, f"router_worker_restarts_total{{reason=hung}} = {restarts}, want 2")

        # The clients whose connection a stopped worker held lose the request in flight when it
        # is killed (the connection is reset): at most one per client and stop, never later
        # than the bound. An error status, or a longer wait, is a failure the design must not
        # have.
        failed = [o for o in outcomes if o.result != "200"]
        resets = [o for o in failed if not o.result.isdigit()]
        late = [round(o.ended - o.started, 2) for o in outcomes
                if o.ended - o.started > STRANDED_BOUND]
        r.sent = len(outcomes) + 20
        r.failed = len(failed) + sum(1 for s in fresh if s != 200)
        r.expected = len(resets)
        r.check(len(resets) <= held + held2,
                f"{len(resets)} resets, more than the {held} + {held2} connections the stopped "
                "workers held")
        r.check(not late, f"requests that waited longer than {STRANDED_BOUND} s: {late}")
        r.check(len(resets) == len(failed), f"error statuses: {Counter(o.result for o in failed)}")
        r.notes = (f"admin change answered in {took:.2f} s (bound {ADMIN_BOUND:g}); /metrics in "
                   f"{took_m:.2f} s; stopped worker replaced {t_first:.1f} s after SIGSTOP (the "
                   f"admin change found it), the second {t_second:.1f} s after (watchdog alone); "
                   f"they held {held} and {held2} of the {clients} keep-alive clients, whose "
                   f"{len(resets)} requests in flight were reset at the kill; longest wait {max((o.ended - o.started for o in outcomes), default=0):.2f} s")
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await blue.stop()
        await green.stop()
    return r


# -- counters across a worker's death -------------------------------------------------------------

_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


async def counters_survive_worker_kill(scale: int = 1, workers: int = 2) -> Result:
    clients, per = 8, 25 * scale
    r = Result("counters across a SIGKILLed worker", f"2 x {clients} clients x {per} GETs",
               "SIGKILL of one worker between two scrapes", workers=workers)
    be = await FaultServer("a").start()
    try:
        # The first half goes through the victim alone (the others stopped meanwhile, with a
        # worker timeout the watchdog does not reach): its counters are sure to be non-zero.
        cfg = config({"shop": app([be.addr])}, timeouts={"worker": "60s"})
        async with router_process(cfg, workers=workers) as rp:
            victim, *others = worker_pids(rp.proc.pid)
            with stopped(others):
                t1 = await drive(rp.port, clients, per, get())
            m1, _ = await scrape(rp.admin_port)
            os.kill(victim, signal.SIGKILL)
            t_kill = time.monotonic()
            await until(lambda: replaced(rp, victim, workers), 30, "the killed worker replaced")
            took = time.monotonic() - t_kill
            t2 = await drive(rp.port, clients, per, get())
            m2, _ = await scrape(rp.admin_port)
        counters = [k for k in m1 if k.split("{")[0].endswith(_COUNTER_SUFFIXES)]
        went_back = [f"{k}: {m1[k]:g} -> {m2.get(k, 'gone')}" for k in counters
                     if m2.get(k, -1.0) < m1[k]]
        r.check(not went_back, f"counters that went backwards: {went_back[:5]}")
        total = metric_sum(m2, "router_requests_total")
        r.check(total == t1.ok + t2.ok,
                f"router_requests_total {total:g}, want {t1.ok + t2.ok} (every answered request)")
        exited = metric_sum(m2, "router_worker_restarts_total", reason="exited")
        r.check(exited == 1, f"router_worker_restarts_total{{reason=exited}} = {exited}, want 1")
        r.sent, r.failed = t1.sent + t2.sent, t1.failed() + t2.failed()
        r.notes = (f"{len(counters)} counter series, none went back; router_requests_total "
                   f"{total:g} = every answered request; worker replaced in {took:.1f} s")
    finally:
        await be.stop()
    return r


# -- a second router on a taken port ----------------------------------------------------------------

async def _never_accepts(port: int, done: asyncio.Event) -> int:
    """Connections accepted on ``port`` until ``done``: tried every 5 ms."""
    accepted = 0
    while not done.is_set():
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            accepted += 1
            w.close()
        except OSError:
            pass
        await asyncio.sleep(0.005)
    return accepted


async def port_taken(scale: int = 1, workers: int = 1) -> Result:
    r = Result("a second router on a taken port", "40 GETs on new connections",
               "a second router with the same data-plane port, then the same admin port",
               workers=workers)
    be = await FaultServer("a").start()
    tmp = tempfile.mkdtemp(prefix="rel-port-")
    try:
        async with router_process(config({"shop": app([be.addr])}), workers=workers) as rp:
            for clash, which in ((("listen", rp.port), "data plane"),
                                 (("admin", rp.admin_port), "admin API")):
                other = free_port()
                cfg = {"listen": f"127.0.0.1:{rp.port if clash[0] == 'listen' else other}",
                       "admin": {"listen": f"127.0.0.1:{rp.admin_port if clash[0] == 'admin' else other}"},
                       "apps": {}}
                path = os.path.join(tmp, f"second-{clash[0]}.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump(cfg, f)
                done = asyncio.Event()
                probe = asyncio.ensure_future(_never_accepts(other, done))
                t0 = time.monotonic()
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "router.cli", "serve", "--config", path,
                    "--workers", str(workers), cwd=ROOT, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), 20)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                took = time.monotonic() - t0
                done.set()
                accepted = await probe
                text = err.decode(errors="replace")
                want = f"cannot listen on 127.0.0.1:{clash[1]} ({which}): address already in use"
                r.check(proc.returncode == 1, f"{which} taken: exit {proc.returncode}, want 1")
                r.check(want in text, f"{which} taken: stderr {text.strip()[-300:]!r}, want {want!r}")
                r.check(accepted == 0, f"{which} taken: the second router accepted {accepted} "
                        f"connections on its other port before exiting")
                r.notes += f"{which} taken: exit {proc.returncode} after {took:.2f} s, nothing listened; "
            statuses = [await http_status(rp.port, "/", "app.test") for _ in range(40)]
        r.sent, r.failed = len(statuses), sum(1 for s in statuses if s != 200)
        r.notes += "the first router still served every request"
    finally:
        await be.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return r


# -- a frozen backend --------------------------------------------------------------------------------

async def frozen_backend(scale: int = 1, workers: int = 1, response: float = 20.0) -> Result:
    rate, seconds = 80, 4.0 + scale
    r = Result("a backend frozen with SIGSTOP, no active check",
               f"{rate} GETs/s, each on a new connection, {seconds:g} s", "SIGSTOP of backend a "
               f"(response timeout {response:g} s)", workers=workers)
    tmp = tempfile.mkdtemp(prefix="rel-frozen-")
    # b answers in 100 ms: requests overlap, as under real load, so that a's stuck requests do
    # not keep it out of the least-in-flight choice on their own.
    proc, addr_a = _spawn_backend("a", 0.1, os.path.join(tmp, "a.log"))
    b = await FaultServer("b", delay=0.1).start()
    try:
        cfg = config({"shop": app([addr_a, b.addr])}, timeouts={"response": f"{response:g}s"},
                     passive_health={"failures": 3, "cooldown": "60s"})
        async with router_process(cfg, workers=workers) as rp:
            # Warm up: the service's usual latency is known (a few ms).
            warm = [await http_status(rp.port, "/", "app.test") for _ in range(20)]
            starts: list[tuple[float, int, float]] = []

            async def one() -> None:
                t0 = time.monotonic()
                status = await http_status(rp.port, "/", "app.test", timeout=response + 5)
                starts.append((t0, status, time.monotonic() - t0))

            t_stop = time.monotonic()
            proc.send_signal(signal.SIGSTOP)
            tasks = []
            ejected_at = None
            # Until a second after the ejection (at least ``seconds``), or half the response
            # timeout without one: the stall limit follows the service's own latency, which a
            # loaded machine raises during the warm-up.
            while True:
                elapsed = time.monotonic() - t_stop
                if elapsed >= (response / 2 if ejected_at is None
                               else max(seconds, ejected_at + 1.0)):
                    break
                tasks.append(asyncio.ensure_future(one()))
                await asyncio.sleep(1 / rate)
                if ejected_at is None and len(tasks) % 4 == 0 and await healthy(rp.admin_port, addr_a) == 0:
                    ejected_at = time.monotonic() - t_stop
            # Let the stuck requests finish now rather than at the response timeout.
            proc.send_signal(signal.SIGCONT)
            await asyncio.gather(*tasks)
        stuck = [(t0 - t_stop, took) for t0, status, took in starts if took > 1.0]
        failed = [s for _, s, _ in starts if s != 200]
        r.sent, r.failed = len(warm) + len(starts), len(failed) + sum(1 for s in warm if s != 200)
        r.check(ejected_at is not None and ejected_at < response / 2,
                f"a ejected {ejected_at} s after it froze: want well before the {response:g} s "
                "response timeout")
        if ejected_at is not None:
            after = [round(t, 2) for t, _ in stuck if t > ejected_at + 0.2]
            r.check(not after, f"requests sent to a after it was ejected: at {after}")
        r.notes = (f"a ejected {ejected_at:.1f} s after SIGSTOP (response timeout {response:g} s); "
                   f"{len(stuck)} requests had gone to it before and waited for it (answered "
                   "after SIGCONT)") if ejected_at is not None else "a never ejected"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        await b.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return r


async def timeouts_eject(scale: int = 1, workers: int = 1) -> Result:
    n = 30 * scale
    r = Result("response timeouts count as passive-health failures",
               f"{n} sequential GETs, 2 backends", "backend a silent (response timeout 0.3 s)",
               workers=workers)
    a, b = FaultServer("a"), await FaultServer("b").start()
    await a.start()
    try:
        cfg = config({"shop": app([a.addr, b.addr])}, timeouts={"response": "0.3s"},
                     passive_health={"failures": 3, "cooldown": "60s"})
        async with router_process(cfg, workers=workers) as rp:
            a.inject("silence", 1000)
            t = await drive(rp.port, 1, n, get())
            timeouts = await _errors(rp.admin_port, "timeout", a.addr)
            r.check(timeouts == 3, f"{timeouts} response timeouts on a, want 3 then ejected")
            r.check(await healthy(rp.admin_port, a.addr) == 0, "a not shown unhealthy")
        r.sent, r.failed, r.expected = t.sent, t.failed(), 3
        r.check([s for _, s in t.failures] == ["504"] * 3, f"failures: {t.failures}")
        r.notes = f"3 requests got 504 after 0.3 s, then a was out; b served {b.handled}"
    finally:
        await a.stop()
        await b.stop()
    return r


PRODUCTION = [
    (passive_eject_workers, (2,)),
    (hung_worker, (2,)),
    (counters_survive_worker_kill, (2,)),
    (port_taken, (1, 2)),
    (frozen_backend, (1, 2)),
    (timeouts_eject, (1, 2)),
]
