"""The router's processes keep to one thread once started, state saves included: a second
thread, even an idle one, makes the kernel take and drop a reference on the file in every
system call on a socket (docs/performance.md, "One thread per process")."""

from __future__ import annotations

import os

import aiohttp
import pytest

from tests.conftest import app_config, get
from tests.integration.test_admin_api import Api
from tests.processes import worker_pids


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["one process", "two workers"])
async def test_the_router_keeps_one_thread_through_state_saves(backend, router_process, workers):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config(
        {"blue": (100, [blue.addr]), "green": (0, [green.addr])}, sticky=False)}}, workers)
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        for gen, (b, g) in enumerate([(0, 100), (50, 50), (0, 100)], start=2):
            status, body, _ = await api.call("PUT", "/apps/shop/weights", {"blue": b, "green": g})
            assert status == 200 and body["generation"] == gen  # saved to the state file
        status, history, _ = await api.call("GET", "/history")
        assert status == 200 and len(history["history"]) >= 3
        assert (await get(s, rp))[2] == b"green\n"
    pids = [rp.proc.pid, *worker_pids(rp.proc.pid)]
    assert len(pids) == 1 + (2 if workers else 0)
    assert {pid: _threads(pid) for pid in pids} == {pid: 1 for pid in pids}
