"""Clients that make no progress, over real sockets: one that never reads its response, an
unread pipeline, an idle WebSocket tunnel; each closed by its timeout and counted in
``router_client_timeouts_total``, and, at the connection cap, closed to make room for new
clients. The in-process router between raw clients and the aiohttp backends of conftest."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp

from tests.conftest import app_config, router_config
from tests.processes import until
from tests.reliability.harness import metric_sum, metrics

DOWNLOAD = b"GET /download?size=%d HTTP/1.1\r\nHost: app.test\r\n\r\n"


def cfg(be: Any, **top: Any) -> dict[str, Any]:
    return router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)}, **top)


async def silent_client(port: int, data: bytes) -> socket.socket:
    """A client that sends ``data`` and never reads (a small receive buffer, so the router's
    side fills soon)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(s, data)
    return s


async def client_timeouts(srv: Any, reason: str) -> float:
    return metric_sum(await metrics(srv.admin_port), "router_client_timeouts_total",
                      reason=reason)


async def get_ok(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data.startswith(b"HTTP/1.1 200 ")
    except (OSError, TimeoutError):
        return False


async def test_a_client_that_never_reads_its_response_is_closed(backend, router):
    be = await backend("blue")
    srv = await router(cfg(be, timeouts={"grace": "1s", "client_send": "1s"}))
    m = await metrics(srv.admin_port)  # every reason is there from the start, at 0
    assert [m.get(f'router_client_timeouts_total{{reason="{r}"}}') for r in
            ("client_header", "client_body", "client_send", "tunnel_idle")] == [0.0] * 4
    s = await silent_client(srv.port, DOWNLOAD % 20_000_000)
    await until(lambda: srv.ctx.timeouts.get("client_send") == 1, 15, "the client_send timeout")
    await until(lambda: not srv.ctx.connections, 5, "the silent client closed")
    assert await client_timeouts(srv, "client_send") == 1
    s.close()
    assert await get_ok(srv.port)


async def test_an_unread_pipeline_is_closed_and_never_read_whole(backend, router):
    be = await backend("blue")
    srv = await router(cfg(be, timeouts={"grace": "1s", "client_send": "1s"}))
    pipeline = (DOWNLOAD % 200_000) * 5000  # 1 GB of responses asked for, none read
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", srv.port))
    sending = asyncio.ensure_future(loop.sock_sendall(s, pipeline))
    await until(lambda: srv.ctx.timeouts.get("client_send") == 1, 15, "the client_send timeout")
    await until(lambda: not srv.ctx.connections, 5, "the pipelining client closed")
    sending.cancel()
    s.close()
    assert await client_timeouts(srv, "client_send") == 1
    assert be.requests < 500  # it read ahead only what the client could take


async def test_an_idle_websocket_is_closed_after_tunnel_idle(backend, router):
    be = await backend("blue")
    srv = await router(cfg(be, timeouts={"grace": "1s", "tunnel_idle": "1s"}))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{srv.port}/ws",
                                      headers={"Host": "app.test"}) as ws:
            for i in range(6):  # traffic every 0.4 s keeps it for 2.4 s
                await ws.send_str(f"m{i}")
                assert (await ws.receive_str(timeout=2)) == f"blue:m{i}"
                await asyncio.sleep(0.4)
            msg = await ws.receive(timeout=5)  # then silence: closed by the router
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                                aiohttp.WSMsgType.ERROR)
    assert await client_timeouts(srv, "tunnel_idle") == 1


async def test_idle_tunnels_and_silent_readers_make_room_at_the_cap(backend, router):
    be = await backend("blue")
    srv = await router(cfg(be, limits={"max_connections": 12}))
    silent = [await silent_client(srv.port, DOWNLOAD % 20_000_000) for _ in range(6)]
    tunnels = []
    for _ in range(6):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket"
                b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        tunnels.append(w)
    assert len(srv.ctx.connections) == 12
    await until(lambda: all(c.stuck_since() >= 0 for c in srv.ctx.connections), 10,
                   "every connection stuck")
    await asyncio.sleep(1.1)  # stuck for over a second: they may be closed to make room
    served = [await get_ok(srv.port) for _ in range(5)]
    assert served == [True] * 5
    for s in silent:
        s.close()
    for w in tunnels:
        w.close()
