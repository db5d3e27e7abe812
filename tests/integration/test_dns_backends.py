"""A DNS name as a backend (README "DNS names as backends"): resolved when a connection is
opened, its addresses tried in turn, one backend for balancing and health."""

from __future__ import annotations

import socket

import aiohttp

from tests.conftest import app_config, get, router_config


async def test_a_name_is_one_backend_whose_addresses_are_tried_in_turn(backend, router):
    be = await backend("named")
    addresses = {a[4][0] for a in socket.getaddrinfo("localhost", be.port, type=socket.SOCK_STREAM)}
    assert "127.0.0.1" in addresses  # the backend listens there only; ::1, if listed, refuses
    srv = await router(router_config({"shop": app_config(
        {"web": (100, [f"localhost:{be.port}"])}, sticky=False)}))
    async with aiohttp.ClientSession() as s:
        assert [(await get(s, srv))[::2] for _ in range(3)] == [(200, b"named\n")] * 3
    (service,) = srv.ctx.table.apps["shop"].services
    assert [b.key for b in service.backends] == [f"localhost:{be.port}"]
