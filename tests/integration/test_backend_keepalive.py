"""Whether a backend connection goes back to the pool after a response without a body, end to
end: the real router process between one keep-alive client connection and a raw backend that
counts its connections and the requests each one carries (RFC 9112 9.3: HTTP/1.1 persists
unless ``close`` is among the Connection options, HTTP/1.0 only with ``keep-alive``; a
response without a body is complete at its head, whatever its status)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.conftest import RouterProcess, app_config, router_config, until

N = 6


@dataclass
class Backend:
    """Answers each request head with ``answer``. After an answer that says ``Connection:
    close`` it keeps reading, as a backend that has not closed yet: a request that still comes
    on that connection is counted in ``after_close`` (and not answered), the router's close is
    counted in ``closed_by_router``. ``linger`` False: it closes at once instead, as most do."""

    answer: bytes
    linger: bool = True
    requests: list[int] = field(default_factory=list)  # per connection, in accept order
    after_close: int = 0
    closed_by_router: int = 0
    open: int = 0
    port: int = 0
    server: asyncio.base_events.Server | None = None

    async def start(self) -> "Backend":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.requests)
        self.requests.append(0)
        self.open += 1
        closing = b"\r\nconnection: close\r\n" in self.answer.lower()
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests[index] += 1
                writer.write(self.answer)
                await writer.drain()
                if closing:
                    if self.linger:
                        try:
                            data = await asyncio.wait_for(reader.read(65536), 5)
                        except (TimeoutError, ConnectionError):
                            data = b""
                        if data:
                            self.after_close += 1
                        else:
                            self.closed_by_router += 1
                    return
        finally:
            self.open -= 1
            writer.close()


async def _exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request in turn on one client connection; the head of each answer (none of them
    has a body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heads = []
    try:
        for req in requests:
            writer.write(req)
            heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
    finally:
        writer.close()
    return heads


async def _counters(admin_url: str) -> dict[str, float]:
    """The router's retries and backend errors (reason ``reset``: a connection that closed
    before it answered), summed over their labels."""
    async with aiohttp.ClientSession() as s:
        async with s.get(admin_url + "/metrics") as r:
            text = await r.text()
    out = {"retries": 0.0, "resets": 0.0}
    for line in text.splitlines():
        if line.startswith("router_retries_total{"):
            out["retries"] += float(line.split()[-1])
        elif line.startswith("router_upstream_errors_total{") and 'reason="reset"' in line:
            out["resets"] += float(line.split()[-1])
    return out


async def _n_requests(router_process, be: Backend,
                      method: bytes) -> tuple[RouterProcess, list[bytes]]:
    """The router process in front of ``be``, and N requests through it on one client
    connection, each answered with the backend's status; the router and the answers' heads."""
    rp = await router_process(router_config({"shop": app_config({"web": (1, [be.addr])},
                                                                 sticky=False)}))
    heads = await _exchange(rp.port, [method + b" / HTTP/1.1\r\nHost: app.test\r\n\r\n"] * N)
    assert [h[9:12] for h in heads] == [be.answer[9:12]] * N
    return rp, heads


CLOSING = [
    (b"GET", b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nConnection: close\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
    (b"GET", b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"),
]


@pytest.mark.parametrize("linger", [True, False], ids=["lingers", "closes"])
@pytest.mark.parametrize("method,answer", CLOSING, ids=lambda v: v[:32].decode())
async def test_bodyless_response_with_connection_close_is_not_pooled(
        router_process, method, answer, linger):
    """A backend that answers without a body and says ``Connection: close``: every request
    succeeds on a connection of its own, and none is sent on a connection the backend said it
    closes (no retry, no reset)."""
    be = await Backend(answer, linger=linger).start()
    try:
        rp, _ = await _n_requests(router_process, be, method)
        await until(lambda: be.open == 0, 10, "the backend's connections closed")
        assert be.after_close == 0, be.requests
        assert be.requests == [1] * N
        if linger:
            assert be.closed_by_router == N
        assert await _counters(rp.admin_url) == {"retries": 0, "resets": 0}
    finally:
        be.server.close()


KEPT = [
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"),
    (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"),
    (b"GET", b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n"),
    (b"GET", b"HTTP/1.0 304 Not Modified\r\nConnection: Keep-Alive\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (b"HEAD", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"),
]


@pytest.mark.parametrize("method,answer", KEPT, ids=lambda v: v[:40].decode())
async def test_bodyless_keep_alive_response_reuses_one_backend_connection(
        router_process, method, answer):
    """A response without a body from a backend that keeps its connection: N requests over
    one client connection take one backend connection."""
    be = await Backend(answer).start()
    try:
        rp, heads = await _n_requests(router_process, be, method)
        assert not any(b"connection: close" in h.lower() for h in heads)
        assert be.requests == [N]
        assert await _counters(rp.admin_url) == {"retries": 0, "resets": 0}
    finally:
        be.server.close()
