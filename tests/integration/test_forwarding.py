"""Forwarding: headers the backend sees, streamed bodies, WebSocket, framing, pipelining."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp

from tests.conftest import app_config, download, get, in_chunks, pattern, router_config
from tests.processes import until


async def _one_backend(backend, router, **top):
    be = await backend("blue")
    srv = await router(router_config({"shop": app_config({"web": (1, [be.addr])}, sticky=False)}, **top))
    return be, srv


async def raw(srv, data: bytes, read_until_close: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the router; everything it answers until it closes (or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
                if not read_until_close:
                    break
    except TimeoutError:
        pass
    writer.close()
    return out


def _headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


async def test_headers_seen_by_backend(backend, router):
    be, srv = await _one_backend(backend, router)
    async with aiohttp.ClientSession() as s:
        status, _, body = await get(s, srv, "/echo?x=1", headers={
            "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil", "X-Forwarded-Proto": "https",
            "Connection": "keep-alive, X-Drop-Me, X-Forwarded-For, Host",
            "X-Drop-Me": "1", "Keep-Alive": "timeout=5", "TE": "trailers", "X-Keep": "yes",
            "Proxy-Connection": "keep-alive"})
    assert status == 200
    h = _headers(body)
    assert json.loads(body)["path"] == "/echo?x=1"
    # The peer is not a trusted proxy: the router's own values replace the client's.
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["app.test"]
    assert h["host"] == ["app.test"]
    assert h["x-keep"] == ["yes"]
    for gone in ("x-drop-me", "keep-alive", "te", "proxy-connection", "connection"):
        assert gone not in h, gone
    rid = h["x-request-id"][0]
    assert 8 <= len(rid) <= 128


async def test_request_id_kept_when_sane(backend, router):
    be, srv = await _one_backend(backend, router)
    async with aiohttp.ClientSession() as s:
        _, _, body = await get(s, srv, "/echo", headers={"X-Request-ID": "abc-123"})
        assert _headers(body)["x-request-id"] == ["abc-123"]
        _, _, body = await get(s, srv, "/echo", headers={"X-Request-ID": "bad id with spaces"})
        assert _headers(body)["x-request-id"] != ["bad id with spaces"]
        _, _, b1 = await get(s, srv, "/echo")
        _, _, b2 = await get(s, srv, "/echo")
        assert _headers(b1)["x-request-id"] != _headers(b2)["x-request-id"]


async def test_trusted_proxy_xff_is_appended(backend, router):
    be, srv = await _one_backend(backend, router, trusted_proxies=["127.0.0.0/8"])
    async with aiohttp.ClientSession() as s:
        _, _, body = await get(s, srv, "/echo", headers={
            "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    h = _headers(body)
    assert h["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]


async def test_large_upload_and_download_streamed(backend, router):
    size = 32 * 1024 * 1024
    be, srv = await _one_backend(backend, router)
    data = pattern(size)
    want = hashlib.sha256(data).hexdigest()
    async with aiohttp.ClientSession() as s:
        # Content-Length upload.
        status, _, body = await get(s, srv, "/upload", method="POST", data=data)
        assert status == 200 and json.loads(body) == {"sha256": want, "size": size, "backend": "blue"}
        # Chunked upload.
        status, _, body = await get(s, srv, "/upload", method="PUT", data=in_chunks(data))
        assert status == 200 and json.loads(body)["sha256"] == want
        # Content-Length and chunked downloads.
        for chunked in ("0", "1"):
            r, n, sha = await download(s, f"http://127.0.0.1:{srv.port}/download?size={size}&chunked={chunked}")
            assert r.status == 200
            assert (r.headers.get("Transfer-Encoding") == "chunked") == (chunked == "1")
            assert (n, sha) == (size, want)


async def test_websocket_echo(backend, router):
    be, srv = await _one_backend(backend, router)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{srv.port}/ws", headers={"Host": "app.test"}) as ws:
            for i in range(5):
                await ws.send_str(f"hello {i}")
                assert await ws.receive_str() == f"blue:hello {i}"
            payload = pattern(300_000)
            await ws.send_bytes(payload)
            assert await ws.receive_bytes() == payload
    # The tunnel is not a pooled connection: the next request opens another.
    async with aiohttp.ClientSession() as s:
        assert (await get(s, srv))[0] == 200
    assert be.connections == 2


async def test_head_204_304_keep_connection_usable(backend, router):
    be, srv = await _one_backend(backend, router)
    req = (b"HEAD /download?size=1000 HTTP/1.1\r\nHost: app.test\r\n\r\n"
           b"GET /status/204 HTTP/1.1\r\nHost: app.test\r\n\r\n"
           b"GET /status/304 HTTP/1.1\r\nHost: app.test\r\n\r\n"
           b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    out = await raw(srv, req)
    parts = out.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"204", b"304", b"200"]
    assert b"Content-Length: 1000" in parts[0]
    assert parts[3].endswith(b"\r\n\r\nblue\n")
    assert be.connections == 1  # the HEAD answer did not spoil the pooled connection


async def test_pipelined_requests_answered_in_order(backend, router):
    be, srv = await _one_backend(backend, router)
    req = b"".join(
        b"GET /slow?delay=%s HTTP/1.1\r\nHost: app.test\r\n\r\n" % d for d in (b"0.3", b"0", b"0.1"))
    req += b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    out = await raw(srv, req)
    parts = out.split(b"HTTP/1.1 200 OK")
    assert len(parts) == 5
    assert [p.endswith(b"blue\n") for p in parts[1:4]] == [True] * 3
    assert json.loads(parts[4].split(b"\r\n\r\n", 1)[1])["body"] == "hello"


async def test_http10_client_gets_plain_body_and_close(backend, router):
    be, srv = await _one_backend(backend, router)
    out = await raw(srv, b"GET /download?size=100000&chunked=1 HTTP/1.0\r\nHost: app.test\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert b"Connection: close" in head
    assert body == pattern(100000)


async def test_expect_100_continue(backend, router):
    be, srv = await _one_backend(backend, router)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ping")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0].split(b":")[1])
    body = await reader.readexactly(length)
    assert json.loads(body)["body"] == "ping"
    writer.close()


async def test_connect_is_refused_405(backend, router):
    be, srv = await _one_backend(backend, router)
    out = await raw(srv, b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 ")
    assert be.requests == 0


async def test_absolute_form_routed_by_table_never_dialled(backend, router):
    be, srv = await _one_backend(backend, router)
    out = await raw(srv, b"GET http://app.test/echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["path"] == "/echo"
    out = await raw(srv, b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404")
    assert be.requests == 1


async def test_malformed_request_400_nothing_forwarded(backend, router):
    be, srv = await _one_backend(backend, router)
    out = await raw(srv, b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    out = await raw(srv, b"GET / HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert be.requests == 0


async def test_header_limits_414_431(backend, router):
    be, srv = await _one_backend(backend, router)
    out = await raw(srv, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 414 ")
    out = await raw(srv, b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 4000) for i in range(20))
    out = await raw(srv, b"GET / HTTP/1.1\r\nHost: app.test\r\n" + many + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    assert be.requests == 0


class _Connections:
    """The connections a backend accepted, and how many of them the router closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    async def all_closed(self) -> None:
        await until(lambda: self.closed == self.opened, 5, "the router closes the connection")


