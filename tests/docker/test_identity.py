"""A backend is a container, not only an address: a container whose process exits by itself is
out of rotation at once (its ``die`` event, before the Engine's listing agrees), and the address
Docker gives to the next container reaches it only if that container is a backend in its own
right, after a routing state without the address."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.docker.conftest import (
    HOST,
    LABEL,
    Admin,
    Engine,
    SERVE,
    SocketProxy,
    awaiting,
    provider_config,
    routed,
)
from tests.load import Load

SUBNET, IP1, IP2 = "172.30.99.0/24", "172.30.99.10", "172.30.99.11"
# Serves in the background and exits by itself once /tmp/exit exists, as a process that
# crashes: no stop signal, no kill event, only die.
EXITS = SERVE.replace("exec httpd -f", "httpd") + " && while [ ! -e /tmp/exit ]; do sleep 0.05; done"


def _take_address(docker: Engine, name: str, ip: str, net: str, project: str | None = None,
                  service: str | None = None, labels: dict[str, str] | None = None) -> float:
    """Run a container at ``ip`` as soon as Docker has freed it; when it was started."""
    deadline = time.monotonic() + 10
    while True:
        try:
            docker.run(name, project, service, labels, network=net, args=("--ip", ip))
            return time.monotonic()
        except AssertionError as e:  # still taken: the dead one's network is being torn down
            assert "Address already in use" in str(e) and time.monotonic() < deadline, e
            docker.docker("rm", "-f", name, check=False)
            time.sleep(0.05)


async def test_a_container_that_exits_is_out_at_once_and_its_address_reaches_no_other(
        docker: Engine, router_process):
    net = docker.network("rt-die", SUBNET)
    web1 = docker.run("shop-web-1", "shop", "web", LABEL, network=net, args=("--ip", IP1),
                      serve=EXITS)
    web2 = docker.run("shop-web-2", "shop", "web", LABEL, network=net, args=("--ip", IP2))
    rp = await router_process(provider_config(docker, network=net))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("both routed",
                          routed(admin, "shop", {"web": (100, sorted([web1.addr, web2.addr]))}))
        load = Load(rp.url + "/", host=HOST, max_seconds=60,
                    expect=("shop-web-1\n", "shop-web-2\n", "intruder\n"))
        load.start()
        await load.wait_more(200)
        docker.docker("exec", web1.id, "touch", "/tmp/exit")
        began = time.monotonic()
        # Docker gives the freed address to the next container: one with no routing labels.
        taking = asyncio.ensure_future(asyncio.to_thread(_take_address, docker, "intruder", IP1,
                                                         net))
        await admin.until("web-1 out of rotation", routed(admin, "shop", {"web": (100, [web2.addr])}),
                          timeout=30)
        out_after = time.monotonic() - began
        taken = await taking
        async with s.get(f"http://{IP1}/") as r:
            assert await r.text() == "intruder\n"  # it really answers at web-1's address
        await asyncio.sleep(1.0)
        await load.stop()
        services = await admin.services("shop")
    print(f"process exit under load: {load.sent} requests, {len(load.failed)} failed, "
          f"{load.by_body}; out of rotation after {out_after:.3f} s, address taken again after "
          f"{taken - began:.3f} s")
    assert out_after < 1.0
    assert load.by_body["intruder"] == 0
    assert services == {"web": (100, [web2.addr])}
    assert load.by_body["shop-web-2"] > 100
    # At most the requests the process was answering when it died (one per client): none of
    # those sent after its death met it.
    assert len(load.failed) <= load.clients, load.failed


async def test_an_address_passes_to_another_container_only_through_a_state_without_it(
        docker: Engine, router_process):
    """Seen late (the Engine cut off meanwhile): web-1 is gone and web-3, of the same service,
    has its address. The address leaves the routing state, and comes back for web-3 once it
    answers: no backend state (health, pooled connections, stickiness) passes between them."""
    net = docker.network("rt-reuse", SUBNET)
    proxy = SocketProxy(docker.socket)
    await proxy.start()
    web1 = docker.run("shop-web-1", "shop", "web", LABEL, network=net, args=("--ip", IP1))
    web2 = docker.run("shop-web-2", "shop", "web", LABEL, network=net, args=("--ip", IP2))
    cfg = provider_config(docker, network=net)
    cfg["providers"]["docker"]["endpoint"] = f"tcp://127.0.0.1:{proxy.port}"
    rp = await router_process(cfg)
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        both = sorted([web1.addr, web2.addr])
        await admin.until("both routed", routed(admin, "shop", {"web": (100, both)}))
        before = (await admin.app("shop"))["generation"]
        up = f'router_docker_up{{endpoint="tcp://127.0.0.1:{proxy.port}"}}'
        await proxy.cut()

        async def down() -> bool:
            return (await admin.metrics()).get(up) == 0
        await admin.until("router_docker_up 0", down)
        docker.docker("rm", "-f", web1.id)
        await asyncio.to_thread(_take_address, docker, "shop-web-3", IP1, net, "shop", "web", LABEL)
        await proxy.start()

        async def changes() -> list[list[str]] | None:
            history = (await admin.ok("GET", "/history?app=shop"))["history"]
            entries = sorted((e for e in history if e["generation"] > before),
                             key=lambda e: e["generation"])
            return [e["changes"] for e in entries] if len(entries) >= 2 else None
        seen = await admin.until("two changes", changes, timeout=15)
        await asyncio.sleep(0.5)
        assert await changes() == seen  # and no more
        assert (await admin.services("shop")) == {"web": (100, both)}
    await proxy.cut()
    assert seen == [[f"backends web -{IP1}:80"], [f"backends web +{IP1}:80"]]


async def test_remove_waits_for_a_container_s_own_stop_timeout(docker: Engine, router_process):
    """Docker's default stop timeout (10 s) for a process that ignores SIGTERM (busybox's httpd
    as PID 1): the removal takes a little more than 10 s, and succeeds."""
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        web = docker.run("shop-web-1", "shop", "web", LABEL, published=True, stop_timeout=None)
        await admin.until("web routed", routed(admin, "shop", {"web": (100, [web.addr])}))
        v2 = docker.run("shop-web-v2-1", "shop", "web-v2", LABEL, published=True)
        await admin.until("the release ready", routed(
            admin, "shop", {"web": (100, [web.addr]), "web-v2": (0, [v2.addr])}))
        await admin.until("awaiting confirmation", lambda: awaiting(admin))
        await admin.ok("PUT", "/apps/shop/weights", {"web-v2": 100, "web": 0})
        began = time.monotonic()
        status, out = await admin.call("POST", "/apps/shop/release/confirm", {"remove": True})
        took = time.monotonic() - began
    print(f"confirm with removal of a container with the default stop timeout: {took:.1f} s")
    assert status == 200, out
    assert took >= 10.0
    assert "shop-web-1" not in docker.docker("ps", "-a", "--format", "{{.Names}}").split()
