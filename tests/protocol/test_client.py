"""The request path driven with bytes, without sockets: a client connection, the exchanges and
backend connections in memory, on a clock the test moves (tests/memory.py). Each test asserts
the exact bytes a client receives and the requests each backend reads (parsed by h11)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from router.dataplane import phases as P
from router.dataplane.exchange import HIGH_WATER
from router.config import config_from_dict
from tests.memory import Request, Wire

SHOP, ADMIN, OTHER = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


def wire(**top: Any) -> Wire:
    cfg: dict[str, Any] = {"apps": {
        "shop": {"routes": ["shop.test"], "session_sticky": False,
                 "services": {"web": {"backends": [SHOP]}}},
        "admin": {"routes": ["shop.test/admin"], "session_sticky": False,
                  "services": {"web": {"backends": [ADMIN]}}},
    }}
    cfg.update(top)
    w = Wire(cfg)
    for key in (SHOP, ADMIN):
        w.backend(key).answer = ok
    return w


def ok(req: Request) -> tuple[list[bytes], bool]:
    body = b"seen " + req.target
    return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)], False


def get(target: bytes, extra: bytes = b"", host: bytes = b"shop.test") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


def statuses(data: bytes) -> list[int]:
    """The status of every response in ``data`` (no test body holds a status line)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", data)]


# -- an Upgrade request's body is a body -----------------------------------------------------
SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n"


def test_upgrade_with_a_body_refused_early_leaves_the_pooled_connection_clean():
    w = wire(upstream={"reuse": "always"})  # the next client's first request takes it
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 400 No\r\nContent-Length: 2\r\n\r\nno"], False)
    c1 = w.client()
    c1.send(b"POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\n\r\n" % len(SMUGGLE) + SMUGGLE)
    assert statuses(c1.received()) == [400] and c1.closed  # a refused upgrade closes
    w.backend(SHOP).answer = ok
    c2 = w.client(("127.0.0.2", 1))
    c2.send(get(b"/next"))
    assert c2.received().endswith(b"seen /next")
    peer, = w.backend(SHOP).peers  # one pooled connection served both clients
    assert [(r.method, r.target, r.body) for r in peer.requests] == [
        (b"POST", b"/up", SMUGGLE), (b"GET", b"/next", b"")]
    assert peer.error is None


def test_upgrade_with_a_chunked_body_then_the_tunnel():
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                                         b"Connection: Upgrade\r\n\r\nhello"], False)
    c = w.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n5\r\nab")
    c.send(b"cde\r\n0\r\n\r\nEARLY")  # bytes after the body: the tunnel's, held until the 101
    req, = w.backend(SHOP).requests()
    assert (req.body, req.complete, req.tunnel) == (b"abcde", True, b"EARLY")
    assert c.take().endswith(b"\r\n\r\nhello")
    c.send(b"more")
    assert w.backend(SHOP).requests()[0].tunnel == b"EARLYmore"