async def _raw_backend(answer):
    """A backend that reads each request head and has ``await answer(writer)`` reply to it;
    returns the server, its address and its connections."""
    conns = _Connections()

    async def handle(reader, writer):
        conns.opened += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                conns.closed += 1
                break
            await answer(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, "127.0.0.1:%d" % server.sockets[0].getsockname()[1], conns


async def test_body_split_over_reads_and_bytes_past_content_length(router):
    """A Content-Length body that arrives over several reads is forwarded exactly; bytes past
    the announced length are not forwarded and the connection is not pooled."""
    extra = {"send": b""}

    async def answer(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await writer.drain()
        await asyncio.sleep(0.05)  # a pause: the body comes in two reads
        writer.write(b"56789" + extra["send"])
        await writer.drain()

    server, addr, conns = await _raw_backend(answer)
    srv = await router(router_config({"shop": app_config({"web": (1, [addr])}, sticky=False)}))
    try:
        async with aiohttp.ClientSession() as s:
            assert (await get(s, srv))[::2] == (200, b"0123456789")
            extra["send"] = b"EXTRA"
            assert (await get(s, srv))[::2] == (200, b"0123456789")
            assert conns.opened == 1  # complete and well framed: pooled, and reused
            await conns.all_closed()  # the backend broke framing: closed
    finally:
        server.close()


async def test_response_heads_from_a_raw_backend(router):
    """Each head the backend sends, as the client sees it, and whether the backend connection
    went back to the pool. Covers the one-read path (head and body in one read, checked by
    llhttp, hop-by-hop lines cut from the bytes) and the full parser it leaves the rest to."""
    answers: list[bytes] = []

    async def answer(writer):
        writer.write(answers.pop(0))
        await writer.drain()

    server, addr, conns = await _raw_backend(answer)
    # Each case is a new client: with upstream.reuse always its request takes the pooled one.
    srv = await router(router_config({"shop": app_config({"web": (1, [addr])}, sticky=False)},
                                     upstream={"reuse": "always"}))
    cases = [
        # (backend's answer, what the client must get after the status line, pooled after)
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n"
         b"Content-Length: 2\r\n\r\nhi", b"X-A: 1\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: Keep-Alive\r\n\r\nhi",
         b"X-A: 1\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
         b"Content-Length: 3\r\n\r\nabc", False),
        (b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nX-B: 2\r\n"
         b"Content-Length: 1\r\n\r\nz", b"X-B: 2\r\nContent-Length: 1\r\n\r\nz", True),
        (b"HTTP/1.1 204 No Content\r\nX-C: 3\r\n\r\n", b"X-C: 3\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", b"Content-Length: 2\r\n\r\nok",
         False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nv0",
         b"Content-Length: 2\r\n\r\nv0", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
         b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", True),
    ]
    reused = False  # the previous answer left its connection in the pool
    try:
        for answer, want, pooled in cases:
            answers.append(answer)
            opened = conns.opened
            out = await raw(srv, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n",
                            read_until_close=False, timeout=2)
            status_line, _, rest = out.partition(b"\r\n")
            assert status_line == answer.split(b"\r\n", 1)[0].replace(b"HTTP/1.0", b"HTTP/1.1"), answer
            assert rest == want, answer
            assert conns.opened == opened + (0 if reused else 1), answer
            if not pooled:
                await conns.all_closed()
            reused = pooled
    finally:
        server.close()


async def test_endless_head_is_refused_431(backend, router):
    """A head that never ends (fields of a few bytes, sent in many reads) is refused once it
    has more fields than limits.max_header_fields, long before its bytes pass what any head
    within the limits can take; nothing is forwarded."""
    be, srv = await _one_backend(backend, router)
    loop = asyncio.get_running_loop()
    got = bytearray()
    lost = loop.create_future()

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.extend(data)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set_result(None)

    transport, _ = await loop.create_connection(Client, "127.0.0.1", srv.port)
    transport.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
    sent = 0
    # Stop writing once the router answers.
    while not got and not transport.is_closing() and sent < 4 * 1024 * 1024:
        transport.write(b"X-A: b\r\n" * 512)
        sent += 4096
        await asyncio.sleep(0.001)
    await asyncio.wait_for(lost, 10)
    assert bytes(got).startswith(b"HTTP/1.1 431 "), (sent, bytes(got[:80]))
    assert b"too many header fields" in got and sent <= 8192
    assert be.requests == 0
