"""Several replicas sharing one routing state through a real etcd (docs/etcd.md).

The ``etcd`` fixture runs the Debian ``etcd`` binary on free loopback ports with a temporary data
directory; the routers are real ``router serve`` processes started with ``--store etcd://...``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aetcd
import aiohttp
import pytest

from router.control.store import StoreConflict, check_store
from router.control.store.etcd import EtcdStore, parse_etcd_url
from tests.conftest import RouterProcess, app_config, free_port, get, terminate
from tests.integration.test_admin_api import Api, _awaiting
from tests.load import Load
from tests.processes import until

ETCD = shutil.which("etcd")


@dataclass
class Etcd:
    """One etcd member on loopback; ``stop`` and ``start`` again keep its data."""

    data_dir: str
    log_path: str
    port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def url(self, prefix: str = "") -> str:
        return f"etcd://127.0.0.1:{self.port}{prefix}"

    async def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "default", "--data-dir", self.data_dir,
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"default={peer}",
                 # One member: no peer to wait for, so a short election only speeds up start.
                 "--heartbeat-interval", "50", "--election-timeout", "500"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(client + "/health") as r:
                        if r.status == 200 and json.loads(await r.text()).get("health") == "true":
                            return
                except (aiohttp.ClientError, ValueError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    with open(self.log_path, errors="replace") as f:
                        raise AssertionError("etcd did not start:\n" + f.read()[-3000:])
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, by PID."""
        if self.proc is not None:
            terminate(self.proc, 10)


@pytest.fixture
async def etcd(tmp_path: Any) -> AsyncIterator[Etcd]:
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package etcd-server; scripts/system-deps.sh "
                    "installs it when run as root)")
    e = Etcd(str(tmp_path / "etcd-data"), str(tmp_path / "etcd.log"), free_port(), free_port())
    await e.start()
    yield e
    e.stop()


# -- helpers --------------------------------------------------------------------------------------
def _cfg(apps: dict[str, Any]) -> dict[str, Any]:
    return {"timeouts": {"grace": "1s"}, "apps": apps}


async def _replicas(router_process: Any, etcd: Etcd, n: int, apps: dict[str, Any],
                    prefix: str = "/t") -> list[RouterProcess]:
    """n replicas on one etcd prefix, started together."""
    args = ("--store", etcd.url(prefix))
    return list(await asyncio.gather(*(router_process(_cfg(apps), args) for _ in range(n))))


