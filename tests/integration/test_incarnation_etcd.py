"""A service's incarnation across replicas sharing etcd: the same on every replica (a cookie one
pins, another honours), and new on every replica once the service is deleted and added again."""

from __future__ import annotations

import aiohttp

from tests.conftest import app_config, get
from tests.integration.test_admin_api import Api
from tests.integration.test_etcd import _replicas, etcd  # noqa: F401  (a fixture)
from tests.processes import until


async def test_incarnations_are_the_same_on_every_replica(backend, router_process, etcd):  # noqa: F811
    blue, green, green2 = await backend("blue"), await backend("green"), await backend("green-2")
    a, b = await _replicas(router_process, etcd, 2, {"shop": app_config({"blue": (100, [blue.addr])})})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        api_a, api_b = Api(s, a.admin_port), Api(s, b.admin_port)

        async def change(api: Api, method: str, path: str, body: object = None) -> int:
            status, out, _ = await api.call(method, path, body)
            assert status in (200, 201, 204), out
            generation = (await api.call("GET", "/apps/shop"))[1]["generation"]

            async def both() -> bool:
                return all([(await x.call("GET", "/apps/shop"))[1]["generation"] == generation
                            for x in (api_a, api_b)])
            await until(both, 5.0, f"generation {generation} on both replicas")
            return generation

        # green is added through A (a new incarnation), and a client is pinned to it there.
        await change(api_a, "PUT", "/apps/shop/services/green",
                     {"weight": 100, "backends": [green.addr]})
        await change(api_a, "PUT", "/apps/shop/weights", {"blue": 0})
        _, headers, body = await get(s, a)
        assert body == b"green\n"
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        # B names green as A does: the cookie holds there, unchanged.
        for _ in range(3):
            _, headers, body = await get(s, b, headers={"Cookie": cookie})
            assert body == b"green\n" and "Set-Cookie" not in headers
        # green is deleted and added again through B, at weight 0: on both replicas the old
        # cookie re-pins by weight (blue), and nobody reaches the new green.
        await change(api_b, "PUT", "/apps/shop/weights", {"blue": 100, "green": 0})
        await change(api_b, "DELETE", "/apps/shop/services/green")
        await change(api_b, "PUT", "/apps/shop/services/green",
                     {"weight": 0, "backends": [green2.addr]})
        for rp in (a, b):
            _, headers, body = await get(s, rp, headers={"Cookie": cookie})
            assert body == b"blue\n" and "Set-Cookie" in headers
        assert green2.requests == 0
