"""Swarm mode: services (with the stack's namespace) and their tasks become versions and
backends; a new service of the stack claiming the same route is released at weight 0; the whole
release under load, confirmed with the old service removed, fails nothing. Tasks are routed
once they run, so that Swarm's own rolling update (start-first) loses nothing; ``swarm: auto``
follows the Engine into and out of a Swarm."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import aiohttp

from tests.conftest import free_port
from tests.docker.conftest import (
    HOST,
    IMAGE,
    LABEL,
    SERVE,
    Admin,
    Engine,
    get,
    no_retries,
    provider_config,
    release_with_removal,
    routed,
)
from tests.load import Load

IMAGE2 = "router-test/busybox:2"  # the same image under another name: an update of the service


def _service(engine: Engine, stack: str, name: str, port: int) -> str:
    """``docker stack deploy``'s shape: ``<stack>_<name>`` with the namespace label, on the
    host network at ``port``."""
    full = f"{stack}_{name}"
    engine.docker("service", "create", "-d", "--name", full, "--network", "host",
                  "--stop-grace-period", "2s",
                  "--label", f"com.docker.stack.namespace={stack}",
                  "--label", f"aliyun.routing.port_{port}=shop",
                  "-e", f"NAME={full}", "-e", f"LISTEN=127.0.0.1:{port}",
                  IMAGE, "sh", "-c", SERVE)
    return f"127.0.0.1:{port}"


async def test_swarm_service_update_released_under_load_fails_nothing(swarm: Engine, docker,
                                                                      router_process):
    web = _service(swarm, "shop", "web", free_port())
    rp = await router_process(provider_config(swarm, swarm="auto"))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("the service routed", routed(admin, "shop", {"web": (100, [web])}),
                          timeout=30)
        assert "following Swarm services" in rp.log()
        load = Load(rp.url + "/", host=HOST, expect=("shop_web\n", "shop_web-v2\n"),
                    max_seconds=90)
        load.start()
        v2 = _service(swarm, "shop", "web-v2", free_port())
        await admin.until("the new service at weight 0", routed(
            admin, "shop", {"web": (100, [web]), "web-v2": (0, [v2])}), timeout=30)
        release = (await admin.app("shop"))["release"]
        assert (release["old"], release["new"]) == (["web"], "web-v2")
        assert "shop_web-v2" not in load.by_body
        await release_with_removal(admin, "web", "web-v2")
        assert swarm.docker("service", "ls", "--format", "{{.Name}}").split() == ["shop_web-v2"]
        await asyncio.sleep(1.0)
        await load.stop()
        m = await admin.metrics()
    print(f"Swarm release under load: {load.sent} requests, {len(load.failed)} failed, "
          f"{load.by_body}")
    assert load.failed == []
    assert load.by_body["shop_web"] > 50 and load.by_body["shop_web-v2"] > 50
    no_retries(m)


def logged(rp: Any, text: str) -> Any:
    """A check for ``Admin.until``: the router's log says ``text``."""
    async def check() -> bool:
        return text in rp.log()
    return check


def _published(engine: Engine, stack: str, name: str, replicas: int = 1) -> str:
    """A service of ``replicas`` tasks, each with port 80 published on a port of its own on the
    host (mode=host, as without the routing mesh), updated start-first."""
    full = f"{stack}_{name}"
    engine.docker("service", "create", "-d", "--name", full, "--replicas", str(replicas),
                  "--publish", "mode=host,target=80", "--stop-grace-period", "2s",
                  "--update-order", "start-first",
                  "--label", f"com.docker.stack.namespace={stack}",
                  "--label", "aliyun.routing.port_80=shop",
                  "-e", f"NAME={full}", "-e", "LISTEN=80", IMAGE, "sh", "-c", SERVE)
    return full


