"""The Docker provider against a real Engine: containers with routing labels become apps,
versions and backends; a stop drains; a new version opens a release at weight 0; the full
release under load fails nothing; health, restarts and a lost Engine."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp

from tests.docker.conftest import Admin, Engine, metric_sum, provider_config
from tests.integration.test_release_under_load import Load

LABEL = {"aliyun.routing.port_80": "shop;http://shop.test/api"}
HOST = "shop.example.test"


async def _get(s: aiohttp.ClientSession, url: str, host: str = HOST) -> tuple[int, str]:
    async with s.get(url, headers={"Host": host}) as r:
        return r.status, await r.text()


def _routed(admin: Admin, app: str, expected: dict[str, tuple[int, list[str]]]) -> Any:
    async def check() -> Any:
        services = await admin.services(app)
        return services if services == expected else None
    return check


def _no_failures(m: dict[str, float]) -> None:
    assert metric_sum(m, "router_retries_total", app="shop") == 0
    assert metric_sum(m, "router_upstream_errors_total", app="shop") == 0


async def test_compose_app_of_two_containers_is_routed_without_yaml_apps(docker: Engine,
                                                                         router_process):
    web1 = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    web2 = docker.run("shop-web-2", "shop", "web", LABEL, published=True)
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("both containers routed",
                          _routed(admin, "shop", {"web": (100, sorted([web1.addr, web2.addr]))}))
        app = await admin.app("shop")
        assert app["routes"] == ["shop.example.test", "shop.test/api"]
        assert app["session_sticky"] is True and app["release"] is None
        # Sequential requests alternate between the two (least in flight, round robin on ties).
        bodies = [(await _get(s, rp.url + "/"))[1] for _ in range(6)]
        assert bodies in (["shop-web-1\n", "shop-web-2\n"] * 3,
                          ["shop-web-2\n", "shop-web-1\n"] * 3)
        assert (await _get(s, rp.url + "/api/", "shop.test"))[0] == 200
        assert (await _get(s, rp.url + "/", "shop.test"))[0] == 404  # only /api is routed there
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
                          _routed(admin, "shop", {"web": (100, sorted([web1.addr, web2.addr]))}))
        load = Load(rp.url + "/", host=HOST, expect=("shop-web-1\n", "shop-web-2\n"),
                    max_seconds=60)
        load.start()
        await asyncio.sleep(0.5)
        began = time.monotonic()
        stopping = asyncio.ensure_future(asyncio.to_thread(docker.docker, "stop", "shop-web-2"))
        await admin.until("web-2 out of rotation",
                          _routed(admin, "shop", {"web": (100, [web1.addr])}))
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
    _no_failures(m)


async def test_new_version_opens_a_release_and_the_full_release_fails_nothing(docker: Engine,
                                                                             router_process):
    web = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("web routed", _routed(admin, "shop", {"web": (100, [web.addr])}))
        load = Load(rp.url + "/", host=HOST, expect=("shop-web-1\n", "shop-web-v2-1\n"),
                    max_seconds=90)
        load.start()
        v2 = docker.run("shop-web-v2-1", "shop", "web-v2", LABEL, published=True)
        await admin.until("the new version at weight 0", _routed(
            admin, "shop", {"web": (100, [web.addr]), "web-v2": (0, [v2.addr])}))
        release = (await admin.app("shop"))["release"]
        assert release["old"] == ["web"] and release["new"] == "web-v2"
        assert release["old_weights"] == {"web": 100}
        assert release["status"] in ("in_progress", "awaiting_confirmation")
        await admin.until("ready", lambda: _status(admin, "awaiting_confirmation"))
        await asyncio.sleep(0.3)
        assert "shop-web-v2-1" not in load.by_body  # weight 0: no traffic yet
        await admin.ok("PUT", "/apps/shop/weights", {"web-v2": 100})
        await asyncio.sleep(0.5)
        await admin.ok("PUT", "/apps/shop/weights", {"web": 0})
        await asyncio.sleep(0.5)
        app = await admin.ok("POST", "/apps/shop/release/confirm", {"remove": True})
        assert {n: x["weight"] for n, x in app["services"].items()} == {"web-v2": 100}
        assert app["release"] is None
        # The old version's container is stopped and removed by then.
        assert "shop-web-1" not in docker.docker("ps", "-a", "--format", "{{.Names}}").split()
        count = load.by_body["shop-web-1"]
        await asyncio.sleep(0.5)
        await load.stop()
        assert load.by_body["shop-web-1"] == count
        m = await admin.metrics()
        # Once its containers are gone, the retired version is forgotten.
        await admin.until("web forgotten", lambda: _discovered(rp, ["web-v2"]))
    print(f"release under load: {load.sent} requests, {len(load.failed)} failed, "
          f"{load.by_body}")
    assert load.failed == []
    assert load.by_body["shop-web-1"] > 50 and load.by_body["shop-web-v2-1"] > 50
    _no_failures(m)


async def _status(admin: Admin, status: str) -> bool:
    app = await admin.app("shop")
    return bool(app and app["release"] and app["release"]["status"] == status)


async def _discovered(rp: Any, services: list[str]) -> bool:
    import yaml

    with open(os.path.join(os.path.dirname(rp.config_path), "router-state.yaml")) as f:
        data = yaml.safe_load(f)
    return data.get("discovered", {}).get("shop", {}).get("services") == services


async def test_rollback_with_removal(docker: Engine, router_process):
    web = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    rp = await router_process(provider_config(docker, published_ports=True))
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, rp.admin_port)
        await admin.until("web routed", _routed(admin, "shop", {"web": (100, [web.addr])}))
        v2 = docker.run("shop-web-v2-1", "shop", "web-v2", LABEL, published=True)
        await admin.until("release", _routed(
            admin, "shop", {"web": (100, [web.addr]), "web-v2": (0, [v2.addr])}))
        await admin.ok("PUT", "/apps/shop/weights", {"web-v2": 100, "web": 0})
        app = await admin.ok("POST", "/apps/shop/release/rollback", {"remove": True})
        assert {n: x["weight"] for n, x in app["services"].items()} == {"web": 100}
        assert docker.running() == {"shop-web-1"}
        assert (await _get(s, rp.url + "/")) == (200, "shop-web-1\n")
        # Removal is refused, and nothing changed, for an app that is not Docker's.
        await admin.ok("PUT", "/apps/static", {"routes": ["static.test"], "services": {
            "a": {"backends": ["127.0.0.1:9"]}}})
        await admin.ok("POST", "/apps/static/release", {"service": "b",
                                                        "backends": ["127.0.0.1:10"]})
        status, out = await admin.call("POST", "/apps/static/release/rollback", {"remove": True})
        assert status == 409 and out["error"]["field"] == "remove", out
        assert (await admin.app("static"))["release"] is not None
        status, out = await admin.call("POST", "/apps/static/release/rollback", {"remove": 1})
        assert status == 422 and out["error"]["field"] == "remove", out
