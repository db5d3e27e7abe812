"""Scenarios of the routing-state store failing under a release: the real ``router serve``
process(es), real backends, a real etcd or a real full disk.

* :func:`ramp_while_disk_full`, :func:`ramp_while_etcd_down`: a guarded ramp of a version that
  starts failing at its first step while the store cannot be written (the state directory on a
  tmpfs filled up; etcd stopped). The ramp's rollback must take effect at once, be shown as not
  stored, and be stored once the store is back (docs/etcd.md, "Safety before persistence").
* :func:`etcd_emptied_lagging_replica`: three replicas on one etcd; one falls behind, the two
  others are cut off (SIGSTOP) after an acknowledged change, etcd comes back empty, the one that
  was behind writes back its older state and takes a change, the two others return. No
  acknowledged change may be lost: the conflict is reported, kept, and resolved with routerctl
  (docs/etcd.md, "Conflicts").

``STORE`` lists them with the worker counts they run with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable

import aiohttp
import yaml
from aiohttp import web

from tests.processes import until, worker_pids

from .harness import (ROOT, KeepAliveClient, RouterProc, config, free_port, metric_sum, metrics,
                      router_process)
from .scenarios import Request, Result, Tally, drive

# The ramp of these scenarios: 10% first, each step judged over INTERVAL seconds.
INTERVAL = 2.0
RAMP = {"steps": [10, 50, 100], "interval": f"{INTERVAL:g}s", "min_requests": 5}
# After the state in effect changed, requests already sent may still reach the old one.
GRACE = 0.5


class Version:
    """A backend answering its name, or 500 to everything once ``failing``; when it got each
    request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = False
        self.times: list[float] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "Version":
        async def answer(request: web.Request) -> web.Response:
            self.times.append(time.monotonic())
            if self.failing:
                return web.Response(status=500, text="failed\n")
            return web.Response(text=self.name + "\n")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def since(self, t: float) -> int:
        return sum(1 for x in self.times if x >= t)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Admin:
    """The admin API of one router."""

    def __init__(self, s: aiohttp.ClientSession, port: int) -> None:
        self.s = s
        self.url = f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.s.request(method, self.url + "/api/v1" + path, json=body,
                                  headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def metric(self, name: str) -> float:
        return metric_sum(await metrics(int(self.url.rsplit(":", 1)[1])), name)


async def routerctl(admin_url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.ctl", "--url", admin_url, *args, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


# -- the store cannot be written during a ramp ------------------------------------------------
class DiskFull:
    """The state directory on a tmpfs of its own (root only), filled up: every save fails with
    ENOSPC, as on a full disk."""

    what = "the state disk is full"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="router-state-")
        self.args: tuple[str, ...] = ("--state-dir", self.dir)
        self._filler = os.path.join(self.dir, "filler")

    async def setup(self) -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", self.dir],
                       check=True, capture_output=True)

    async def begin(self) -> None:
        chunk = b"\0" * 65536
        with open(self._filler, "wb") as f:
            for _ in range(64):  # 4 MiB at most, against a 1 MiB file system
                try:
                    f.write(chunk)
                    f.flush()
                except OSError:
                    return
        raise AssertionError(f"{self.dir}: could not fill the tmpfs")

    async def end(self) -> None:
        os.unlink(self._filler)

    async def close(self) -> None:
        subprocess.run(["umount", self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdDown:
    """The state in etcd, and etcd stopped (SIGTERM); started again with its data."""

    what = "etcd is stopped"

    def __init__(self) -> None:
        from tests.integration.test_etcd import Etcd

        self.tmp = tempfile.mkdtemp(prefix="router-etcd-")
        self.etcd = Etcd(os.path.join(self.tmp, "data"), os.path.join(self.tmp, "etcd.log"),
                         free_port(), free_port())
        self.args = ("--store", self.etcd.url("/r"))

    async def setup(self) -> None:
        await self.etcd.start()

    async def begin(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.etcd.stop)

    async def end(self) -> None:
        await self.etcd.start()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.etcd.stop)
        shutil.rmtree(self.tmp, ignore_errors=True)


async def ramp_while_disk_full(scale: int = 1, workers: int = 1) -> Result:
    return await _ramp_through_outage(DiskFull(), scale, workers)


async def ramp_while_etcd_down(scale: int = 1, workers: int = 1) -> Result:
    return await _ramp_through_outage(EtcdDown(), scale, workers)


def _shop(blue: str) -> dict[str, Any]:
    return config({"shop": {"routes": ["app.test"], "session_sticky": False,
                            "services": {"blue": {"weight": 100, "backends": [blue]}}}})


async def _ramp_through_outage(outage: DiskFull | EtcdDown, scale: int, workers: int) -> Result:
    clients, down_for = 6, 3.0 * scale
    r = Result(f"ramp rollback while {outage.what}", f"{clients} keep-alive clients, GETs",
               f"green starts failing (500) at step 1 of its ramp ({RAMP['steps'][0]}%, "
               f"{INTERVAL:g} s steps), as the store goes down until {down_for:g} s after the "
               "judgement")
    r.workers = workers
    blue, green = await Version("blue").start(), await Version("green").start()
    stop = asyncio.Event()
    try:
        await outage.setup()
        async with router_process(_shop(blue.addr), workers=workers, args=outage.args) as rp, \
                aiohttp.ClientSession() as s:
            api = Admin(s, rp.admin_port)
            load = asyncio.ensure_future(drive(rp.port, clients, 100_000, _get, deadline=60,
                                               pause=0.005, stop=stop))
            status, body = await api.call("POST", "/apps/shop/release",
                                          {"service": "green", "backends": [green.addr]})
            r.check(status == 201, f"release: {status} {body}")
            await until(lambda: _release_is(api, "awaiting_confirmation"), 10, "the release ready")
            status, body = await api.call("POST", "/apps/shop/release/ramp", RAMP)
            r.check(status == 201, f"ramp: {status} {body}")
            await until(lambda: _at_step(api, 1), 10, "the ramp at step 1")
            await outage.begin()
            t_down = time.monotonic()
            green.failing = True
            rolled = await until(lambda: _release_is(api, "rolled_back"), INTERVAL + 5,
                                 f"the rollback while {outage.what}")
            t_rolled = time.monotonic()
            r.check(rolled.get("stored") is False, f"the rollback says it is stored: {rolled}")
            pending = await api.metric("router_store_pending_changes")
            r.check(pending == 1, f"router_store_pending_changes {pending}, not 1")
            code, out = await routerctl(api.url, "release", "status", "shop")
            r.check(code == 0 and "rolled_back (not yet stored)" in out,
                    f"routerctl release status: exit {code}: {out.strip()}")
            status, ramp = await api.call("GET", "/apps/shop/release/ramp")
            r.check(status == 200 and ramp["ramp"]["status"] == "rolled_back"
                    and ramp.get("stored") is False, f"the ramp's status: {status} {ramp}")
            # Time is the subject: the store stays down for down_for after the rollback.
            await asyncio.sleep(max(0.0, t_rolled + down_for - time.monotonic()))
            green_after = green.since(t_rolled + GRACE)
            await outage.end()
            t_up = time.monotonic()
            stored = await until(lambda: _stored(api), 15, "the rollback stored, the store back")
            took = time.monotonic() - t_up
            stop.set()
            t = await load
            r.check(stored["operation"] == "ramp_rollback"
                    and "while the store could not be written" in stored.get("reason", ""),
                    f"the stored change: {stored}")
    finally:
        stop.set()
        await outage.close()
        await blue.stop()
        await green.stop()
    failed_before = sum(1 for at, _, _ in t.failed_at if at < t_rolled + GRACE)
    failed_after = len(t.failed_at) - failed_before
    r.sent, r.failed = t.sent, t.failed()
    # The failures the ramp's bound allows: the failing version's share until its judgement.
    r.expected = failed_before
    r.check(failed_after == 0, f"{failed_after} requests failed after the rollback was decided")
    r.check(green_after == 0, f"green got {green_after} requests after its rollback")
    r.notes = (f"failed {failed_before} before the rollback (green's share until the judgement, "
               f"{t_rolled - t_down:.1f} s after the store went down), {failed_after} after it "
               f"while the store stayed down {down_for:g} s; stored {took:.1f} s after the "
               "store was back")
    return r


async def operator_moves_while_disk_full() -> None:
    """An operator's abort, then rollback, of a release while the state disk is full: each in
    effect at once (202), shown as not stored; other changes refused (503); both stored, in
    order, once there is room. Asserts (a test, not a scenario with a load)."""
    disk = DiskFull()
    blue, green = await Version("blue").start(), await Version("green").start()
    try:
        await disk.setup()
        async with router_process(_shop(blue.addr), args=disk.args) as rp, \
                aiohttp.ClientSession() as s:
            api = Admin(s, rp.admin_port)
            assert (await api.call("POST", "/apps/shop/release",
                                   {"service": "green", "backends": [green.addr]}))[0] == 201
            await until(lambda: _release_is(api, "awaiting_confirmation"), 10, "the release ready")
            assert (await api.call("POST", "/apps/shop/release/ramp", RAMP))[0] == 201
            await until(lambda: _at_step(api, 1), 10, "the ramp at step 1")
            await disk.begin()
            status, body = await api.call("POST", "/apps/shop/release/ramp/abort")
            assert status == 202 and body["ramp"] is None and body["stored"] is False, body
            status, body = await api.call("PUT", "/apps/shop/weights", {"blue": 50})
            assert status == 503 and "not stored yet (ramp_abort of shop" in \
                body["error"]["message"], body
            status, body = await api.call("POST", "/apps/shop/release/rollback")
            assert status == 202 and list(body["services"]) == ["blue"], body
            assert [e["operation"] for e in body["unstored"]] == ["ramp_abort", "rollback_release"]
            status, body = await api.call("GET", "/apps/shop/release")
            assert status == 200 and body["status"] == "rolled_back" and not body["stored"], body
            code, out = await routerctl(api.url, "release", "status", "shop")
            assert code == 0 and "STATUS       rolled_back (not yet stored)" in out, out
            client = KeepAliveClient(rp.port)
            try:
                answers = [await client.request() for _ in range(20)]
            finally:
                client.close()
            assert answers == [(200, b"blue\n")] * 20  # green has no traffic left
            assert await api.metric("router_store_pending_changes") == 2
            await disk.end()
            await until(lambda: _stored(api), 10, "both changes stored once there is room")
            status, body = await api.call("GET", "/history?app=shop&limit=2")
            assert [e["operation"] for e in body["history"]] == ["rollback_release", "ramp_abort"]
            with open(os.path.join(disk.dir, "router-state.yaml")) as f:
                stored = yaml.safe_load(f)
            assert list(stored["apps"]["shop"]["services"]) == ["blue"] and not stored["releases"]
    finally:
        await disk.close()
        await blue.stop()
        await green.stop()


def _get(i: int) -> Request:
    return ("GET", "/", b"", {})


async def _release_is(api: Admin, status: str) -> dict[str, Any] | None:
    code, body = await api.call("GET", "/apps/shop/release")
    return body if code == 200 and body["status"] == status else None


async def _at_step(api: Admin, step: int) -> bool:
    code, body = await api.call("GET", "/apps/shop/release/ramp")
    return code == 200 and body["ramp"]["step"] >= step


async def _stored(api: Admin) -> dict[str, Any] | None:
    """The newest history entry of shop once no change waits for the store."""
    if await api.metric("router_store_pending_changes") != 0:
        return None
    code, body = await api.call("GET", "/history?app=shop&limit=1")
    if code != 200 or not body["history"] or body["history"][0].get("stored") is False:
        return None
    code_release, _ = await api.call("GET", "/apps/shop/release")
    return body["history"][0] if code_release == 404 else None


# -- etcd loses its data under a replica that was behind ----------------------------------------
class Rotation:
    """Clients through whichever replicas run, one request per connection, as a load balancer
    with health checks would spread them; a replica is taken out before it is stopped."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self.tally = Tally()
        self._inflight: dict[int, int] = {p: 0 for p in ports}
        self._stop = asyncio.Event()
        self._task: asyncio.Future[Any] | None = None

    def start(self, clients: int, per_client: int, pause: float) -> None:
        self._task = asyncio.ensure_future(asyncio.gather(
            *(self._one(c, per_client, pause) for c in range(clients))))

    async def _one(self, c: int, per_client: int, pause: float) -> None:
        end = time.monotonic() + 120
        for i in range(per_client):
            if self._stop.is_set() or time.monotonic() > end:
                return
            if not self.ports:
                await asyncio.sleep(0.05)  # no router in rotation: this client idles meanwhile
                continue
            port = self.ports[(c + i) % len(self.ports)]
            self._inflight[port] += 1
            self.tally.sent += 1
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                    raw = await reader.read()
                    writer.close()
                ok = raw.startswith(b"HTTP/1.1 200 ")
            except (OSError, TimeoutError):
                ok = False
            finally:
                self._inflight[port] -= 1
            if ok:
                self.tally.ok += 1
            else:
                self.tally.failures.append(("GET", str(port)))
                self.tally.failed_at.append((t0, "GET", str(port)))
            await asyncio.sleep(pause)  # the load's pace

    async def take_out(self, port: int) -> None:
        self.ports.remove(port)
        await until(lambda: self._inflight[port] == 0, 10, f"the requests in flight to {port}")

    def put_back(self, port: int) -> None:
        self.ports.append(port)

    async def stop(self) -> Tally:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.tally


async def _store_down(api: Admin) -> bool:
    return await api.metric("router_store_up") == 0


def _pids(rp: RouterProc) -> list[int]:
    """The router's processes: its master and workers, all of which a SIGSTOP must reach."""
    return [rp.proc.pid, *worker_pids(rp.proc.pid)]


def _signal(rps: list[RouterProc], sig: signal.Signals) -> None:
    for rp in rps:
        for pid in _pids(rp):
            os.kill(pid, sig)


async def etcd_emptied_lagging_replica(scale: int = 1, workers: int = 1) -> Result:
    from tests.integration.test_etcd import Etcd, Partition

    r = Result("etcd emptied under a replica that was behind",
               "clients spread over the replicas that run",
               "3 replicas; C cut off from etcd, a change through A (200), A and B stopped "
               "(SIGSTOP), etcd restarted empty, C back: it writes back and takes a change (200); "
               "A and B continued")
    r.workers = workers
    tmp = tempfile.mkdtemp(prefix="router-etcd-")
    etcd = Etcd(os.path.join(tmp, "data"), os.path.join(tmp, "etcd.log"), free_port(), free_port())
    blue, green = await Version("blue").start(), await Version("green").start()
    rotation: Rotation | None = None
    routers: list[RouterProc] = []
    partition: Partition | None = None
    gx = g3 = 0
    try:
        await etcd.start()
        # C reaches etcd through a proxy that can cut it off: a stopped process would still
        # find the change it missed in its socket's buffer when it goes on.
        partition = await Partition(etcd.port).start()
        cfg = config({"shop": {"routes": ["app.test"], "session_sticky": False, "services": {
            "blue": {"weight": 50, "backends": [blue.addr]},
            "green": {"weight": 50, "backends": [green.addr]}}}},
            timeouts={"grace": "1s", "worker": "60s"})
        async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as s:
            for store in (etcd.url("/t"), etcd.url("/t"),
                          f"etcd://127.0.0.1:{partition.port}/t"):
                routers.append(await stack.enter_async_context(
                    router_process(cfg, workers=workers, args=("--store", store))))
            # Continued before they are stopped for good, whatever happens.
            stack.callback(_signal, routers, signal.SIGCONT)
            a, b, c = routers
            api = {name: Admin(s, rp.admin_port) for name, rp in (("A", a), ("B", b), ("C", c))}
            rotation = Rotation([a.port, b.port, c.port])
            rotation.start(4, 100_000 * scale, 0.01)
            acked: list[str] = []  # the changes answered 200

            async def change(via: str, weights: dict[str, int]) -> int:
                status, body = await api[via].call("PUT", "/apps/shop/weights", weights)
                r.check(status == 200, f"change through {via}: {status} {body}")
                acked.append(f"{via}: {weights}")
                return int(body["generation"]) if status == 200 else 0

            g2 = await change("A", {"blue": 60, "green": 40})
            await until(lambda: _generation_is(api["C"], g2), 5, f"generation {g2} on C")
            # C falls behind: cut off from etcd, it misses the next change.
            partition.cut()
            await until(lambda: _store_down(api["C"]), 10, "C cut off from etcd")
            g3 = await change("A", {"blue": 70, "green": 30})
            await until(lambda: _generation_is(api["B"], g3), 5, f"generation {g3} on B")
            # A and B, which hold it, are cut off; etcd comes back with nothing.
            for rp in (a, b):
                await rotation.take_out(rp.port)
            _signal([a, b], signal.SIGSTOP)
            await asyncio.get_running_loop().run_in_executor(None, etcd.stop)
            shutil.rmtree(etcd.data_dir)
            await etcd.start()
            partition.heal()
            # C notices, writes back what it holds (generation 2), and takes changes again.
            await until(lambda: "data loss: " in c.log(), 10, "C noticing the data loss")
            gx = await until(lambda: _accepts(api["C"], {"blue": 90, "green": 10}), 15,
                             "C taking a change after the write-back")
            acked.append("C: {'blue': 90, 'green': 10}")
            r.check(gx != g3, f"C's change after the data loss is called generation {g3} too")
            # A and B come back: they hold generation 3, which the store does not have.
            _signal([a, b], signal.SIGCONT)
            for rp in (a, b):
                rotation.put_back(rp.port)
            try:
                await until(lambda: _conflicts_found(api, 2), 20,
                            "A and B each reporting a conflict (router_store_conflicts_total)")
            except AssertionError as e:
                raise AssertionError(f"{e}; A's log:\n{_tail(a.log())}") from None
            served = [await _weights(api[n]) for n in "ABC"]
            r.check(served[0] == served[1] == served[2] == ({"blue": 90, "green": 10}, gx),
                    f"the replicas serve {served}, not C's change at generation {gx}")
            for n in "ABC":
                status, body = await api[n].call("PUT", "/apps/shop/weights", {"blue": 1},
                                                 headers={"If-Match": f'"{g3}"'})
                r.check(status == 412, f"If-Match: \"{g3}\" on {n}: {status}, not 412")
            status, body = await api["C"].call("GET", "/conflicts")
            conflicts = body["conflicts"] if status == 200 else []
            r.check(len(conflicts) == 1 and conflicts[0]["generation"] == g3
                    and conflicts[0]["change"]["changes"] == ["weights blue 60->70, green 40->30"],
                    f"conflicts: {status} {body}")
            status, body = await api["B"].call("GET", "/history?app=shop&limit=10")
            history = [(e["generation"], e.get("conflict") is not None) for e in body["history"]]
            r.check(history[:3] == [(gx, False), (g3, True), (g2, False)],
                    f"the history shows {history}, not both changes")
            name = conflicts[0]["name"] if conflicts else "-"
            for path, keep, expected in (("/conflicts/nope", "store", 404),
                                         (f"/conflicts/{name}", "both", 422)):
                status, body = await api["A"].call("POST", path, {"keep": keep})
                r.check(status == expected, f"POST {path} keep {keep}: {status}, not {expected}")
            code, out = await routerctl(api["B"].url, "conflicts")
            r.check(code == 0 and name in out and "weights blue 90->70, green 10->30" in out,
                    f"routerctl conflicts: exit {code}: {out}")
            code, out = await routerctl(api["B"].url, "conflicts", "resolve", name,
                                        "--keep", "conflict")
            r.check(code == 0, f"routerctl conflicts resolve: exit {code}: {out}")
            await until(lambda: _all_serve(api, {"blue": 70, "green": 30}), 5,
                        "the conflict's state served everywhere once kept")
            status, body = await api["A"].call("GET", "/conflicts")
            r.check(status == 200 and body["conflicts"] == [], f"conflicts left: {body}")
            t = await rotation.stop()
    finally:
        if rotation is not None:
            await rotation.stop()
        if partition is not None:
            await partition.close()
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        await blue.stop()
        await green.stop()
    r.sent, r.failed = t.sent, t.failed()
    r.notes = (f"acknowledged: {'; '.join(acked)}. C's change after the data loss took "
               f"generation {gx}; A and B held generation {g3}, which the store no longer had")
    return r


def _tail(log: str) -> str:
    """The store's and the state's lines of a router's log, the last ones."""
    return "\n".join([ln for ln in log.splitlines() if "router.store" in ln
                      or "router.admin" in ln][-15:])


async def _generation_is(api: Admin, generation: int) -> bool:
    code, body = await api.call("GET", "/apps/shop")
    return code == 200 and body["generation"] == generation


async def _accepts(api: Admin, weights: dict[str, int]) -> int | None:
    code, body = await api.call("PUT", "/apps/shop/weights", weights)
    return int(body["generation"]) if code == 200 else None


async def _weights(api: Admin) -> tuple[dict[str, int], int]:
    code, body = await api.call("GET", "/apps/shop")
    assert code == 200, body
    return {n: s["weight"] for n, s in body["services"].items()}, body["generation"]


async def _conflicts_found(apis: dict[str, Admin], count: int) -> bool:
    found = [await apis[n].metric("router_store_conflicts_total") for n in "ABC"]
    return sum(found) == count and found[2] == 0


async def _all_serve(apis: dict[str, Admin], weights: dict[str, int]) -> bool:
    return all([(await _weights(apis[n]))[0] == weights for n in "ABC"])


STORE: list[tuple[Callable[[int, int], Awaitable[Result]], tuple[int, ...]]] = [
    (ramp_while_disk_full, (1, 2)),
    (ramp_while_etcd_down, (1, 2)),
    (etcd_emptied_lagging_replica, (1,)),
]
