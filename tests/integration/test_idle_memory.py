"""What an idle keep-alive client connection holds (docs/performance.md, "Memory per idle
connection"): counted with tracemalloc in a real data plane over loopback; and a connection
that has rested (its parser and idle timer let go) still serves its next request and is still
closed by its idle timeout."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import uvloop

from benchmarks.idle_trace import measure
from tests.conftest import app_config, router_config
from tests.processes import until

# Before connections rested they held 3,540 bytes in 28 blocks each (the parser and its bound
# callbacks, the idle timer, the peer's strings, two empty lists); what is left is uvloop's
# transport and handle (about 1,370 bytes in 8 blocks, its cache of the transport by
# descriptor included) and the ClientConnection object.
MAX_BYTES = 2300
MAX_BLOCKS = 12


def test_an_idle_connection_holds_its_transport_and_its_object_only():
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
    # The idle timeout further than client.TIMER_AHEAD from the moment a connection rests
    # (client.REST_AFTER), so that its timer is let go too.
    srv = await router(router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)},
                                     timeouts={"grace": "1s", "client_idle": "9s"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    [conn] = srv.ctx.connections
    rested: Any = lambda: conn.parser is None and conn._timer is None  # noqa: E731
    await until(rested, 10, "the connection rested")
    assert (await get(reader, writer)).startswith(b"HTTP/1.1 200 ")
    assert conn.parser is not None and conn._timer is not None
    await until(rested, 10, "the connection rested again")
    # Only the timer set again near the idle timeout can close it now.
    assert await asyncio.wait_for(reader.read(), 20) == b""
    await until(lambda: not srv.ctx.connections, 5, "the connection gone")
    writer.close()