async def _metric(s: aiohttp.ClientSession, rp: RouterProcess, name: str) -> float:
    async with s.get(rp.admin_url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in the metrics of {rp.admin_url}")


async def _app(api: Api) -> dict[str, Any]:
    """The app as the replica shows it, less ``backend_health``: what each replica has seen of
    the backends is its own, the state is shared."""
    status, body, headers = await api.call("GET", "/apps/shop")
    assert status == 200, body
    assert headers["etag"] == f'"{body["generation"]}"'
    return _shared(body)


def _shared(body: Any) -> Any:
    """An admin API body less ``backend_health`` (what each replica has seen of the backends
    is its own; the state is shared)."""
    if isinstance(body, dict):
        return {k: _shared(v) for k, v in body.items() if k != "backend_health"}
    if isinstance(body, list):
        return [_shared(v) for v in body]
    return body


def _weights(app: dict[str, Any]) -> dict[str, int]:
    return {n: s["weight"] for n, s in app["services"].items()}


# -- tests ----------------------------------------------------------------------------------------
def test_store_urls():
    assert parse_etcd_url("etcd://127.0.0.1:2379") == ("127.0.0.1", 2379, "/router")
    assert parse_etcd_url("etcd://etcd.internal/prod/router/") == ("etcd.internal", 2379, "/prod/router")
    assert parse_etcd_url("etcd://[::1]:23790/x") == ("::1", 23790, "/x")
    for bad, reason in (("etcd://:2379", "needs a host"), ("etcd://h:99999", "port"),
                        ("etcd://h:2379/p?x=1", "no user, query"), ("http://h:2379", "not an etcd")):
        with pytest.raises(ValueError, match=reason):
            parse_etcd_url(bad)
    assert check_store("etcd://h:1/p") == "etcd://h:1/p"
    assert check_store("file:///var/lib/router/state.yaml") == "/var/lib/router/state.yaml"
    assert check_store("state.yaml") == os.path.abspath("state.yaml")
    with pytest.raises(ValueError, match="etcd://HOST:PORT"):
        check_store("redis://h:6379")


async def test_change_through_one_replica_is_live_on_all_within_1s(backend, router_process, etcd):
    blue, green = await backend("blue"), await backend("green")
    a, b, c = await _replicas(router_process, etcd, 3, {"shop": app_config(
        {"blue": (100, [blue.addr]), "green": (0, [green.addr])}, sticky=False)})
    async with aiohttp.ClientSession() as s:
        apis = [Api(s, rp.admin_port) for rp in (a, b, c)]
        # The first replica seeded etcd with the configuration's apps; all serve that state.
        assert len({json.dumps(await _app(api), sort_keys=True) for api in apis}) == 1
        status, changed, _ = await apis[0].call("PUT", "/apps/shop/weights", {"blue": 0, "green": 100})
        assert status == 200
        for rp, api in ((b, apis[1]), (c, apis[2])):
            async def seen() -> bool:
                return await _app(api) == _shared(changed)  # noqa: B023 (awaited within the loop)
            await until(seen, 1.0, f"the change on {rp.admin_url}")
            # ... and the data plane uses it.
            assert {(await get(s, rp))[2] for _ in range(5)} == {b"green\n"}
        assert {await _metric(s, rp, "router_config_generation") for rp in (a, b, c)} == {changed["generation"]}


async def test_concurrent_conflicting_changes_lose_no_update(backend, router_process, etcd):
    """20 weight changes through A and 20 through B at once, each to its own service: every one
    is in the final state, which every replica shows with the same generation."""
    be = await backend("blue")
    services = {f"s{i}": (1, [be.addr]) for i in range(40)}
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config(services, sticky=False)})
    async with aiohttp.ClientSession() as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)
        start = (await _app(api_a))["generation"]

        async def writer(api: Api, first: int) -> list[int]:
            statuses = []
            for i in range(first, first + 10):
                status, body, _ = await api.call("PUT", "/apps/shop/weights", {f"s{i}": 50 + i})
                statuses.append(status if status == 200 else body)
            return statuses

        # Two clients per replica, so each replica also queues its own changes.
        results = await asyncio.gather(writer(api_a, 0), writer(api_b, 20), writer(api_a, 10),
                                       writer(api_b, 30))
        assert all(st == 200 for r in results for st in r), results
        want = {f"s{i}": 50 + i for i in range(40)}
        end = start + 40  # every accepted change counted exactly once

        async def converged() -> bool:
            return all([(await _app(api))["generation"] == end for api in (api_a, api_b)])
        await until(converged, 1.0, "both replicas at the last generation")
        app_a, app_b = await _app(api_a), await _app(api_b)
        assert app_a == app_b and _weights(app_a) == want


async def test_cookie_from_one_replica_is_honoured_by_another(backend, router_process, etcd):
    blue, green = await backend("blue"), await backend("green")
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config(
        {"blue": (50, [blue.addr]), "green": (50, [green.addr])})})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        pinned = {}
        for _ in range(4):  # both versions get pinned clients
            _, headers, body = await get(s, a)
            cookie = headers["Set-Cookie"].split(";", 1)[0]
            pinned[cookie] = body
        assert set(pinned.values()) == {b"blue\n", b"green\n"}
        for cookie, body in pinned.items():
            for _ in range(5):
                _, headers, got = await get(s, b, headers={"Cookie": cookie})
                assert got == body and "Set-Cookie" not in headers  # verified, not replaced


