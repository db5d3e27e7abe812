"""The router process's life under keep-alive load: takeovers, upgrades in place, stops, and
signals to its whole process group.

The clients never retry: a request that gets no answer is a failed request, and a connection
the server closes (``Connection: close``, or a close between requests) is counted. The backend
answers every request with its own ``X-Test-Id`` and counts each id, so a request answered twice
or answered with another's response shows. ``benchmarks.upgrade`` runs the same load against
nginx and HAProxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httptools
import yaml

from tests.processes import ROOT, answering, free_port, until, worker_pids

from .scenarios import Result

# One request in SLOW_EVERY waits SLOW seconds at the backend: some requests are always in
# flight when a router hands over.
SLOW_EVERY = 5
SLOW = 0.05
BODY = b"x" * 1024  # one request in four is a POST with this body


class EchoBackend(asyncio.Protocol):
    """A backend that answers each request with the request's ``X-Test-Id`` (``/slow`` after
    SLOW seconds) and counts the ids it saw."""

    seen: Counter[bytes]

    def __init__(self, seen: Counter[bytes]) -> None:
        self.seen = seen
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.rid = b""
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.get_running_loop().create_task(self._answer())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.rid = b""
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-test-id":
            self.rid = value

    def on_message_complete(self) -> None:
        self.seen[self.rid] += 1
        self.queue.put_nowait((self.rid, self.url.startswith(b"/slow")))

    async def _answer(self) -> None:
        while True:
            rid, slow = await self.queue.get()
            if slow:
                await asyncio.sleep(SLOW)
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(rid), rid))


async def echo_backend(seen: Counter[bytes]) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoBackend(seen), "127.0.0.1", 0)


@dataclass
class Load:
    """Keep-alive clients that never retry: counts of what they saw."""

    sent: int = 0
    ok: int = 0
    failed: list[str] = field(default_factory=list)  # requests with no answer: why
    wrong: list[str] = field(default_factory=list)  # an answer that is not this request's
    closed: int = 0  # connections the server closed (Connection: close, or under a client)
    connections: int = 0  # connections opened
    failed_at: list[float] = field(default_factory=list)


async def run_clients(port: int, clients: int, stop: asyncio.Event, load: Load,
                      think: tuple[float, float] = (0.0, 0.02), limit: float = 600.0,
                      tag: str = "c", until_closed: bool = False) -> None:
    """``clients`` keep-alive connections, each sending a request, reading its answer, then
    waiting between ``think[0]`` and ``think[1]`` seconds, until ``stop`` (or ``limit``
    seconds). A request with no answer is failed and the client opens a new connection for the
    next one (not a retry: the next request is a new one). As HTTP clients do, a client does
    not reuse a connection the server closed while it was idle (``until_closed``: it stops
    there, as it would for a router with no successor)."""
    deadline = time.monotonic() + limit
    seq = iter(range(1 << 62))

    async def one(c: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        rng = random.Random(f"{tag}{c}")
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if reader is not None and reader.at_eof():
                    load.closed += 1  # closed while idle: seen before sending, not a failure
                    assert writer is not None
                    writer.close()
                    reader = writer = None
                    if until_closed:
                        return
                rid = f"{tag}{c}-{next(seq)}".encode()
                load.sent += 1
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        load.connections += 1
                    assert reader is not None
                    slow = rng.randrange(SLOW_EVERY) == 0
                    post = rng.randrange(4) == 0
                    path = b"/slow" if slow else b"/"
                    body = BODY if post else b""
                    writer.write(b"%s %s HTTP/1.1\r\nHost: app.test\r\nX-Test-Id: %s\r\n"
                                 b"Content-Length: %d\r\n\r\n%s"
                                 % (b"POST" if post else b"GET", path, rid, len(body), body))
                    async with asyncio.timeout(10):
                        head = await reader.readuntil(b"\r\n\r\n")
                        length, close = 0, False
                        for line in head.split(b"\r\n")[1:]:
                            name, _, value = line.partition(b":")
                            name = name.strip().lower()
                            if name == b"content-length":
                                length = int(value)
                            elif name == b"connection" and b"close" in value.lower():
                                close = True
                        data = await reader.readexactly(length)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                    load.failed.append(f"{rid.decode()}: {type(e).__name__}")
                    load.failed_at.append(time.monotonic())
                    if writer is not None:
                        load.closed += 1
                        writer.close()
                    reader = writer = None
                    if until_closed:
                        return
                    await asyncio.sleep(0.01)
                    continue
                status = int(head.split(b" ", 2)[1])
                if status == 200 and data == rid:
                    load.ok += 1
                else:
                    load.wrong.append(f"{rid.decode()}: {status} {data[:40]!r}")
                if close:
                    load.closed += 1
                    writer.close()
                    reader = writer = None
                    if until_closed:
                        return
                pause = rng.uniform(*think)
                if pause > 0:  # none: the next request at once, as wrk sends it
                    await asyncio.sleep(pause)
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(one(c) for c in range(clients)))


@dataclass
class Router:
    """The live router process of a run: the first one, then each successor."""

    proc: subprocess.Popen[bytes]
    log_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Routers:
    """A router on a state directory of its own, its successors, and the commands that replace
    it: ``takeover`` (a new process) and ``upgrade`` (SIGUSR2: the same process)."""

    def __init__(self, backend: str, workers: int, grace: float = 5.0,
                 checkout: str = ROOT, timeouts: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        """``checkout``: the source tree (with its ``.venv``) whose router runs; ``timeouts``:
        more of the configuration's timeouts; ``args``: more of every router's arguments."""
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="router-takeover-")
        self.workers = workers
        self.checkout = checkout
        venv = os.path.join(checkout, ".venv", "bin", "python")
        self.python = venv if checkout != ROOT and os.path.exists(venv) else sys.executable
        self.port = free_port()
        self.admin_port = free_port()
        self.config = os.path.join(self.dir, "router.yaml")
        with open(self.config, "w") as f:
            yaml.safe_dump({
                "listen": f"127.0.0.1:{self.port}",
                "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
                "timeouts": {"grace": f"{grace}s", **(timeouts or {})},
                "apps": {"shop": {"routes": ["app.test"], "session_sticky": True, "services": {
                    "blue": {"weight": 50, "backends": [backend]},
                    "green": {"weight": 50, "backends": [backend]}}}}}, f)
        self.live: Router | None = None
        self.spawned: list[Router] = []  # every router of the run, stopped by cleanup if alive
        self.count = 0

    def _spawn(self, *extra: str) -> Router:
        self.count += 1
        log_path = os.path.join(self.dir, f"router{self.count}.log")
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(
                [self.python, "-m", "router.cli", "serve", "--config", self.config,
                 "--workers", str(self.workers), *self.args, *extra],
                cwd=self.checkout, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        router = Router(proc, log_path)
        self.spawned.append(router)
        return router

    async def start(self) -> Router:
        self.live = self._spawn()
        await answering(f"http://127.0.0.1:{self.admin_port}/readyz", self.live.proc,
                        self.live.log_path, 30)
        return self.live

    async def takeover(self, *extra: str, timeout: float = 60.0) -> float:
        """A successor takes over; returns once the old router has exited 0 (the seconds it
        took). AssertionError with both logs otherwise."""
        old = self.live
        assert old is not None
        t0 = time.monotonic()
        new = self._spawn("--takeover", *extra)
        code = await asyncio.get_running_loop().run_in_executor(None, _wait, old.proc, timeout)
        if code != 0 or new.proc.poll() is not None:
            raise AssertionError(f"takeover: old exited {code}, new {new.proc.poll()}:\n"
                                 f"{old.log()[-3000:]}\n--- new:\n{new.log()[-3000:]}")
        await until(lambda: f"took over from pid {old.pid}" in new.log(), timeout,
                     f"the successor's takeover\n{new.log()[-3000:]}")
        self.live = new
        return time.monotonic() - t0

    async def upgrade(self, timeout: float = 60.0) -> float:
        """SIGUSR2 to the live router; returns once it runs the new code and took everything
        back (the same pid, no other router left); the seconds it took."""
        live = self.live
        assert live is not None
        t0 = time.monotonic()
        before = live.log().count("took over from pid")
        os.kill(live.pid, signal.SIGUSR2)
        await until(lambda: live.log().count("took over from pid") >= before + 2, timeout,
                     f"the upgrade in place\n{live.log()[-3000:]}")
        await until(lambda: not _other_routers(live.pid), timeout,
                     f"the temporary successor's exit and reaping\n{live.log()[-3000:]}")
        if live.proc.poll() is not None:
            raise AssertionError(f"the router exited ({live.proc.poll()}):\n{live.log()[-3000:]}")
        return time.monotonic() - t0

    def handed(self) -> tuple[int, int]:
        """Connections handed over and closed, summed over every takeover so far (the old
        routers' lines, which every log of the run holds between them)."""
        handed = closed = 0
        for name in os.listdir(self.dir):
            if name.endswith(".log"):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    for line in f:
                        if "done: " in line and "connection" in line and "takeover by pid" in line:
                            words = line.split("done: ", 1)[1].split()
                            handed += int(words[0])
                            closed += int(words[words.index("over,") + 1])
        return handed, closed

    async def stop(self) -> int:
        live = self.live
        if live is None:
            return 0
        self.live = None
        if live.proc.poll() is None:
            live.proc.send_signal(signal.SIGTERM)
        return await asyncio.get_running_loop().run_in_executor(None, _wait, live.proc, 30)

    def cleanup(self) -> None:
        import shutil

        for router in self.spawned:
            if router.proc.poll() is None:  # not reaped: its pid, and group, are still its own
                # Its own process group (start_new_session): its workers and a temporary
                # successor of an upgrade with it.
                os.killpg(router.pid, signal.SIGKILL)
                router.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _other_routers(pid: int) -> list[int]:
    """Children of ``pid`` other than its workers: a temporary successor, running or a zombie
    (not reaped)."""
    out = []
    for child in os.listdir("/proc"):
        if not child.isdigit():
            continue
        try:
            with open(f"/proc/{child}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == pid and b"router.process.worker" not in cmdline:
            out.append(int(child))
    return out


async def answered(load: Load, n: int) -> None:
    """Until the clients have had ``n`` more answers."""
    target = load.ok + len(load.failed) + n
    await until(lambda: load.ok + len(load.failed) >= target, 15, f"{n} more answers")


def routing_state(apps: Any) -> Any:
    """``GET /api/v1/apps`` without what is observed rather than configured (backend health)."""
    if isinstance(apps, dict):
        return {k: routing_state(v) for k, v in apps.items() if k != "backend_health"}
    if isinstance(apps, list):
        return [routing_state(v) for v in apps]
    return apps


async def admin_get(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def sticky_probe(port: int, cookie: str | None = None) -> tuple[str, str | None]:
    """One request to the sticky app: (the service that answered (its backend echoes the id, so
    the service is read from the cookie), the Set-Cookie value if one was issued)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = f"Cookie: {cookie}\r\n" if cookie else ""
        writer.write(f"GET / HTTP/1.1\r\nHost: app.test\r\nX-Test-Id: probe\r\n{extra}"
                     "Connection: close\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    status = head.split(" ", 2)[1]
    set_cookie = None
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "set-cookie":
            set_cookie = value.strip().split(";", 1)[0]
    return status, set_cookie


async def takeovers_under_load(takeovers: int = 3, upgrades: int = 3, workers: int = 1,
                               clients: int = 8) -> Result:
    """``takeovers`` routers started with ``--takeover`` and ``upgrades`` SIGUSR2, alternating,
    under keep-alive load that never retries: nothing may fail, no connection may be closed, no
    request may be answered twice, and the state and the sticky secret stay as they were."""
    r = Result("takeover and SIGUSR2 under load",
               f"{clients} keep-alive clients that never retry (1 POST in 4, 1 request in "
               f"{SLOW_EVERY} held {SLOW * 1000:.0f} ms by the backend)",
               f"{takeovers} takeovers and {upgrades} upgrades in place, alternating")
    r.workers = workers
    seen: Counter[bytes] = Counter()
    backend = await echo_backend(seen)
    routers = Routers(f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", workers)
    try:
        await routers.start()
        status, cookie = await sticky_probe(routers.port)
        r.check(status == "200" and cookie is not None, f"no sticky cookie: {status} {cookie}")
        apps_before = routing_state(await admin_get(routers.admin_port, "/api/v1/apps"))
        with open(os.path.join(routers.dir, "router-secret"), "rb") as f:
            secret_before = f.read()
        stop = asyncio.Event()
        load = Load()
        clients_task = asyncio.ensure_future(run_clients(routers.port, clients, stop, load))
        await answered(load, 50)
        times: dict[str, list[float]] = {"takeover": [], "SIGUSR2": []}
        for i in range(max(takeovers, upgrades)):
            if i < takeovers:
                times["takeover"].append(await routers.takeover())
                await answered(load, 50)
            if i < upgrades:
                times["SIGUSR2"].append(await routers.upgrade())
                await answered(load, 50)
        stop.set()
        await clients_task
        r.sent, r.failed = load.sent, len(load.failed)
        r.check(not load.failed, f"requests with no answer: {load.failed[:5]}")
        r.check(not load.wrong, f"answers that were not the request's: {load.wrong[:5]}")
        r.check(load.closed == 0, f"{load.closed} client connections closed by the router")
        twice = [i for i, n in seen.items() if n > 1 and i != b"probe"]
        r.check(not twice, f"requests that reached the backend twice: {twice[:5]}")
        reached = sum(n for i, n in seen.items() if i != b"probe")
        r.check(reached == load.ok, f"the backend saw {reached} requests, clients got {load.ok}")
        apps_after = routing_state(await admin_get(routers.admin_port, "/api/v1/apps"))
        r.check(apps_after == apps_before, f"the state changed: {apps_before} -> {apps_after}")
        with open(os.path.join(routers.dir, "router-secret"), "rb") as f:
            r.check(f.read() == secret_before, "the sticky secret file changed")
        status, again = await sticky_probe(routers.port, cookie)
        r.check(status == "200" and again is None,
                f"the cookie issued before the upgrades was not taken: {status}, new {again}")
        handed, closed = routers.handed()
        r.check(handed > 0, "no connection was handed over")
        code = await routers.stop()
        r.check(code == 0, f"the last router exited {code}")
        r.notes = (f"{load.sent} requests, {load.connections} client connections, {load.closed} "
                   f"closed; {handed} connections handed over, {closed} closed by an old router; "
                   + "; ".join(f"{k}: {len(v)} in {min(v, default=0):.1f}-{max(v, default=0):.1f} s"
                               for k, v in times.items()))
    finally:
        routers.cleanup()
        backend.close()
    return r


async def stops_under_load(stops: int = 3, workers: int = 1, checkout: str = ROOT,
                           fast: int = 16, idle: int = 4,
                           idle_think: tuple[float, float] = (0.2, 1.5)) -> Result:
    """``stops`` SIGTERMs with no successor, each under keep-alive load that never retries:
    ``fast`` clients that send each request as soon as the last is answered (as wrk does) and
    ``idle`` ones that wait ``idle_think`` seconds between requests, all sending on until the
    router closes
    their connection. A request sent on an open connection that gets no answer is failed: the
    race of a close with a client's next request (docs/upgrade.md, "A stop")."""
    r = Result("SIGTERM with no successor under load",
               f"{fast} keep-alive clients sending back to back, {idle} every "
               f"{idle_think[0]:g}-{idle_think[1]:g} s, none retries; each sends until the "
               "router closes its connection",
               f"{stops} stops (SIGTERM after 1 s of load)")
    r.workers = workers
    seen: Counter[bytes] = Counter()
    backend = await echo_backend(seen)
    total = Load()
    exits = []
    try:
        for _ in range(stops):
            routers = Routers(f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", workers,
                              checkout=checkout)
            try:
                await routers.start()
                stop = asyncio.Event()
                load = Load()
                clients = asyncio.gather(
                    run_clients(routers.port, fast, stop, load, (0.0, 0.0), 60, "f", True),
                    run_clients(routers.port, idle, stop, load, idle_think, 60, "i", True))
                # Time is the subject: the idle clients' connections idle a while first.
                await asyncio.sleep(max(1.0, idle_think[1]))
                exits.append(await routers.stop())
                async with asyncio.timeout(30):
                    await clients
            finally:
                routers.cleanup()
            total.sent += load.sent
            total.ok += load.ok
            total.failed += load.failed
            total.wrong += load.wrong
            total.closed += load.closed
    finally:
        backend.close()
    r.sent, r.failed = total.sent, len(total.failed)
    r.check(not total.wrong, f"answers that were not the request's: {total.wrong[:5]}")
    r.check(all(code == 0 for code in exits), f"exit codes {exits}")
    r.notes = (f"{total.sent} requests over {stops} stops, {len(total.failed)} with no answer "
               f"({total.failed[:3]}); every client's connection closed by the router: "
               f"{total.closed} of {stops * (fast + idle)}")
    return r


async def sighup_to_every_process(scale: int = 1, workers: int = 2) -> Result:
    """``pkill -HUP -f router`` (every process, one by one) and a SIGHUP to the process group (a
    closed terminal), under keep-alive load: the workers leave them to the master, which
    reloads once per signal; nothing fails, no worker is restarted."""
    rounds = 5 * scale
    r = Result("SIGHUP to every process", "8 keep-alive clients that never retry",
               f"{rounds} rounds of SIGHUP to the master and each worker, then one to the group")
    r.workers = workers
    backend = await echo_backend(Counter())
    routers = Routers(f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", workers)
    try:
        live = await routers.start()
        master = live.pid
        children = worker_pids(master)
        stop, load = asyncio.Event(), Load()
        clients = asyncio.ensure_future(run_clients(routers.port, 8, stop, load))
        await answered(load, 50)
        for i in range(rounds):
            for pid in (master, *children):
                os.kill(pid, signal.SIGHUP)
            # One round at a time: signals sent together may arrive as one.
            await until(lambda: live.log().count("reload of") > i, 10, "the reload")  # noqa: B023
        os.killpg(master, signal.SIGHUP)
        await until(lambda: live.log().count("reload of") > rounds, 10, "the group's reload")
        await answered(load, 50)
        stop.set()
        await clients
        r.sent, r.failed = load.sent, len(load.failed)
        r.check(not load.wrong, f"answers that were not the request's: {load.wrong[:5]}")
        r.check(load.closed == 0, f"{load.closed} client connections closed")
        r.check(worker_pids(master) == children, "a worker was restarted")
        reloads = live.log().count("reload of")
        r.check(reloads == rounds + 1, f"{reloads} reloads for {rounds + 1} SIGHUPs to the master")
        code = await routers.stop()
        r.check(code == 0, f"exit {code}")
        r.notes = f"{reloads} reloads; the same {len(children)} workers throughout"
    finally:
        routers.cleanup()
        backend.close()
    return r


async def takeovers(scale: int = 1, workers: int = 1) -> Result:
    return await takeovers_under_load(3 * scale, 3 * scale, workers)


async def stops(scale: int = 1, workers: int = 1) -> Result:
    return await stops_under_load(3 * scale, workers)


# For benchmarks.reliability: (scenario, the worker counts it runs with).
LIFECYCLE = [(takeovers, (1, 2)), (stops, (1, 2)), (sighup_to_every_process, (2,))]
