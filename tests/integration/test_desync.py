"""The classes of request and response that once got through, end to end over real sockets:
the in-process router between raw clients and a backend that reads with h11 (an HTTP/1.1
implementation of its own) and answers what each test tells it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

import h11

from tests.conftest import router_config

SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n"


@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes = b""
    complete: bool = False


@dataclass
class H11Backend:
    """Reads requests with h11; ``answer(request)`` gives the raw response bytes (a 101 ends
    HTTP on that connection). Answers when the request is read whole, or at once after its head
    when ``early`` (as a server refusing a request before reading its body does)."""

    answer: Callable[[Seen], bytes]
    early: bool = False
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: Any = None

    async def start(self) -> "H11Backend":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                    return
                if isinstance(ev, h11.Request):
                    req = Seen(ev.method, ev.target, {k.lower(): v for k, v in ev.headers.raw_items()})
                    self.seen.append(req)
                    if self.early:
                        self._respond(conn, writer, req)
                elif isinstance(ev, h11.Data):
                    self.seen[-1].body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    req = self.seen[-1]
                    req.complete = True
                    if conn.our_state is h11.SEND_RESPONSE:
                        if self._respond(conn, writer, req):
                            return
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
        except h11.RemoteProtocolError:
            pass
        finally:
            writer.close()

    def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, req: Seen) -> bool:
        raw = self.answer(req)
        writer.write(raw)
        if raw.startswith(b"HTTP/1.1 101"):
            return True
        # h11 follows its own state through the response, to read the next request after it.
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=req.method, target=req.target, headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(raw)
        while (ev := client.next_event()) is not h11.NEED_DATA:
            if isinstance(ev, h11.Response):
                conn.send(h11.Response(status_code=ev.status_code, headers=ev.headers))
            elif isinstance(ev, (h11.Data, h11.EndOfMessage)):
                conn.send(ev)
                if isinstance(ev, h11.EndOfMessage):
                    break
        return False


def ok(req: Seen) -> bytes:
    body = b"seen " + req.target
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def raw(port: int, data: bytes, timeout: float = 1.5) -> tuple[bytes, bool]:
    """Send ``data``; what came back until the close (True) or ``timeout`` of silence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                closed = True
                break
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    writer.close()
    return out, closed


def apps(shop: str, admin: str | None = None, sticky: bool = False) -> dict[str, Any]:
    a: dict[str, Any] = {"shop": {"routes": ["shop.test"], "session_sticky": sticky,
                                  "services": {"web": {"backends": [shop]}}}}
    if admin:
        a["admin"] = {"routes": ["shop.test/admin"], "session_sticky": False,
                      "services": {"web": {"backends": [admin]}}}
    return router_config(a)


async def test_upgrade_body_refused_early_does_not_reach_the_next_client(router):
    """A request with Connection: Upgrade and a Content-Length body, refused by a backend
    that answers before reading the body: the body is sent as a body, so the pooled
    connection is clean and the next client gets the answer to its own request."""
    be = await H11Backend(lambda r: b"HTTP/1.1 401 No\r\nContent-Length: 2\r\n\r\nno"
                          if r.target == b"/up" else ok(r), early=True).start()
    cfg = apps(be.addr)
    cfg["upstream"] = {"reuse": "always"}  # each new client takes the pooled connection
    srv = await router(cfg)
    out, closed = await raw(srv.port, b"POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade"
                                      b"\r\nUpgrade: websocket\r\nContent-Length: %d\r\n\r\n%b"
                                      % (len(SMUGGLE), SMUGGLE))
    assert out.startswith(b"HTTP/1.1 401 ") and closed
    for i in range(3):
        out, _ = await raw(srv.port, b"GET /next%d HTTP/1.1\r\nHost: shop.test\r\n"
                                     b"Connection: close\r\n\r\n" % i)
        assert out.endswith(b"seen /next%d" % i), out
    assert [(s.target, s.body) for s in be.seen] == [(b"/up", SMUGGLE), (b"/next0", b""),
                                                      (b"/next1", b""), (b"/next2", b"")]
    assert be.connections == 1  # the same pooled connection served everyone
    await be.stop()