async def test_release_through_a_while_clients_use_b(backend, router_process, etcd):
    blue, green = await backend("blue"), await backend("green")
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config({"blue": (100, [blue.addr])})})
    load = Load(b.url + "/", clients=4, max_seconds=30)
    async with aiohttp.ClientSession() as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)
        load.start()
        status, started, _ = await api_a.call("POST", "/apps/shop/release",
                                              {"service": "green", "backends": [green.addr]})
        assert status == 201, started
        await _awaiting(api_a)
        # Time is the subject: a double write would show within two of every replica's release
        # checks (every 0.25 s); none may come.
        await asyncio.sleep(0.5)
        # Written once: one generation for the start, one for the readiness, on both replicas.
        app_a = await _app(api_a)
        await until(lambda: _same(api_b, app_a), 2.0, "A's state on B")
        app_b = await _app(api_b)
        assert app_a == app_b and app_a["generation"] == 3
        assert app_a["release"]["status"] == "awaiting_confirmation"
        assert (await api_b.call("GET", "/apps/shop/release"))[1] == app_a["release"]
        for weights in ({"green": 100}, {"blue": 0}, {"blue": 50, "green": 50}, {"blue": 0, "green": 100}):
            assert (await api_a.call("PUT", "/apps/shop/weights", weights))[0] == 200
            await load.wait_more(20)  # traffic at these weights
        status, confirmed, _ = await api_a.call("POST", "/apps/shop/release/confirm")
        assert status == 200, confirmed
        await until(lambda: _same(api_b, confirmed), 1.0, "the confirm on B")
        await load.wait_more(20)
        await load.stop()
    assert load.failed == []
    assert load.by_body.get("blue", 0) > 0 and load.by_body.get("green", 0) > 0
    assert sum(load.by_body.values()) == load.sent


async def _metric_is(s: aiohttp.ClientSession, rp: RouterProcess, name: str, value: float) -> bool:
    return await _metric(s, rp, name) == value


async def _same(api: Api, app: dict[str, Any]) -> bool:
    return await _app(api) == _shared(app)


async def test_etcd_down_and_back_under_load(backend, router_process, etcd):
    blue, green = await backend("blue"), await backend("green")
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config(
        {"blue": (50, [blue.addr]), "green": (50, [green.addr])}, sticky=False)})
    loads = [Load(rp.url + "/", clients=2, max_seconds=30) for rp in (a, b)]
    async with aiohttp.ClientSession() as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)
        for load in loads:
            load.start()
        await asyncio.gather(*(load.wait_more(20) for load in loads))
        etcd.stop()

        async def down() -> bool:
            return all([await _metric(s, rp, "router_store_up") == 0 for rp in (a, b)])
        await until(down, 2.0, "router_store_up 0 on both replicas")
        status, body, headers = await api_a.call("PUT", "/apps/shop/weights", {"blue": 0})
        assert status == 503 and headers["retry-after"] == "1", body
        assert body["error"]["code"] == "unavailable"
        assert etcd.url("/t") in body["error"]["message"] and "unreachable" in body["error"]["message"]
        for rp in (a, b):
            async with s.get(rp.admin_url + "/readyz") as r:
                assert r.status == 200  # still serving the last state
        await asyncio.gather(*(load.wait_more(50) for load in loads))  # traffic while etcd is down
        sent_while_down = sum(load.sent for load in loads)
        await etcd.start()
        # A change through A as soon as A reaches etcd again, likely before B's watch is back:
        # B's new watch starts from the last revision it saw, so etcd replays the change to it.
        changed: dict[str, Any] = {}

        async def accepted() -> bool:
            nonlocal changed
            status, changed, _ = await api_a.call("PUT", "/apps/shop/weights", {"blue": 0, "green": 100})
            assert status in (200, 503), changed
            return status == 200
        await until(accepted, 5.0, "a change accepted after etcd's return")
        await until(lambda: _same(api_b, changed), 3.0, "A's change on B after etcd's return")

        async def up() -> bool:
            return all([await _metric(s, rp, "router_store_up") == 1 for rp in (a, b)])
        await until(up, 1.0, "router_store_up 1 on both replicas")
        # ... and the other way round, within the usual second.
        status, changed, _ = await api_b.call("PUT", "/apps/shop/weights", {"blue": 100, "green": 0})
        assert status == 200, changed
        await until(lambda: _same(api_a, changed), 1.0, "B's change on A")
        await asyncio.gather(*(load.wait_more(20) for load in loads))
        for load in loads:
            await load.stop()
    assert [f for load in loads for f in load.failed] == []
    assert sum(load.sent for load in loads) > sent_while_down > 0