def test_switching_protocols_before_the_body_is_sent_is_a_502():
    w = wire()
    c = w.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
           b"Content-Length: 10\r\n\r\nabc")
    w.reply(SHOP, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
    assert statuses(c.received()) == [502] and c.closed


@pytest.mark.parametrize("value", [b"h2c", b"h2c, websocket", b"websocket, h2c", b"h2c/1", b"H2C"])
def test_h2c_is_a_plain_request_and_its_body_a_body(value):
    w = wire()
    c = w.client()
    c.send(b"POST /a HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: " + value + b"\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
           b"Content-Length: %d\r\n\r\n" % len(SMUGGLE) + SMUGGLE + get(b"/b"))
    reqs = w.backend(SHOP).requests()
    assert [(r.method, r.target, r.body) for r in reqs] == [(b"POST", b"/a", SMUGGLE),
                                                           (b"GET", b"/b", b"")]
    assert reqs[0].header(b"upgrade") is None and reqs[0].header(b"http2-settings") is None
    assert statuses(c.received()) == [200, 200] and not c.closed


@pytest.mark.parametrize("framed", ["chunked", "length"])
def test_h2c_request_with_a_body_split_anywhere_then_the_next_request(framed):
    # Split at every byte: the body of a request the router does not upgrade is read after a
    # stand-in head, and its end (where the next request begins) must be found the same way
    # wherever the reads part; the next request's fields come from its own head, never from
    # the body before it.
    body = (b"2b\r\n" + SMUGGLE + b"\r\n0\r\n\r\n" if framed == "chunked" else SMUGGLE)
    frame = (b"Transfer-Encoding: chunked\r\n" if framed == "chunked"
             else b"Content-Length: %d\r\n" % len(SMUGGLE))
    data = (b"POST /a HTTP/1.1\r\nHost: shop.test\r\nConnection: upgrade\r\n"
            b"Upgrade: h2c, websocket\r\n" + frame + b"\r\n" + body + get(b"/b", b"X-Seq: 1\r\n"))
    for split in range(1, len(data)):
        w = wire()
        c = w.client()
        c.send(data[:split])
        c.send(data[split:])
        reqs = w.backend(SHOP).requests()
        assert [(r.method, r.target, r.body, r.header(b"x-seq")) for r in reqs] == [
            (b"POST", b"/a", SMUGGLE, None), (b"GET", b"/b", b"", b"1")], split
        assert statuses(c.received()) == [200, 200] and not c.closed, split


def test_a_request_refused_after_an_h2c_request_gets_its_own_status():
    w = wire()
    c = w.client()
    c.send(b"GET /a HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
           + get(b"/b", b"Expect: something\r\n"))
    assert statuses(c.received()) == [200, 417] and c.closed


# -- nothing after a closing answer is forwarded ---------------------------------------------
@pytest.mark.parametrize("first, status", [
    (get(b"/", b"Connection: close\r\n", host=b"nowhere.test"), 404),
    # Answered before its body is read: the answer closes; the bytes after it are not requests.
    (b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 3\r\n\r\nabc", 404),
    (get(b"/", b"Connection: close\r\n"), 200),
    (get(b"/../x"), 400),
    (b"GET / HTTP/1.1\r\nHost: shop.test\r\nBad Header: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (get(b"/", b"Connection: Upgrade\r\nUpgrade: websocket\r\n", host=b"nowhere.test"), 404),
])
def test_nothing_after_a_closing_answer_is_forwarded(first, status):
    for split in (None, len(first)):
        w = wire()
        c = w.client()
        data = first + SMUGGLE + SMUGGLE
        if split is None:
            c.send(data)
        else:
            c.send(data[:split])
            c.send(data[split:])
        assert statuses(c.received()) == [status] and c.closed
        assert [r.target for r in w.backend(SHOP).requests()] == ([b"/"] if status == 200 else [])


def test_a_backend_closing_its_connection_does_not_close_the_clients():
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                         b"Content-Length: 0\r\n\r\n"], True)
    c = w.client()
    c.send(get(b"/1") + get(b"/2") + get(b"/3"))
    assert statuses(c.received()) == [200, 200, 200] and not c.closed
    assert [[r.target for r in p.requests] for p in w.backend(SHOP).peers] == [
        [b"/1"], [b"/2"], [b"/3"]]


# -- paths a backend reads as another app's prefix --------------------------------------------
@pytest.mark.parametrize("target, backend, seen", [
    (b"/%61dmin/x", ADMIN, b"/admin/x"),
    (b"/admin;jsessionid=1/x", ADMIN, b"/admin;jsessionid=1/x"),
    (b"/public/x", SHOP, b"/public/x"),
    (b"/%41dmin/x", SHOP, b"/Admin/x"),
])
def test_paths_routed_as_backends_read_them(target, backend, seen):
    w = wire()
    w.client().send(get(target))
    assert [r.target for r in w.backend(backend).requests()] == [seen]


@pytest.mark.parametrize("target", [b"/public/..;/admin/x", b"/public/..%3b/admin/x",
                                    b"/public/%2e%2e/admin/x", b"/public/..;x/admin"])
def test_paths_with_dot_segments_in_any_disguise_are_refused(target):
    w = wire()
    c = w.client()
    c.send(get(target))
    assert statuses(c.received()) == [400] and c.closed
    assert w.backend(SHOP).requests() == [] and w.backend(ADMIN).requests() == []


# -- responses that must not pass as they are ------------------------------------------------------
def reply_with(raw: bytes, target: bytes = b"/") -> tuple[bytes, bool]:
    w = wire()
    w.backend(SHOP).answer = lambda r: ([raw], False)
    c = w.client()
    c.send(get(target))
    return c.received(), c.closed


def test_control_character_in_the_reason_is_a_502():
    out, closed = reply_with(b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n")
    assert statuses(out) == [502] and b"\x01" not in out


def test_204_loses_its_content_length():
    out, _ = reply_with(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    assert out == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_transfer_codings_are_kept():
    out, _ = reply_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")
    assert out == (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                   b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")


def test_chunked_then_another_coding_is_passed_on_to_the_close():
    """RFC 9112 6.3: chunked not last, the body ends with the connection; chunking it again
    would apply chunked twice (6.1), so it goes as it came and the client connection ends."""
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n"
                                         b"\r\n3\r\nabc\r\n0\r\n\r\n"], True)
    c = w.client()
    c.send(get(b"/"))
    assert c.received() == (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n"
                            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert c.closed


def test_chunked_applied_twice_is_a_502():
    out, _ = reply_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\n\r\n")
    assert statuses(out) == [502]


@pytest.mark.parametrize("status", [b"099", b"000", b"042"])
def test_a_status_below_100_is_one_502(status):
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 " + status + b" X\r\nContent-Length: 0\r\n\r\n"
                                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], False)
    c = w.client()
    c.send(get(b"/"))
    assert statuses(c.received()) == [502]  # one answer: the bytes after it are never a response


def test_an_http10_response_that_says_chunked_is_not_pooled():
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
                                        False)
    c = w.client()
    c.send(get(b"/1") + get(b"/2"))
    assert statuses(c.received()) == [200, 200]
    assert [[r.target for r in p.requests] for p in w.backend(SHOP).peers] == [[b"/1"], [b"/2"]]


