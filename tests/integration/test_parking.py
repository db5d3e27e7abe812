"""Idle connections parked outside uvloop (router.dataplane.parking), in a real router over
loopback: a parked connection serves its next request (and a pipelined pair) as a fresh one
would, its idle timeout closes it, a client's FIN frees it, it is the first closed at the
connection cap, a graceful stop closes it with a FIN, and a handover gives it to a successor."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from router.dataplane.parking import ParkedConnection
from router.process.dataplane import DataPlane
from tests.conftest import app_config, router_config
from tests.integration.test_idle_memory import get
from tests.processes import until

# Long enough for a connection to be parked: it rests after client.REST_AFTER (1 s) and is
# parked only while its idle timeout is more than client.TIMER_AHEAD (5 s) away.
IDLE = "8s"


async def start(backend: Any, router: Any, **top: Any) -> Any:
    be = await backend("blue")
    timeouts = {"grace": "1s", "client_idle": IDLE, **top.pop("timeouts", {})}
    return await router(router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)},
                                      timeouts=timeouts, **top))


def parked(srv: Any) -> list[ParkedConnection]:
    return [c for c in srv.ctx.connections if isinstance(c, ParkedConnection)]


async def until_parked(srv: Any, n: int = 1) -> None:
    await until(lambda: len(parked(srv)) == n and len(srv.ctx.connections) == n, 10,
                f"{n} connection(s) parked")


def nothing_parked(plane: DataPlane) -> bool:
    return not any(plane.parking.by_fd) and not plane.parking.adopting


async def test_a_parked_connection_serves_its_requests_and_times_out(backend, router):
    srv = await start(backend, router)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    await until_parked(srv)
    [rec] = parked(srv)
    fd = rec.fd
    assert fd >= 0 and srv.plane.parking.by_fd[fd] is rec
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    assert rec.fd == -1 and not parked(srv)  # served again by a connection of its own
    [conn] = srv.ctx.connections
    assert not conn.first_request  # as before it was parked (upstream.reuse: safe)
    await until_parked(srv)
    # Two requests in one write: both wait in the kernel, both are answered, in order.
    writer.write(b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\nGET /b HTTP/1.1\r\nHost: app.test\r\n\r\n")
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 5)
    await until_parked(srv)
    start_at = asyncio.get_running_loop().time()
    # The idle timeout closes it, parked: a FIN.
    assert await asyncio.wait_for(reader.read(), 20) == b""
    assert asyncio.get_running_loop().time() - start_at < 8.5
    await until(lambda: not srv.ctx.connections and nothing_parked(srv.plane), 5,
                "the connection gone")
    writer.close()


async def test_parked_records_are_made_again_by_the_next_sweep_and_serve_as_before(
        backend, router):
    """The records of a sweep's parked connections are made again by the next sweep, next to
    each other (Parking.pack): the new ones take their places, the old ones let go, and every
    connection still serves its next request and counts once."""
    srv = await start(backend, router)
    clients = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(3)]
    for c in clients:
        assert (await get(*c)).startswith(b"HTTP/1.1 200 ")
    await until_parked(srv, 3)
    parking = srv.plane.parking
    # Those parked by the last sweep (this test polls on the same loop, every 20 ms: the next
    # sweep is half a second away).
    first = list(parking.fresh)
    assert first and all(r in parked(srv) for r in first)
    await until(lambda: all(r.fd == -1 for r in first), 5, "the records made again")
    now = parked(srv)
    assert len(now) == 3 == len(srv.ctx.connections) and not set(now) & set(first)
    assert all(parking.by_fd[r.fd] is r for r in now) and not parking.fresh
    assert all(r.served for r in now)
    assert all(r.idle_since() == -1.0 for r in first)  # let go: nothing asks them anything
    for c in clients:
        assert (await get(*c)).startswith(b"HTTP/1.1 200 ")
    assert not parked(srv) and len(srv.ctx.connections) == 3
    for _, w in clients:
        w.close()


async def test_a_connection_parked_before_its_first_request_serves_it(backend, router):
    srv = await start(backend, router)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    await until_parked(srv)
    assert not parked(srv)[0].served
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_a_client_closing_a_parked_connection_leaves_nothing(backend, router):
    srv = await start(backend, router)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    await until_parked(srv)
    [rec] = parked(srv)
    fd = rec.fd
    before = os.fstat(fd)
    writer.close()
    await until(lambda: not srv.ctx.connections and nothing_parked(srv.plane), 5,
                "the parked connection freed")
    # Its descriptor closed (or since reused by another socket).
    try:
        now = os.fstat(fd)
    except OSError:
        pass
    else:
        assert (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev)


async def test_parked_connections_are_the_first_closed_at_the_cap(backend, router):
    srv = await start(backend, router, limits={"max_connections": 2})
    first = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(*first)).startswith(b"HTTP/1.1 200 ")
    await until_parked(srv)
    # A second client, in the middle of its request head (not idle).
    second = await asyncio.open_connection("127.0.0.1", srv.port)
    second[1].write(b"GET / HTTP/1.1\r\n")
    await until(lambda: len(srv.ctx.connections) == 2, 5, "the second connection")
    # A third client at the cap: the parked connection (it counts toward the cap) is closed
    # for it.
    third = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(*third)).startswith(b"HTTP/1.1 200 ")
    assert await asyncio.wait_for(first[0].read(), 5) == b""
    second[1].write(b"Host: app.test\r\n\r\n")
    head = await asyncio.wait_for(second[0].readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert srv.ctx.refused == 0 and nothing_parked(srv.plane)
    for _, w in (first, second, third):
        w.close()


async def test_a_graceful_stop_closes_parked_connections(backend, router):
    srv = await start(backend, router, timeouts={"drain_delay": "0s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    await until_parked(srv)
    stop = asyncio.create_task(srv.plane.drain(0.0, 5.0))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # a FIN, not a reset
    await asyncio.wait_for(stop, 5)
    assert not srv.ctx.connections and srv.plane.parking.poll is None
    writer.close()


async def test_a_handover_gives_parked_connections_to_the_successor(backend, router):
    old = await start(backend, router)
    new = await start(backend, router)
    reader, writer = await asyncio.open_connection("127.0.0.1", old.port)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    await until_parked(old)
    sent: list[int] = []
    handed, closed = await old.plane.hand_over(sent.extend, 5.0)
    assert (handed, closed) == (1, 0) and len(sent) == 1
    assert not old.ctx.connections and old.plane.parking.poll is None
    assert await new.plane.adopt(sent) == 1
    # The same TCP connection, now served by the successor.
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    assert len(new.ctx.connections) == 1
    writer.close()


async def test_a_request_waiting_in_the_kernel_is_served_before_a_handover(backend, router):
    """A request that reached a parked socket just before the handover: the connection is
    served again here (never handed over holding a request half read), then handed over."""
    old = await start(backend, router)
    new = await start(backend, router)
    sock = socket.create_connection(("127.0.0.1", old.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    await until_parked(old)
    writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    await writer.drain()
    await until(lambda: old.plane.parking.adopting or not parked(old), 5, "the request seen")
    sent: list[int] = []
    handed, closed = await old.plane.hand_over(sent.extend, 5.0)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert (handed, closed) == (1, 0)
    assert await new.plane.adopt(sent) == 1
    writer.close()