@pytest.mark.slow
async def test_etcd_hanging_is_noticed_and_survived(backend, router_process, etcd):
    """etcd stopped with SIGSTOP: no socket closes, calls just hang. The probe notices."""
    be = await backend("blue")
    (a,) = await _replicas(router_process, etcd, 1, {"shop": app_config({"blue": (100, [be.addr])})})
    load = Load(a.url + "/", clients=2, max_seconds=30)
    assert etcd.proc is not None
    async with aiohttp.ClientSession() as s:
        api = Api(s, a.admin_port)
        load.start()
        etcd.proc.send_signal(signal.SIGSTOP)
        try:
            async def down() -> bool:
                return await _metric(s, a, "router_store_up") == 0
            await until(down, 6.0, "router_store_up 0 while etcd hangs")
            status, body, _ = await api.call("PUT", "/apps/shop/weights", {"blue": 50})
            assert status == 503 and "unreachable" in body["error"]["message"], body
        finally:
            etcd.proc.send_signal(signal.SIGCONT)

        async def up() -> bool:
            return await _metric(s, a, "router_store_up") == 1
        await until(up, 3.0, "router_store_up 1 after etcd resumes")
        assert (await api.call("PUT", "/apps/shop/weights", {"blue": 50}))[0] == 200
        await load.stop()
    assert load.failed == [] and load.sent > 0


async def test_a_router_started_before_etcd_waits_for_it(backend, router_process, etcd, tmp_path):
    be = await backend("blue")
    etcd.stop()

    async def etcd_later() -> None:
        log = tmp_path / "router0.log"  # the router_process fixture's name for the first router

        async def waiting() -> bool:
            return log.exists() and "waiting up to" in log.read_text()
        await until(waiting, 8.0, "the router waiting for etcd")
        await etcd.start()

    rp, _ = await asyncio.gather(
        router_process(_cfg({"shop": app_config({"blue": (100, [be.addr])})}), ("--store", etcd.url())),
        etcd_later())
    async with aiohttp.ClientSession() as s:
        assert (await get(s, rp))[2] == b"blue\n"
        assert await _metric(s, rp, "router_store_up") == 1


async def test_watch_resumes_after_compaction(etcd):
    """The store itself: a watch started from a revision etcd has compacted away delivers the
    current state rather than an error or nothing; later changes follow."""
    store = EtcdStore("127.0.0.1", etcd.port, "/c")
    try:
        first = await store.save({"generation": 1}, 0)
        version = first
        for gen in range(2, 6):
            version = await store.save({"generation": gen}, version)
        async with aetcd.Client("127.0.0.1", etcd.port) as client:
            await client.compact(version)
        watch = store.watch(first).__aiter__()
        assert await asyncio.wait_for(watch.__anext__(), 5) == ({"generation": 5}, version)
        newer = await store.save({"generation": 6}, version)
        assert await asyncio.wait_for(watch.__anext__(), 5) == ({"generation": 6}, newer)
        await watch.aclose()
    finally:
        await store.close()


