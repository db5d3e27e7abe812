"""Signals to the whole process group of a router with workers: the workers leave them to the
master, so a SIGHUP to every process is one reload and a SIGTERM to the group one graceful stop
(docs/workers.md); and a worker that dies while the master sends it a change is counted as
exited, never as hung, and its replacement is left alone."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import yaml

from tests.processes import until, worker_pids
from tests.reliability import lifecycle as T
from tests.reliability.harness import metric_sum, metrics
from tests.reliability.production import admin_call


async def _router(workers: int, **timeouts: str) -> tuple[T.Routers, asyncio.base_events.Server]:
    backend = await T.echo_backend(Counter())
    routers = T.Routers(f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", workers,
                        timeouts=timeouts)
    await routers.start()
    return routers, backend


def _stored_generation(routers: T.Routers) -> int:
    with open(os.path.join(routers.dir, "router-state.yaml")) as f:
        return int(yaml.safe_load(f)["generation"])


async def test_sighup_to_every_process_fails_nothing():
    r = await T.sighup_to_every_process()
    print(f"\n{r.scenario}: sent {r.sent}, failed {r.failed}. {r.notes}")
    assert r.problems == []
    assert r.failed == 0 and r.sent > 100


async def test_sigterm_to_the_group_is_one_graceful_stop():
    routers, backend = await _router(2)
    try:
        assert routers.live is not None
        master = routers.live.pid
        workers = worker_pids(master)
        stop, load = asyncio.Event(), T.Load()
        clients = asyncio.ensure_future(asyncio.gather(
            T.run_clients(routers.port, 8, stop, load, (0.0, 0.0), until_closed=True),
            T.run_clients(routers.port, 4, stop, load, (0.2, 1.0), tag="i", until_closed=True)))
        await until(lambda: load.connections >= 12 and load.ok >= 50, 10, "every client served")
        os.killpg(master, signal.SIGTERM)  # systemd's KillMode=control-group
        code = await asyncio.get_running_loop().run_in_executor(None, routers.live.proc.wait, 30)
        async with asyncio.timeout(30):
            await clients
        log = routers.live.log()
        assert code == 0, log[-3000:]
        assert "starting a new one" not in log and "did not stop cleanly" not in log, log[-3000:]
        assert log.count("stopped") == 1
        assert load.failed == [] and load.wrong == [], load.failed
        assert all(not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split()[2] == "Z" for pid in workers)
    finally:
        routers.cleanup()
        backend.close()


async def test_worker_killed_during_a_change_is_exited_not_hung():
    # timeouts.worker 10 s: a stopped worker is not the watchdog's before it is killed here.
    routers, backend = await _router(2, worker="10s")
    try:
        assert routers.live is not None
        master = routers.live.pid
        victim = worker_pids(master)[0]
        os.kill(victim, signal.SIGSTOP)
        generation = _stored_generation(routers)
        change = asyncio.ensure_future(admin_call(
            routers.admin_port, "PUT", "/api/v1/apps/shop/weights", b'{"blue": 0, "green": 100}'))
        # Stored, then sent to the workers: it waits for the stopped one's answer.
        await until(lambda: _stored_generation(routers) > generation, 10, "the change stored")
        assert not change.done()
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # dies with the change in flight
        status, body, _ = await change
        took = time.monotonic() - t0
        assert status == 200, body
        assert took < 5, f"the change waited {took:.1f} s after the worker died"

        async def replaced() -> bool:
            return metric_sum(await metrics(routers.admin_port), "router_workers_up") == 2
        await until(replaced, 30, "the killed worker replaced")
        replacement = [p for p in worker_pids(master) if p != victim]
        await asyncio.sleep(2.5)  # the replacement lives on: nothing kills it for the victim
        m = await metrics(routers.admin_port)
        log = routers.live.log()
        assert metric_sum(m, "router_worker_restarts_total", reason="exited") == 1, log[-3000:]
        assert metric_sum(m, "router_worker_restarts_total", reason="hung") == 0, log[-3000:]
        assert metric_sum(m, "router_workers_up") == 2
        assert [p for p in worker_pids(master) if p != victim] == replacement
        assert "did not take" not in log and "killing it" not in log, log[-3000:]
        assert await routers.stop() == 0
    finally:
        routers.cleanup()
        backend.close()