def test_a_backend_that_answers_before_the_body_is_sent_is_not_reused():
    """The final head came while the body was still arriving: the backend may read the rest of
    the body as a request of its own, so its connection is never used again."""
    w = wire(upstream={"reuse": "always"})
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(b"POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n"
           % len(SMUGGLE) + SMUGGLE[:10])
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    c.send(SMUGGLE[10:])  # the body ends before the response does
    w.reply(SHOP, b"ok")
    assert statuses(c.received()) == [200]
    w.backend(SHOP).answer = ok
    other = w.client(("127.0.0.2", 1))
    other.send(get(b"/next"))
    assert other.received().endswith(b"seen /next")
    assert len(w.backend(SHOP).peers) == 2 and w.backend(SHOP).peers[0].up.closed


def test_a_backend_that_answers_while_the_body_is_still_buffered_is_not_reused():
    w = wire(upstream={"reuse": "always"})
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(b"POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello")
    w.backend(SHOP).connections[0].transport.buffered = 3  # not all of the body has left
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert statuses(c.received()) == [200] and not c.closed
    w.backend(SHOP).answer = ok
    c.send(get(b"/next"))
    assert c.received().endswith(b"seen /next")
    assert len(w.backend(SHOP).peers) == 2 and w.backend(SHOP).peers[0].up.closed


@pytest.mark.parametrize("reuse, connections", [("safe", 2), ("always", 1)])
def test_a_client_connections_first_request_has_a_backend_connection_of_its_own(reuse, connections):
    w = wire(upstream={"reuse": reuse})
    first = w.client(("127.0.0.1", 1))
    first.send(get(b"/a"))
    second = w.client(("127.0.0.1", 2))
    second.send(get(b"/b") + get(b"/c"))
    assert statuses(second.received()) == [200, 200]
    assert len(w.backend(SHOP).peers) == connections  # its later requests may take pooled ones


