"""What a container's labels and the provider's settings choose: a container started without
compose is an app named after it; ``aliyun.routing.network`` picks the network to reach it on;
``aliyun.routing.health_check`` is the HTTP path it is checked at, before it is routed and
after; ``empty_apps`` says what becomes of an app whose containers are all removed."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.docker.conftest import (
    LABEL,
    SERVE,
    Admin,
    Engine,
    get,
    provider_config,
    routed,
)


async def test_a_plain_docker_run_is_an_app_named_after_the_container(docker: Engine,
                                                                     router_process):
    rp = await router_process(provider_config(docker, published_ports=True))
    front = docker.run("front", None, None, {"aliyun.routing.port_80": "front"}, published=True)
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("routed", routed(admin, "front", {"front": (100, [front.addr])}))
        assert (await get(s, rp.url + "/", "front.example.test")) == (200, "front\n")
        # Another plain container with the same route is its next version: a release.
        v2 = docker.run("front-v2", None, None, {"aliyun.routing.port_80": "front"},
                        published=True)
        await admin.until("a release of front-v2", routed(
            admin, "front", {"front": (100, [front.addr]), "front-v2": (0, [v2.addr])}))
        assert (await admin.app("front"))["release"]["new"] == "front-v2"


async def test_the_network_label_picks_the_address_of_a_container_on_two_networks(
        docker: Engine, router_process):
    a = docker.network("rt-a", "172.30.97.0/24")
    b = docker.network("rt-b", "172.30.98.0/24")
    rp = await router_process(provider_config(docker))
    web1 = docker.run("shop-web-1", "shop", "web", {**LABEL, "aliyun.routing.network": b},
                      network=a, also=(b,))
    docker.run("shop-web-2", "shop", "web", LABEL, network=a, also=(b,))
    ip = docker.docker("inspect", "-f", '{{(index .NetworkSettings.Networks "rt-b").IPAddress}}',
                       web1.id)
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("routed on rt-b", routed(admin, "shop", {"web": (100, [f"{ip}:80"])}))
        assert (await get(s, rp.url + "/")) == (200, "shop-web-1\n")
    # The other one, with no label and no shared network to choose by, says why it is not.
    assert ("container shop-web-2: on 2 networks with an address (rt-a, rt-b); name the one to "
            "use in its aliyun.routing.network label or providers.docker.network") in rp.log()


async def test_the_health_check_label_gates_and_checks_the_container(docker: Engine,
                                                                     router_process):
    rp = await router_process(provider_config(docker, published_ports=True))
    labels = {**LABEL, "aliyun.routing.health_check": "/ready/"}
    # httpd -v: each answer's status in the container's log.
    web = docker.run("shop-web-1", "shop", "web", labels, published=True,
                     serve=SERVE.replace("httpd -f", "httpd -f -v"))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)

        async def probed_twice() -> bool:
            logs = await asyncio.to_thread(docker.docker, "logs", web.id, merge=True)
            return logs.count("response:404") >= 2
        # It accepts connections, but its health-check path answers 404: not routed.
        await admin.until("probed twice", probed_twice)
        assert await admin.app("shop") is None
        docker.docker("exec", web.id, "mkdir", "-p", "/www/ready")
        docker.docker("exec", web.id, "touch", "/www/ready/index.html")
        await admin.until("routed once the path answers",
                          routed(admin, "shop", {"web": (100, [web.addr])}))
        app = await admin.app("shop")
        assert app["services"]["web"]["health_check"]["path"] == "/ready/"


async def test_empty_apps_keep_or_delete(docker: Engine, router_process):
    for mode in ("keep", "delete"):
        rp = await router_process(provider_config(docker, published_ports=True,
                                                  empty_apps=mode))
        async with aiohttp.ClientSession() as s:
            admin = Admin(s, rp.admin_port)
            web = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
            await admin.until("routed", routed(admin, "shop", {"web": (100, [web.addr])}))
            # Stopped, the container still exists: the app stays either way, with no backend.
            docker.docker("stop", web.id)
            await admin.until("no backend", routed(admin, "shop", {"web": (100, [])}))
            assert (await get(s, rp.url + "/"))[0] == 503
            docker.docker("rm", web.id)
            # Another container routed after it: the removal has been seen.
            other = docker.run("other", None, None, {"aliyun.routing.port_80": "other"},
                               published=True)
            await admin.until("other routed", routed(admin, "other", {"other": (100, [other.addr])}))
            if mode == "keep":
                assert (await admin.services("shop")) == {"web": (100, [])}
                assert (await get(s, rp.url + "/"))[0] == 503
            else:
                assert await admin.app("shop") is None
                assert (await get(s, rp.url + "/"))[0] == 404
        rp.proc.terminate()
        assert rp.proc.wait(15) == 0
        docker.cleanup()


async def test_bookkeeping_alone_makes_no_generation(docker: Engine, router_process):
    """An app deleted through the API is forgotten as Docker's once its containers are gone:
    that is written with the next real change, not as a generation of its own."""
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        web = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
        await admin.until("routed", routed(admin, "shop", {"web": (100, [web.addr])}))
        assert (await admin.call("DELETE", "/apps/shop"))[0] == 204
        docker.docker("rm", "-f", web.id)
        # Other changes happen meanwhile (another app), then shop's containers come back: the
        # app is made again, as new.
        other = docker.run("other-web-1", "other", "web", {"aliyun.routing.port_80": "other"},
                           published=True)
        await admin.until("other routed", routed(admin, "other", {"web": (100, [other.addr])}))
        again = docker.run("shop-web-2", "shop", "web", LABEL, published=True)
        await admin.until("shop again", routed(admin, "shop", {"web": (100, [again.addr])}))
        history = (await admin.ok("GET", "/history"))["history"]
    lines = [f"{e['generation']}: {'; '.join(e['changes'])}" for e in reversed(history)]
    print("\n".join(lines))
    assert all(e["changes"] for e in history if e["generation"] > 1), lines  # 1: the empty seed
    assert [e["generation"] for e in history] == list(range(history[0]["generation"], 0, -1))