async def test_store_conflict_brings_the_newer_state_and_one_secret_for_all(etcd):
    stores = [EtcdStore("127.0.0.1", etcd.port, "/s") for _ in range(3)]
    try:
        secrets = await asyncio.gather(*(st.secret() for st in stores))
        assert len(set(secrets)) == 1 and len(secrets[0]) == 64  # created once, read by the others
        v1 = await stores[0].save({"generation": 1}, 0)
        with pytest.raises(StoreConflict) as e:
            await stores[1].save({"generation": 1}, 0)  # built on "empty": refused
        assert e.value.current == ({"generation": 1}, v1)
        assert await stores[2].load() == ({"generation": 1}, v1)
    finally:
        for st in stores:
            await st.close()


class Partition:
    """A TCP proxy in front of etcd for one replica: ``cut()`` drops its connections and
    refuses new ones (the replica is cut off from etcd), ``heal()`` lets them through again."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.cut_off = False
        self._pipes: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> "Partition":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()
                self._pipes.discard(dst)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.cut_off = True
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()

    def heal(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.mark.slow
async def test_etcd_emptied_under_three_replicas(backend, router_process, etcd):
    """etcd restarted with an empty data directory under three replicas, one of them behind:
    every replica notices, says so, refuses changes meanwhile, and the newest state they hold
    (with the sticky secret they share) is written back; generations continue from it."""
    blue, green = await backend("blue"), await backend("green")
    apps = {"shop": app_config({"blue": (50, [blue.addr]), "green": (50, [green.addr])})}
    a, b = await _replicas(router_process, etcd, 2, apps)
    partition = await Partition(etcd.port).start()
    c = await router_process(_cfg(apps), ("--store", f"etcd://127.0.0.1:{partition.port}/t"))
    try:
        await _emptied(etcd, a, b, c, partition, router_process)
    finally:
        await partition.close()


async def _emptied(etcd: Etcd, a: RouterProcess, b: RouterProcess, c: RouterProcess,
                   partition: Partition, router_process: Any) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        apis = [Api(s, rp.admin_port) for rp in (a, b, c)]
        pinned = {}
        for rp in (a, b, c, a):  # cookies issued by every replica, pinning both versions
            _, headers, body = await get(s, rp)
            pinned[headers["Set-Cookie"].split(";", 1)[0]] = body
        assert set(pinned.values()) == {b"blue\n", b"green\n"}
        for weights in ({"blue": 60, "green": 40}, {"blue": 70, "green": 30}):
            assert (await apis[0].call("PUT", "/apps/shop/weights", weights))[0] == 200
        current = await _app(apis[0])
        await until(lambda: _same(apis[2], current), 1.0, "C up to date")
        # C falls behind: cut off from etcd, it misses the last change before etcd loses
        # everything.
        partition.cut()
        await until(lambda: _metric_is(s, c, "router_store_up", 0), 6.0, "C cut off")
        assert (await apis[0].call("PUT", "/apps/shop/weights", {"blue": 80, "green": 20}))[0] == 200
        newest = await _app(apis[0])
        await until(lambda: _same(apis[1], newest), 1.0, "B has the newest state")
        etcd.stop()
        shutil.rmtree(etcd.data_dir)
        await etcd.start()
        t_back = time.monotonic()
        partition.heal()

        # Detection: a log line naming the cause, router_store_up 0, changes refused (503).
        took: dict[int, float] = {}

        async def all_noticed() -> bool:
            for rp in (a, b, c):
                if rp.admin_port not in took and "data loss: " in rp.log():
                    took[rp.admin_port] = time.monotonic() - t_back
            return len(took) == 3
        await until(all_noticed, 10.0, "every replica noticing the data loss")
        detected = max(took.values())
        status, body, _ = await apis[1].call("PUT", "/apps/shop/weights", {"blue": 10})
        assert status == 503, body
        assert "lost its data" in body["error"]["message"]
        assert await _metric(s, b, "router_store_up") == 0

        # Re-seeded from the newest generation; then up again everywhere.
        async def up() -> bool:
            return all([await _metric(s, rp, "router_store_up") == 1 for rp in (a, b, c)])
        await until(up, 15.0, "router_store_up 1 on every replica")
        accepted = time.monotonic() - t_back
        seen = [await _app(api) for api in apis]
        # C offered its older state, or found the newer one there first: either way the newest
        # is what every replica serves.
        assert seen[0] == seen[1] == seen[2] == newest
        async with aetcd.Client("127.0.0.1", etcd.port) as client:
            stored = json.loads((await client.get(b"/t/state")).value)
            secret = (await client.get(b"/t/secret")).value
        assert stored["generation"] == newest["generation"]
        # Changes go everywhere again; the first one starts a new line, at a generation taken
        # from the clock that no state held anywhere can have.
        t_change = time.time()
        assert (await apis[2].call("PUT", "/apps/shop/weights", {"blue": 90, "green": 10}))[0] == 200
        after = await _app(apis[2])
        assert t_change * 1000 - 1 <= after["generation"] <= time.time() * 1000 + 1
        for api in apis[:2]:
            await until(lambda: _same(api, after), 1.0, "the change on every replica")  # noqa: B023

        # Cookies issued before the loss are valid on every replica, and on a new one, which
        # gets the secret from etcd.
        d = await router_process(_cfg({}), ("--store", etcd.url("/t")))
        for rp in (a, b, c, d):
            for cookie, body in pinned.items():
                _, headers, got = await get(s, rp, headers={"Cookie": cookie})
                assert got == body and "Set-Cookie" not in headers, (rp.admin_url, cookie)
        assert len(secret) == 64
    print(f"\ndata loss noticed by all three replicas {detected:.2f} s after etcd came back "
          f"empty (each: {', '.join(f'{t:.2f}' for t in took.values())} s); changes refused, "
          f"then accepted again {accepted:.2f} s after")



async def test_a_replica_started_while_etcd_is_empty_says_its_secret_is_not_the_shared_one(
        backend, router_process, etcd):
    """etcd restarted empty while the running replica is cut off; a replica started meanwhile
    seeds it and makes a new cookie secret. The running one writes back the state and the
    shared secret; the new one follows the state, keeps its own secret, and says so (log,
    router_sticky_secret_stale 1) rather than leaving cookies to fail silently."""
    blue = await backend("blue")
    apps = {"shop": app_config({"blue": (100, [blue.addr])})}
    partition = await Partition(etcd.port).start()
    try:
        a = await router_process(_cfg(apps), ("--store", f"etcd://127.0.0.1:{partition.port}/t"))
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
            api_a = Api(s, a.admin_port)
            assert (await api_a.call("PUT", "/apps/shop/weights", {"blue": 90}))[0] == 200
            partition.cut()
            await until(lambda: _metric_is(s, a, "router_store_up", 0), 6.0, "A cut off")
            etcd.stop()
            shutil.rmtree(etcd.data_dir)
            await etcd.start()
            d = await router_process(_cfg(apps), ("--store", etcd.url("/t")))
            assert await _metric(s, d, "router_sticky_secret_stale") == 0
            partition.heal()
            await until(lambda: _metric_is(s, d, "router_sticky_secret_stale", 1), 15.0,
                         "D saying its secret is stale")
            assert "the sticky secret was replaced" in d.log()
            assert await _metric(s, a, "router_sticky_secret_stale") == 0
            # D serves the state A wrote back, all the same.
            current = await _app(api_a)
            await until(lambda: _same(Api(s, d.admin_port), current), 5.0, "D following A")
            _, headers, _ = await get(s, a)
            cookie = headers["Set-Cookie"].split(";", 1)[0]
            _, headers, _ = await get(s, d, headers={"Cookie": cookie})
            assert "Set-Cookie" in headers  # A's cookie is not valid on D: re-pinned
    finally:
        await partition.close()