def _running_tasks(engine: Engine, service: str) -> dict[str, float]:
    """{address: when it started running (epoch seconds)} of the service's running tasks."""
    ids = engine.docker("service", "ps", "-q", "--filter", "desired-state=running",
                        service).split()
    tasks = json.loads(engine.docker("inspect", *ids)) if ids else []
    found = {}
    for t in tasks:
        status = t["Status"]
        if status["State"] != "running":
            continue
        port = status["PortStatus"]["Ports"][0]["PublishedPort"]
        stamp = status["Timestamp"]  # "2026-12-06T20:34:11.906730845Z": nanoseconds
        base, _, frac = stamp.rstrip("Z").partition(".")
        when = datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + (frac or "0"))
        found[f"127.0.0.1:{port}"] = when
    return found


async def test_a_one_replica_start_first_update_under_load_loses_nothing(swarm: Engine,
                                                                        router_process):
    swarm.docker("tag", IMAGE, IMAGE2)
    web = _published(swarm, "shop", "web")
    rp = await router_process(provider_config(swarm, swarm="auto", published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)

        async def one_backend() -> str | None:
            backends = (await admin.services("shop")).get("web", (0, []))[1]
            return backends[0] if len(backends) == 1 else None
        first = await admin.until("the task routed", one_backend, timeout=30)
        load = Load(rp.url + "/", host=HOST, expect=("shop_web\n",), max_seconds=90)
        load.start()
        await load.wait_more(200)
        swarm.docker("service", "update", "-d", "--image", IMAGE2, web)

        async def replaced() -> str | None:
            now = await one_backend()
            return now if now not in (None, first) else None
        second = await admin.until("the new task routed instead", replaced, timeout=30)
        # The old task's container is killed after its grace period (2 s); traffic goes on.
        await admin.until("one container left", lambda: asyncio.to_thread(
            lambda: len(swarm.docker("ps", "-q").split()) == 1), timeout=30)
        await load.wait_more(500)
        await load.stop()
        m = await admin.metrics()
    print(f"start-first update of 1 replica under load: {load.sent} requests, "
          f"{len(load.failed)} failed; backend {first} -> {second}")
    assert load.failed == []
    assert load.by_body["shop_web"] > 700
    no_retries(m)


async def test_new_swarm_tasks_are_routed_within_2_s_of_running(swarm: Engine, router_process):
    rp = await router_process(provider_config(swarm, swarm="auto", published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("following Swarm services", logged(rp, "following Swarm services"))
        seen: dict[str, float] = {}  # backend -> when the router first routed it

        async def routed_count(n: int) -> bool:
            for b in (await admin.services("shop")).get("web", (0, []))[1]:
                seen.setdefault(b, time.time())
            return len(seen) >= n
        web = _published(swarm, "shop", "web")
        await admin.until("the task routed", lambda: routed_count(1), timeout=30)
        swarm.docker("service", "scale", "-d", f"{web}=3")
        await admin.until("3 tasks routed", lambda: routed_count(3), timeout=30)
        running = _running_tasks(swarm, web)
    lags = {b: seen[b] - running[b] for b in seen}
    print("routed after running: " + ", ".join(f"{lag:.2f} s" for lag in lags.values()))
    assert set(running) == set(seen)
    assert all(lag < 2.0 for lag in lags.values()), lags


async def test_swarm_auto_follows_the_engine_into_and_out_of_a_swarm(docker: Engine,
                                                                     router_process):
    docker.docker("swarm", "leave", "--force", check=False)
    rp = await router_process(provider_config(docker, swarm="auto", published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("following containers", logged(rp, "following containers"))
        docker.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        web = _published(docker, "shop", "web")

        async def task_routed() -> bool:
            return len((await admin.services("shop")).get("web", (0, []))[1]) == 1
        await admin.until("the service routed", task_routed, timeout=30)
        assert "joined a Swarm: following Swarm services from now on" in rp.log()
        assert (await get(s, rp.url + "/"))[1] == "shop_web\n"
        docker.docker("service", "rm", web)
        docker.docker("swarm", "leave", "--force")
        c = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
        await admin.until("the container routed", routed(admin, "shop", {"web": (100, [c.addr])}),
                          timeout=30)
        assert "left a Swarm: following containers from now on" in rp.log()
        assert (await get(s, rp.url + "/")) == (200, "shop-web-1\n")
