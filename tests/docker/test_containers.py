"""The Docker provider against a real Engine: containers with routing labels become apps,
versions and backends; a stop drains; a new version opens a release at weight 0; the full
release under load fails nothing."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import yaml

from tests.docker.conftest import (
    HOST,
    LABEL,
    Admin,
    Engine,
    get,
    metric_sum,
    next_version,
    no_retries,
    provider_config,
    release_with_removal,
    routed,
)
from tests.integration.test_ctl import ctl
from tests.load import Load


async def test_compose_app_of_two_containers_is_routed_without_yaml_apps(docker: Engine,
                                                                         router_process):
    web1 = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    web2 = docker.run("shop-web-2", "shop", "web", LABEL, published=True)
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("both containers routed",
                          routed(admin, "shop", {"web": (100, sorted([web1.addr, web2.addr]))}))
        app = await admin.app("shop")
        assert app["routes"] == ["shop.example.test", "shop.test/api"]
        assert app["session_sticky"] is True and app["release"] is None
        # Sequential requests alternate between the two (least in flight, round robin on ties).
        bodies = [(await get(s, rp.url + "/"))[1] for _ in range(6)]
        assert bodies in (["shop-web-1\n", "shop-web-2\n"] * 3,
                          ["shop-web-2\n", "shop-web-1\n"] * 3)
        assert (await get(s, rp.url + "/api/", "shop.test"))[0] == 200
        assert (await get(s, rp.url + "/", "shop.test"))[0] == 404  # only /api is routed there
        m = await admin.metrics()
        assert m['router_docker_up{endpoint="%s"}' % docker.endpoint] == 1
        assert metric_sum(m, "router_requests_total", app="shop", code="200") == 7


async def test_docker_stop_under_load_loses_no_request(docker: Engine, router_process):
    web1 = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    web2 = docker.run("shop-web-2", "shop", "web", LABEL, published=True)
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("both routed",
                          routed(admin, "shop", {"web": (100, sorted([web1.addr, web2.addr]))}))
        load = Load(rp.url + "/", host=HOST, expect=("shop-web-1\n", "shop-web-2\n"),
                    max_seconds=60)
        load.start()
        await asyncio.sleep(0.5)
        began = time.monotonic()
        stopping = asyncio.ensure_future(asyncio.to_thread(docker.docker, "stop", "shop-web-2"))
        await admin.until("web-2 out of rotation",
                          routed(admin, "shop", {"web": (100, [web1.addr])}))
        out_after = time.monotonic() - began
        await stopping
        stopped_after = time.monotonic() - began
        before = dict(load.by_body)
        await asyncio.sleep(0.5)
        await load.stop()
        m = await admin.metrics()
    print(f"docker stop under load: {load.sent} requests, {len(load.failed)} failed; "
          f"out of rotation after {out_after:.3f} s, container exited after {stopped_after:.3f} s")
    assert load.failed == []
    assert load.sent > 100 and load.by_body["shop-web-2"] > 0
    assert load.by_body["shop-web-2"] == before["shop-web-2"]  # nothing after it stopped
    # Out on the kill event, long before the container exited (its stop timeout is 2 s) ...
    assert out_after < stopped_after - 1.0
    # ... so no request ever met a stopping or dead container, not even one that was retried.
    no_retries(m)


async def test_new_version_opens_a_release_and_the_full_release_fails_nothing(docker: Engine,
                                                                             router_process):
    rp = await router_process(provider_config(docker, published_ports=True))
    load = Load(rp.url + "/", host=HOST, expect=("shop-web-1\n", "shop-web-v2-1\n"),
                max_seconds=90)
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        _, v2 = await next_version(docker, admin, load)
        release = (await admin.app("shop"))["release"]
        assert release["old"] == ["web"] and release["new"] == "web-v2"
        assert release["old_weights"] == {"web": 100}
        assert release["status"] in ("in_progress", "awaiting_confirmation")
        before = dict(load.by_body)
        await asyncio.sleep(0.3)
        assert "shop-web-v2-1" not in load.by_body  # weight 0: no traffic yet
        assert load.by_body["shop-web-1"] > before.get("shop-web-1", 0)
        await release_with_removal(admin, "web", "web-v2")
        # The old version's container is stopped and removed by then.
        assert "shop-web-1" not in docker.docker("ps", "-a", "--format", "{{.Names}}").split()
        count = load.by_body["shop-web-1"]
        await asyncio.sleep(0.5)
        await load.stop()
        m = await admin.metrics()
        # Once its containers are gone, the retired version is forgotten: a container of that
        # name later is a new version, released at weight 0.
        again = docker.run("shop-web-2", "shop", "web", LABEL, published=True)
        await admin.until("web released again", routed(
            admin, "shop", {"web-v2": (100, [v2.addr]), "web": (0, [again.addr])}))
        assert await _discovered(rp, ["web-v2", "web"])
    print(f"release under load: {load.sent} requests, {len(load.failed)} failed, "
          f"{load.by_body}")
    assert load.failed == []
    assert load.by_body["shop-web-1"] == count
    assert load.by_body["shop-web-1"] > 50 and load.by_body["shop-web-v2-1"] > 50
    no_retries(m)


async def _discovered(rp: object, services: list[str]) -> bool:
    with open(os.path.join(os.path.dirname(rp.config_path), "router-state.yaml")) as f:
        data = yaml.safe_load(f)
    return data.get("discovered", {}).get("shop", {}).get("services") == services


async def test_rollback_with_removal(docker: Engine, router_process):
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await next_version(docker, admin)
        await admin.ok("PUT", "/apps/shop/weights", {"web-v2": 100, "web": 0})
        r = await ctl(rp.admin_url, "release", "rollback", "shop", "--remove")
        assert r.rc == 0 and r.out.startswith("shop: release rolled back"), r
        app = await admin.app("shop")
        assert {n: x["weight"] for n, x in app["services"].items()} == {"web": 100}
        assert docker.running() == {"shop-web-1"}
        assert (await get(s, rp.url + "/")) == (200, "shop-web-1\n")
        # Removal is refused, and nothing changed, for an app that is not Docker's.
        await admin.ok("PUT", "/apps/static", {"routes": ["static.test"], "services": {
            "a": {"backends": ["127.0.0.1:9"]}}})
        await admin.ok("POST", "/apps/static/release", {"service": "b",
                                                        "backends": ["127.0.0.1:10"]})
        r = await ctl(rp.admin_url, "release", "rollback", "static", "--remove")
        assert (r.rc, r.err.strip()) == (1, "routerctl: 409 conflict: app 'static' was not "
                                            "discovered from Docker: there are no containers to "
                                            "remove (field: remove)")
        assert (await admin.app("static"))["release"] is not None
        status, out = await admin.call("POST", "/apps/static/release/rollback", {"remove": 1})
        assert status == 422 and out["error"]["field"] == "remove", out
