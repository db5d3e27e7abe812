"""Swarm mode: services (with the stack's namespace) and their tasks become versions and
backends; a new service of the stack claiming the same route is released at weight 0; the whole
release under load, confirmed with the old service removed, fails nothing."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import free_port
from tests.docker.conftest import (
    HOST,
    IMAGE,
    SERVE,
    Admin,
    Engine,
    no_retries,
    provider_config,
    release_with_removal,
    routed,
)
from tests.load import Load


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
