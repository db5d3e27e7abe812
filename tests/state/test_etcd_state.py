"""The routing-state rules with a real etcd shared by two replicas: the history of every kind
of change, no write for a change that changes nothing, and a SIGHUP on one replica that never
touches the cluster's state."""

from __future__ import annotations

import signal

import aetcd
import aiohttp

from tests.conftest import app_config
from tests.integration.test_admin_api import Api
from tests.integration.test_etcd import Etcd, _replicas, _shared, etcd  # noqa: F401  (etcd: a fixture)
from tests.processes import until
from tests.state.changes import check_history, every_kind_of_change
from tests.state.conftest import wait_log

PREFIX = "/t"


async def _revisions(e: Etcd) -> tuple[int, int, list[int]]:
    """etcd's revision, the state key's, and the generations of the history keys."""
    client = aetcd.Client("127.0.0.1", e.port)
    try:
        got = await client.get_prefix(f"{PREFIX}/".encode())
        state = [kv.mod_revision for kv in got if kv.key == f"{PREFIX}/state".encode()]
        history = [int(kv.key.rsplit(b"/", 1)[1]) for kv in got
                   if kv.key.startswith(f"{PREFIX}/history/".encode())]
        return got.header.revision, state[0], sorted(history)
    finally:
        await client.close()


async def _history(api: Api) -> list[dict]:
    status, body, _ = await api.call("GET", "/history?limit=1000")
    assert status == 200, body
    return body["history"]


async def test_history_of_every_kind_of_change_in_etcd(backend, router_process, etcd):
    b1, b2 = await backend("one"), await backend("two")
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config(
        {"web": (100, [b1.addr])}, routes=["shop.test"])}, prefix=PREFIX)
    async with aiohttp.ClientSession() as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)
        expected = await every_kind_of_change(api_a, b1.addr, b2.addr)
        entries = await _history(api_a)
        seed = entries.pop()
        assert (seed["generation"], seed["operation"], seed["client"]) == (1, "seed", "router")
        check_history(entries, expected, "127.0.0.1", None, 2)
        # Every replica reads the one history, kept in etcd, one key per entry.
        assert await _history(api_b) == entries + [seed]
        _, _, keys = await _revisions(etcd)
        assert keys == list(range(1, len(expected) + 2))

        # A change that changes nothing writes nothing to etcd, on either replica.
        before = await _revisions(etcd)
        status, app, _ = await api_a.call("GET", "/apps/cart")

        async def b_has_it() -> bool:  # B learns of A's changes through etcd's watch
            return _shared((await api_b.call("GET", "/apps/cart"))[1]) == _shared(app)
        await until(b_has_it, 2.0, "A's last change on B")
        for api in (api_a, api_b):
            assert (await api.call("PUT", "/apps/cart/weights", {"v3": 100}))[0] == 200
            status, same, _ = await api.call("PUT", "/apps/cart", app)
            assert status == 200 and same == app
        assert await _revisions(etcd) == before

    # A restarted replica shows the same history.
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(15) == 0
    (c,) = await _replicas(router_process, etcd, 1, {}, prefix=PREFIX)
    async with aiohttp.ClientSession() as s:
        assert await _history(Api(s, c.admin_port)) == entries + [seed]


async def test_sighup_on_one_replica_never_touches_the_cluster(backend, router_process, etcd):
    blue, green = await backend("blue"), await backend("green")
    apps = {"shop": app_config({"blue": (100, [blue.addr]), "green": (0, [green.addr])})}
    a, b = await _replicas(router_process, etcd, 2, apps, prefix=PREFIX)
    async with aiohttp.ClientSession() as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)
        status, state, _ = await api_a.call("PUT", "/apps/shop/weights", {"blue": 0, "green": 100})
        assert status == 200

        async def b_has_it() -> bool:
            return _shared((await api_b.call("GET", "/apps/shop"))[1]) == _shared(state)
        await until(b_has_it, 5.0, "the change live on B")
        before = await _revisions(etcd)
        state = (await api_a.call("GET", "/apps"))[1]
        # B's file now says something else entirely; a log rotation tool sends B a SIGHUP.
        b.write_config({"timeouts": {"grace": "1s", "response": "20s"}, "apps": {
            "other": app_config({"web": (100, [blue.addr])}, routes=["other.test"])}})
        b.proc.send_signal(signal.SIGHUP)
        log = await wait_log(b, "timeouts.response 1m -> 20s")
        log = await wait_log(b, "differ from the routing state")
        assert "shop: app deleted; other: app added" in log
        assert await _revisions(etcd) == before
        for api in (api_a, api_b):
            assert _shared((await api.call("GET", "/apps"))[1]) == _shared(state)
