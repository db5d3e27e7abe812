"""`router serve --workers N`: one port, one state, changes live in every worker before the
admin call answers, metrics summed across workers."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from tests.conftest import app_config, get
from tests.integration.test_admin_api import Api
from tests.processes import stopped, until, worker_pids


async def _fresh_connections(rp, n: int) -> list[bytes]:
    """n requests, each on a new connection (accepted by whichever worker is first)."""
    bodies = []
    for _ in range(n):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         cookie_jar=aiohttp.DummyCookieJar()) as s:
            bodies.append((await get(s, rp))[2])
    return bodies


# Keeps the watchdog from replacing a worker stopped on purpose by _through_each_worker.
PATIENT = {"timeouts": {"worker": "30s"}}


async def _through_each_worker(rp, n: int) -> list[list[bytes]]:
    """n fresh connections through each worker in turn, the others stopped meanwhile."""
    pids = worker_pids(rp.proc.pid)
    per_worker = []
    for pid in pids:
        with stopped(p for p in pids if p != pid):
            per_worker.append(await _fresh_connections(rp, n))
    return per_worker


async def test_two_workers_one_state(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    # upstream.reuse always: each fresh client connection takes its worker's pooled connection.
    rp = await router_process({**PATIENT, "upstream": {"reuse": "always"}, "apps": {"shop": app_config(
        {"blue": (100, [blue.addr]), "green": (0, [green.addr])}, sticky=False)}}, ("--workers", "2"))
    assert len(worker_pids(rp.proc.pid)) == 2
    assert await _through_each_worker(rp, 20) == [[b"blue\n"] * 20] * 2
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        for gen, (b, g, want) in enumerate([(0, 100, b"green\n"), (100, 0, b"blue\n")], start=2):
            status, body, _ = await api.call("PUT", "/apps/shop/weights", {"blue": b, "green": g})
            assert status == 200 and body["generation"] == gen
            # The call has answered: every worker already routes by the new weights.
            assert await _through_each_worker(rp, 20) == [[want] * 20] * 2
        async with s.get(rp.admin_url + "/metrics") as r:
            text = await r.text()
    # 120 requests over two workers, summed.
    assert f'router_requests_total{{app="shop",backend="{blue.addr}",code="200",service="blue"}} 80.0' in text
    assert f'router_requests_total{{app="shop",backend="{green.addr}",code="200",service="green"}} 40.0' in text
    assert "router_config_generation 3.0" in text
    assert blue.connections == 2  # each worker keeps its own pool


async def test_worker_killed_is_restarted_with_current_state(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config(
        {"blue": (100, [blue.addr]), "green": (0, [green.addr])}, sticky=False)}}, ("--workers", "2"))
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        assert (await api.call("PUT", "/apps/shop/weights", {"blue": 0, "green": 100}))[0] == 200
        victim = worker_pids(rp.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            pids = worker_pids(rp.proc.pid)
            if len(pids) != 2 or victim in pids:
                return False
            async with s.get(rp.admin_url + "/metrics") as r:
                return "\nrouter_workers_up 2.0\n" in await r.text()  # the new one serving
        await until(replaced, 10, "the killed worker replaced")
        assert set(await _fresh_connections(rp, 30)) == {b"green\n"}


async def test_workers_stop_gracefully(backend, router_process):
    be = await backend("blue")
    rp = await router_process({"timeouts": {"grace": "5s"},
                               "apps": {"shop": app_config({"web": (1, [be.addr])}, sticky=False)}},
                              ("--workers", "2"))
    pids = worker_pids(rp.proc.pid)
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(get(s, rp, "/slow?delay=1"))
        await until(lambda: be.requests == 1, 5, "the slow request at the backend")
        rp.proc.send_signal(signal.SIGTERM)
        status, _, body = await slow
    assert (status, body) == (200, b"blue\n")
    assert await asyncio.get_running_loop().run_in_executor(None, rp.proc.wait, 15) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
