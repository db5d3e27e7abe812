"""What an idle keep-alive client connection holds (docs/performance.md, "Memory per idle
connection"): counted with tracemalloc in a real data plane over loopback; and a connection
that has rested (its parser let go) but is not parked (its idle timeout too near) still serves
its next request and is still closed by its idle timeout. Parked connections:
test_parking.py."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import uvloop

from benchmarks.idle_trace import measure
from tests.conftest import app_config, router_config
from tests.processes import until

# Before connections rested they held 3,540 bytes in 28 blocks each (the parser and its bound
# callbacks, the idle timer, the peer's strings, two empty lists); rested, uvloop's transport
# and handle and the ClientConnection (about 1,800 bytes in 10 blocks). Parked, what is left is
# a ParkedConnection (80 bytes; plain Python boxes its descriptor, idle time and deadline: 3
# blocks more), its slot in the set of connections and in the parking's list by descriptor,
# and what uvloop's map of transports by descriptor keeps of its size (its dict does not
# shrink): about 380 bytes in 1.2 blocks compiled, 490 in 3.9 as plain Python, over 300
# connections (220 and 300 over 2,000).
MAX_BYTES = 650
MAX_BLOCKS = 5


def test_an_idle_connection_holds_its_socket_and_a_record_only():
    trace = uvloop.run(measure(300))
    assert trace.blocks / trace.count <= MAX_BLOCKS, trace.groups[:6]
    assert trace.per_conn <= MAX_BYTES, trace.groups[:6]


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive request; its response head (the body read whole)."""
    writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert found, head
    await asyncio.wait_for(reader.readexactly(int(found.group(1))), 5)
    return head


async def test_a_rested_connection_serves_its_next_request_and_times_out(backend, router):
    be = await backend("blue")
    # The idle timeout within client.TIMER_AHEAD of the moment a connection rests
    # (client.REST_AFTER): it keeps its timer, and is not parked.
    srv = await router(router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)},
                                     timeouts={"grace": "1s", "client_idle": "4s"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    [conn] = srv.ctx.connections
    rested: Any = lambda: conn.parser is None  # noqa: E731
    await until(rested, 10, "the connection rested")
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    assert conn.parser is not None and srv.ctx.connections == {conn}
    await until(rested, 10, "the connection rested again")
    assert conn._timer is not None and srv.ctx.connections == {conn}
    assert await asyncio.wait_for(reader.read(), 20) == b""
    await until(lambda: not srv.ctx.connections, 5, "the connection gone")
    writer.close()