async def test_upgrade_with_chunked_body_is_forwarded_as_a_body(router):
    be = await H11Backend(lambda r: b"HTTP/1.1 400 No\r\nContent-Length: 0\r\n\r\n").start()
    srv = await router(apps(be.addr))
    out, closed = await raw(srv.port, b"POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade"
                                      b"\r\nUpgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"5\r\nhello\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and closed
    assert [(s.target, s.body, s.complete) for s in be.seen] == [(b"/up", b"hello", True)]
    await be.stop()


async def test_h2c_in_a_list_is_never_tunnelled(router):
    be = await H11Backend(ok).start()
    srv = await router(apps(be.addr))
    for value in (b"h2c, websocket", b"h2c/1", b"websocket, H2C"):
        be.seen.clear()
        out, _ = await raw(srv.port, b"POST /a HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\n"
                                     b"Upgrade: " + value + b"\r\nContent-Length: %d\r\n\r\n%b"
                                     % (len(SMUGGLE), SMUGGLE)
                                     + b"GET /b HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        assert out.count(b"HTTP/1.1 200 OK") == 2 and out.endswith(b"seen /b")
        assert [(s.target, s.body, s.headers.get(b"upgrade")) for s in be.seen] == [
            (b"/a", SMUGGLE, None), (b"/b", b"", None)]
    await be.stop()


async def test_nothing_pipelined_behind_a_closing_answer_is_executed(router):
    be = await H11Backend(ok).start()
    srv = await router(apps(be.addr))
    for _ in range(20):  # it once got through in about half the tries
        for first in (b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n",
                      b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 3\r\n\r\nabc"):
            out, closed = await raw(srv.port, first + SMUGGLE + SMUGGLE)
            assert out.count(b"HTTP/1.1 ") == 1 and out.startswith(b"HTTP/1.1 404 ") and closed
    assert be.seen == []
    await be.stop()


async def test_paths_a_backend_reads_as_another_apps_prefix(router):
    shop, admin = await H11Backend(ok).start(), await H11Backend(ok).start()
    srv = await router(apps(shop.addr, admin.addr))
    for target in (b"/public/..;/admin/x", b"/public/..%3b/admin/x", b"/public/%2e%2e/admin/x"):
        out, _ = await raw(srv.port, b"GET " + target + b" HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 "), (target, out)
    out, _ = await raw(srv.port, b"GET /%61dmin/x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
    assert out.endswith(b"seen /admin/x")
    assert shop.seen == [] and [s.target for s in admin.seen] == [b"/admin/x"]
    await shop.stop()
    await admin.stop()


async def _through(router: Any, response: bytes, sticky: bool = False) -> tuple[bytes, bool]:
    be = await H11Backend(lambda r: response).start()
    srv = await router(apps(be.addr, sticky=sticky))
    out = await raw(srv.port, b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
    await be.stop()
    return out


async def test_responses_that_must_not_pass_as_they_are(router):
    out, _ = await _through(router, b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 ") and b"\x01" not in out
    out, _ = await _through(router, b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 204 ") and b"Content-Length" not in out
    out, _ = await _through(router, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                     b"2\r\n\x1f\x8b\r\n0\r\n\r\n")
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in out and out.endswith(b"2\r\n\x1f\x8b\r\n0\r\n\r\n")
    out, _ = await _through(router, b"HTTP/1.1 200 OK\r\nSet-Cookie: CONTAINERID=evil\r\n"
                                     b"Content-Length: 0\r\n\r\n", sticky=True)
    assert b"CONTAINERID=evil" not in out and out.count(b"Set-Cookie: CONTAINERID=") == 1


async def test_bad_chunk_size_in_the_first_read_gets_a_502_status_line(router):
    out, closed = await _through(router, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"zz\r\nabc\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