def test_bytes_a_backend_sends_after_its_response_never_reach_another_client():
    """An extra response that comes late, after the connection went back to the pool: another
    client's first request is never on that connection (upstream.reuse safe)."""
    w = wire()
    w.backend(SHOP).answer = None
    first = w.client(("127.0.0.1", 1))
    first.send(get(b"/first"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert statuses(first.received()) == [200]
    victim = w.client(("127.0.0.1", 2))
    victim.send(get(b"/victim"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON", 0)  # late
    assert b"POISON" not in victim.received()
    assert w.backend(SHOP).peers[0].up.closed  # bytes from an idle connection: it is closed


# -- the router's own answers to HEAD have no body --------------------------------------------------
@pytest.mark.parametrize("case", ["404", "503", "502", "504", "417"])
def test_the_routers_own_answers_to_head_have_no_body(case):
    w = wire(timeouts={"response": "5s"})
    host = b"nowhere.test" if case == "404" else b"shop.test"
    extra = b"Expect: nothing\r\n" if case == "417" else b""
    if case == "503":
        w.ctx.table = w.builder.build(config_from_dict({"apps": {"shop": {
            "routes": ["shop.test"], "services": {"web": {"weight": 0, "backends": [SHOP]}}}}}).apps, 2)
    if case == "502":
        w.backend(SHOP).refuse = True
    if case == "504":
        w.backend(SHOP).answer = None
    c = w.client()
    c.send(b"HEAD / HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")
    w.loop.advance(6)
    head, sep, body = c.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + case.encode()) and sep and body == b""
    assert re.search(rb"\r\nContent-Length: [1-9][0-9]*", head)  # what a GET would get
    if case != "417":  # keep-alive: the next answer is read as a response, not as a body
        w.backend(SHOP).refuse = False
        w.backend(SHOP).answer = ok
        c.send(get(b"/next", host=host))
        assert statuses(c.take()) == [int(case) if case in ("404", "503") else 200]


def test_the_backends_own_sticky_cookie_is_dropped():
    w = Wire({"apps": {"shop": {"routes": ["shop.test"], "services": {"web": {"backends": [SHOP]}}}}})
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 200 OK\r\nSet-Cookie: CONTAINERID=evil\r\n"
                                         b"Set-Cookie: sid=1\r\nContent-Length: 0\r\n\r\n"], False)
    c = w.client()
    c.send(get(b"/"))
    out = c.received()
    assert b"CONTAINERID=evil" not in out and b"Set-Cookie: sid=1\r\n" in out
    assert out.count(b"Set-Cookie: CONTAINERID=") == 1  # the router's


@pytest.mark.parametrize("size", [1, 4095, 4096, 70_000])
def test_a_body_read_with_its_head_arrives_whole(size):
    """Short or long (a long one is forwarded as a view of the read), then the connection is
    reused for the next request."""
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                                         + body], False)
    c = w.client()
    c.send(get(b"/big") + get(b"/again"))
    assert c.received() == 2 * (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)
    assert len(w.backend(SHOP).peers) == 1


@pytest.mark.parametrize("first", [0, 1, 9, 10])
def test_a_body_read_partly_with_its_head_arrives_whole(first):
    """The head and the first bytes of its body in one read (the head's bytes carry them to
    the client: router/http/_head.c), the rest in the next; then the connection is pooled."""
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/"))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    w.reply(SHOP, head + b"0123456789"[:first])
    if first < 10:
        w.reply(SHOP, b"0123456789"[first:])
    assert c.take() == head + b"0123456789"
    up = w.backend(SHOP).peers[0].up
    assert not up.closed and w.ctx.pool.get(SHOP) is up  # pooled for the next request


def test_bytes_read_after_a_body_with_its_head_are_dropped_and_the_connection_too():
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert w.backend(SHOP).peers[0].up.closed  # its framing cannot be trusted: not pooled


