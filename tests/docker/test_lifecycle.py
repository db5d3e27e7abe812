"""What discovery does over time: Docker's health status, a version whose containers go and
come back, a router restarted with a retired version still running, an Engine that is lost and
found again."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.docker.conftest import (
    LABEL,
    Admin,
    Engine,
    SocketProxy,
    awaiting,
    get,
    metric_sum,
    next_version,
    provider_config,
    routed,
)


async def test_a_container_with_a_health_check_is_routed_once_docker_says_healthy(
        docker: Engine, router_process):
    rp = await router_process(provider_config(docker, published_ports=True))
    web = docker.run("shop-web-1", "shop", "web", LABEL, published=True, args=(
        "--health-cmd", "test -e /tmp/ready", "--health-interval", "1s", "--health-retries", "1"))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        # It answers at once, but Docker does not say healthy: not routed.
        await asyncio.sleep(1.5)
        assert docker.docker("inspect", "-f", "{{.State.Health.Status}}", web.id) in (
            "starting", "unhealthy")
        assert await admin.app("shop") is None
        docker.docker("exec", web.id, "touch", "/tmp/ready")
        await admin.until("routed once healthy", routed(admin, "shop", {"web": (100, [web.addr])}))
        docker.docker("exec", web.id, "rm", "/tmp/ready")
        # Unhealthy: out of rotation, the service and its weight kept.
        await admin.until("out once unhealthy", routed(admin, "shop", {"web": (100, [])}))


async def test_weights_survive_containers_going_and_coming_back_and_a_router_restart(
        docker: Engine, router_process):
    cfg = provider_config(docker, published_ports=True)
    rp = await router_process(cfg)
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        _, v2 = await next_version(docker, admin)
        await admin.until("ready", lambda: awaiting(admin))
        await admin.ok("PUT", "/apps/shop/weights", {"web-v2": 60, "web": 0})
        # Confirmed without removal: the old version keeps running, and stays retired.
        await admin.ok("POST", "/apps/shop/release/confirm")
        assert "shop-web-1" in docker.running()
        # Its containers stop and start again (new published port): same weight, new backend.
        docker.docker("stop", "shop-web-v2-1")
        await admin.until("no backends, weight kept", routed(admin, "shop", {"web-v2": (60, [])}))
        assert (await get(s, rp.url + "/"))[0] == 503
        docker.docker("start", "shop-web-v2-1")
        port = int(docker.docker("port", v2.id, "80/tcp").splitlines()[0].rsplit(":", 1)[1])
        await admin.until("back", routed(admin, "shop", {"web-v2": (60, [f"127.0.0.1:{port}"])}))
        generation = (await admin.app("shop"))["generation"]
    # A restarted router reads weights and what it retired from the store: web is not a new
    # version to release again, though its container still runs.
    rp.proc.send_signal(signal.SIGTERM)
    assert rp.proc.wait(15) == 0
    rp2 = await router_process(cfg)
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp2.admin_port)
        metrics = await admin.until("synced", lambda: _up(admin, docker))
        await asyncio.sleep(0.5)
        app = await admin.app("shop")
        assert app["release"] is None and app["generation"] == generation, (app, rp2.log())
        assert {n: x["weight"] for n, x in app["services"].items()} == {"web-v2": 60}
        assert (await get(s, rp2.url + "/")) == (200, "shop-web-v2-1\n")
        assert metric_sum(metrics, "router_release_info") == 0
        # Once the retired version's container is gone, a new one of that name is a release.
        docker.docker("rm", "-f", "shop-web-1")
        again = docker.run("shop-web-1b", "shop", "web", LABEL, published=True)
        await admin.until("a release of web again", routed(
            admin, "shop", {"web-v2": (60, [f"127.0.0.1:{port}"]), "web": (0, [again.addr])}))


async def _up(admin: Admin, docker: Engine) -> dict[str, float] | None:
    m = await admin.metrics()
    return m if m.get('router_docker_up{endpoint="%s"}' % docker.endpoint) == 1 else None


async def test_engine_lost_keeps_serving_and_catches_up_when_back(docker: Engine, router_process):
    proxy = SocketProxy(docker.socket)
    await proxy.start()
    web1 = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    web2 = docker.run("shop-web-2", "shop", "web", LABEL, published=True)
    cfg = provider_config(docker, published_ports=True)
    cfg["providers"]["docker"]["endpoint"] = f"tcp://127.0.0.1:{proxy.port}"
    endpoint = f'router_docker_up{{endpoint="tcp://127.0.0.1:{proxy.port}"}}'
    rp = await router_process(cfg)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("routed", routed(admin, "shop",
                                            {"web": (100, sorted([web1.addr, web2.addr]))}))
        await proxy.cut()

        async def down() -> bool:
            return (await admin.metrics()).get(endpoint) == 0
        await admin.until("router_docker_up 0", down)
        assert "unreachable" in rp.log()
        # Still serving what it knows.
        assert {(await get(s, rp.url + "/"))[1] for _ in range(4)} == {"shop-web-1\n",
                                                                          "shop-web-2\n"}
        docker.docker("rm", "-f", "shop-web-2")  # unseen while cut off
        await proxy.start()

        async def up() -> bool:
            return (await admin.metrics()).get(endpoint) == 1
        await admin.until("router_docker_up 1", up, timeout=15)
        await admin.until("caught up", routed(admin, "shop", {"web": (100, [web1.addr])}))
        m = await admin.metrics()
        assert metric_sum(m, "router_docker_errors_total") >= 1
    await proxy.cut()