@pytest.mark.parametrize("size", [10, 70_000])
def test_a_body_to_the_close_read_with_its_head_is_rechunked(size):
    body = b"e" * size
    w = wire()
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body], True)
    c = w.client()
    c.send(get(b"/"))
    out = c.received()
    assert out.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n")
    assert out.endswith(b"\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (size, body)) and not c.closed


def test_bad_chunk_size_in_the_first_read_is_a_502_with_a_status_line():
    out, closed = reply_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n")
    assert statuses(out) == [502] and out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_bad_chunk_size_after_the_head_was_written_aborts():
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert c.take().endswith(b"3\r\nabc\r\n")
    w.reply(SHOP, b"zz\r\n")
    assert c.transport.aborted and c.take() == b""  # never a short "complete" body


# -- timers ------------------------------------------------------------------------------------
def test_request_head_timeout_is_a_408():
    w = wire(timeouts={"client_header": "2s"})
    c = w.client()
    c.send(b"GET / HTTP/1.1\r\nHost: sh")
    w.loop.advance(1.9)
    assert c.received() == b""
    w.loop.advance(0.2)
    assert statuses(c.received()) == [408] and c.closed


def test_request_body_timeout_is_a_408():
    w = wire(timeouts={"client_body": "3s"})
    c = w.client()
    c.send(b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nabc")
    w.loop.advance(3.1)
    assert statuses(c.received()) == [408] and c.closed
    assert w.backend(SHOP).peers[0].up.closed  # the backend never sees that request end


def test_response_timeout_is_a_504_and_the_connection_stays():
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/slow"))
    w.loop.advance(5.1)
    assert statuses(c.take()) == [504] and not c.closed
    w.backend(SHOP).answer = ok
    c.send(get(b"/next"))
    assert c.take().endswith(b"seen /next")


def test_a_client_gone_before_its_answer_is_a_499_and_frees_the_backend():
    w = wire()
    w.backend(SHOP).answer = None  # it never answers
    c = w.client()
    c.send(get(b"/hung"))
    svc = w.ctx.table.apps["shop"].services[0]
    assert svc.stats.inflight == 1 and len(w.ctx.deadlines.waiting()) == 1
    c.eof()  # the client gave up and closed its connection
    assert c.closed and c.take() == b""
    assert svc.stats.inflight == 0 and svc.backends[0].inflight == 0
    assert svc.backends[0].stats.codes == {499: 1} and not w.ctx.deadlines.waiting()
    peer, = w.backend(SHOP).peers
    assert peer.transport.closed  # the backend connection is not used again


def test_a_client_that_closes_once_its_answer_began_gets_it_whole():
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/download"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    c.eof()
    assert not c.closed
    w.reply(SHOP, b"defghij")
    assert c.received().endswith(b"\r\n\r\nabcdefghij") and c.closed
    assert w.ctx.table.apps["shop"].services[0].backends[0].stats.codes == {200: 1}


def test_idle_timeout_closes_quietly():
    w = wire(timeouts={"client_idle": "10s"})
    c = w.client()
    c.send(get(b"/"))
    c.take()
    w.loop.advance(9)
    assert not c.closed
    w.loop.advance(2)
    assert c.closed and c.take() == b""


# -- retries -------------------------------------------------------------------------------------
def test_connect_refused_goes_to_another_backend():
    w = Wire({"apps": {"shop": {"routes": ["shop.test"], "session_sticky": False,
                                "services": {"web": {"backends": [SHOP, OTHER]}}}}})
    w.backend(SHOP).refuse = True
    w.backend(OTHER).answer = ok
    c = w.client()
    c.send(get(b"/a") + get(b"/b"))
    assert statuses(c.received()) == [200, 200]
    assert [r.target for r in w.backend(OTHER).requests()] == [b"/a", b"/b"]


def test_keep_alive_race_retries_an_idempotent_request_on_a_fresh_connection():
    w = wire()
    c = w.client()
    c.send(get(b"/1"))
    # The pooled connection is closed by the backend as the next request arrives.
    w.backend(SHOP).answer = None
    c.send(get(b"/2"))
    w.backend(SHOP).answer = ok
    w.close_backend(SHOP, 0)
    assert statuses(c.received()) == [200, 200]
    assert len(w.backend(SHOP).peers) == 2
    assert [r.target for r in w.backend(SHOP).peers[1].requests] == [b"/2"]


def test_a_post_whose_connection_closes_is_not_sent_again():
    w = wire()
    c = w.client()
    c.send(get(b"/1"))
    w.backend(SHOP).answer = None
    c.send(b"POST /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\n\r\nx")
    w.close_backend(SHOP, 0)
    assert statuses(c.received()) == [200, 502]
    assert len(w.backend(SHOP).peers) == 1


def test_a_put_whose_body_is_held_is_sent_again_whole():
    w = wire()
    c = w.client()
    c.send(get(b"/1"))
    w.backend(SHOP).answer = None
    c.send(b"PUT /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 6\r\n\r\nab")
    c.send(b"cd")
    c.send(b"ef")
    w.backend(SHOP).answer = ok
    w.close_backend(SHOP, 0)
    assert statuses(c.received()) == [200, 200]
    assert [(r.target, r.body) for r in w.backend(SHOP).peers[1].requests] == [(b"/p", b"abcdef")]


def test_a_put_whose_body_was_too_long_to_hold_is_not_sent_again():
    w = wire()
    c = w.client()
    c.send(get(b"/1"))
    w.backend(SHOP).answer = None
    size = HIGH_WATER + 10
    c.send(b"PUT /p HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(size // 1000):
        c.send(b"x" * 1000)
    c.send(b"x" * (size % 1000))
    assert w.backend(SHOP).peers[0].requests[-1].body == b"x" * size  # streamed, not held
    w.close_backend(SHOP, 0)
    assert statuses(c.received()) == [200, 502]
    assert len(w.backend(SHOP).peers) == 1


# -- 100-continue --------------------------------------------------------------------------------
def test_100_continue_then_the_answer():
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(b"PUT /u HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    w.reply(SHOP, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"abc")
    w.reply(SHOP, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert c.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    assert w.backend(SHOP).requests()[0].body == b"abc"


# -- the connection cap ----------------------------------------------------------------------------
def test_the_oldest_idle_connections_make_room_at_the_cap():
    w = wire(limits={"max_connections": 3})
    clients = []
    for i in range(3):
        c = w.client(("127.0.0.1", 1000 + i))
        c.send(get(b"/"))
        w.loop.advance(1)
        clients.append(c)
    busy = clients[1]
    w.backend(SHOP).answer = None
    busy.send(get(b"/busy"))
    new = w.client(("127.0.0.1", 2000))
    w.loop.run()
    # The oldest idle ones closed; the busy one kept; the new one admitted.
    assert [c.closed for c in clients] == [True, False, True]
    assert not new.closed and w.ctx.refused == 0
    w.backend(SHOP).answer = ok
    new.send(get(b"/new"))
    assert new.received().endswith(b"seen /new")


def test_refused_at_the_cap_when_nothing_is_idle():
    w = wire(limits={"max_connections": 1})
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/busy"))
    late = w.client(("127.0.0.1", 2))
    assert late.transport.aborted and w.ctx.refused == 1


# -- a move the phase tables forbid, met in any call of the loop, drops the client ------------
def _pipelined(w: Wire) -> Any:
    """A client whose first request is being answered and whose second waits its turn, none
    of it routed on: the loop has not turned yet."""
    c = w.client()
    c.transport.receive(get(b"/1") + get(b"/2"))
    return c


def test_a_phase_error_in_a_backend_callback_drops_the_client(caplog):
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/1"))
    ex = c.conn.active
    ex.phase = P.ROUTING  # a bug: the exchange forgot it was sent
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert c.transport.aborted and c.take() == b""
    assert w.backend(SHOP).peers[0].transport.aborted
    assert "exchange: ROUTING -> HEAD; connection dropped" in caplog.text


def test_a_phase_error_in_the_response_timer_drops_that_client_and_times_out_the_others(caplog):
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = None
    broken = _pipelined(w)
    w.loop.run()
    broken.conn.queue[0].phase = P.HEAD  # a bug: the request waiting its turn looks answered
    w.loop.advance(1)
    other = w.client()
    other.send(get(b"/3"))
    w.loop.advance(4.5)  # the first's response timeout: its 504, then the next one's route
    assert broken.transport.aborted and "exchange: HEAD -> CONNECTING" in caplog.text
    assert other.take() == b""
    w.loop.advance(1)  # the timer is set again for the other client's request
    assert statuses(other.take()) == [504] and not other.closed


def test_a_phase_error_in_a_connect_task_drops_the_client(caplog):
    w = wire()
    w.backend(SHOP).refuse = True  # the first request's 502 starts the second at once
    c = _pipelined(w)
    c.conn.queue[0].phase = P.HEAD
    w.loop.run()
    assert c.transport.aborted and "exchange: HEAD -> CONNECTING" in caplog.text


def test_a_malformed_head_is_refused_before_its_end():
    """A head that comes in pieces is checked as it arrives: a bad field is a 502 at once, not
    when (or if) the empty line comes."""
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n")
    assert statuses(c.received()) == [502]


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n Folded: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX : y\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.3 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
])
def test_malformed_heads_are_a_502_whole_or_in_pieces(raw):
    out, _ = reply_with(raw)
    assert statuses(out) == [502]
    w = wire()
    w.backend(SHOP).answer = lambda r: ([raw[:i] for i in (10,)] + [raw[10:]], False)
    c = w.client()
    c.send(get(b"/"))
    assert statuses(c.received()) == [502]
