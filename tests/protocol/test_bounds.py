"""What one client can make the router hold, and how long: the read-ahead of a pipelining
client, the header-field count, a client that does not read what it is sent, an idle tunnel,
and the connection cap with such connections at it. In memory (tests/memory.py), on a clock the
test moves: exact counts of requests read, forwarded and answered."""

from __future__ import annotations

from typing import Any

import pytest

from router.dataplane.context import BODY_READ, HEAD_READ
from tests.memory import Client, Request, Wire

SHOP = "10.0.0.1:80"


def wire(**top: Any) -> Wire:
    cfg: dict[str, Any] = {"apps": {"shop": {"routes": ["shop.test"], "session_sticky": False,
                                             "services": {"web": {"backends": [SHOP]}}}}}
    cfg.update(top)
    w = Wire(cfg)
    w.backend(SHOP).answer = ok
    return w


def ok(req: Request) -> tuple[list[bytes], bool]:
    body = b"seen " + req.target
    return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)], False


def get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: shop.test\r\n" + extra + b"\r\n"


def answered(c: Client) -> list[bytes]:
    """The body of every response the client has received, in order."""
    out = []
    for part in c.received().split(b"HTTP/1.1 200 OK\r\n")[1:]:
        out.append(part.split(b"\r\n\r\n", 1)[1])
    return out


def read_ahead(c: Client) -> int:
    """Requests the connection has parsed and not yet answered."""
    conn = c.conn
    return (conn.active is not None) + len(conn.queue or ()) + (
        conn.parsing is not None and conn.parsing is not conn.active
        and conn.parsing not in (conn.queue or ()))


# -- pipelining: parsed no further than the next request ---------------------------------------
@pytest.mark.parametrize("kind", ["get", "post", "chunked"])
def test_a_pipeline_is_parsed_one_request_ahead_and_answered_whole(kind):
    w = wire()
    w.backend(SHOP).answer = None  # the backend answers when the test says
    first = {"get": get(b"/first"),
             "post": b"POST /first HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n\r\nabc",
             "chunked": b"POST /first HTTP/1.1\r\nHost: shop.test\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"}[kind]
    data = first + b"".join(get(b"/%d" % i) for i in range(500))
    c = w.client()
    c.send(data)
    # One request answered, one waiting; the other 499 are bytes, unparsed, reading paused.
    assert read_ahead(c) == 2 and c.transport.paused
    peer, = w.backend(SHOP).peers
    assert [r.target for r in peer.requests] == [b"/first"]
    w.backend(SHOP).answer = ok
    peer._answer(peer.requests[0])  # the backend answers; from then on, each at once
    w.loop.run()
    assert answered(c) == [b"seen /first"] + [b"seen /%d" % i for i in range(500)]
    assert not c.closed and not c.transport.paused and read_ahead(c) == 0


@pytest.mark.parametrize("ext", [b";x=y", b";=y"])  # the second: llhttp takes it, framing's
@pytest.mark.parametrize("split", [None, 40, 75, 80, 83, 90, 120])  # strict rules would not
def test_a_pipeline_after_a_chunked_body_is_parsed_one_ahead(split, ext):
    """The chunked body's end is followed as llhttp reads it (framing.ChunkedDecoder.scan), so
    the requests after it are parsed one at a time, wherever the reads end."""
    w = wire()
    w.backend(SHOP).answer = None
    data = (b"POST /first HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6" + ext + b"\r\n world\r\n0\r\nT: 1\r\n\r\n"
            + b"".join(get(b"/%d" % i) for i in range(50)))
    c = w.client()
    for part in [data] if split is None else [data[:split], data[split:]]:
        c.send(part)
    assert read_ahead(c) == 2 and c.transport.paused
    peer, = w.backend(SHOP).peers
    assert [(r.target, r.body) for r in peer.requests] == [(b"/first", b"hello world")]
    w.backend(SHOP).answer = ok
    peer._answer(peer.requests[0])
    w.loop.run()
    assert answered(c) == [b"seen /first"] + [b"seen /%d" % i for i in range(50)]


def test_reads_are_at_most_16_kib_between_requests_and_64_kib_in_a_body():
    w = wire()
    w.backend(SHOP).answer = None
    c = w.client()
    assert len(c.conn.get_buffer(65536)) == HEAD_READ == 16384
    c.send(b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100000\r\n\r\nab")
    assert len(c.conn.get_buffer(65536)) == BODY_READ == 65536
    buf = c.conn.get_buffer(65536)
    buf[:3] = b"cde"
    c.conn.buffer_updated(3)
    assert w.backend(SHOP).requests()[0].body == b"abcde"


def test_a_pipelined_request_whose_body_comes_later_is_answered():
    w = wire()
    c = w.client()
    c.send(get(b"/a") + b"POST /b HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\n")
    c.send(b"hello")
    assert answered(c) == [b"seen /a", b"seen /b"]
    assert w.backend(SHOP).requests()[1].body == b"hello"


def test_a_pipelined_expect_100_continue_is_answered():
    w = wire()
    c = w.client()
    c.send(get(b"/a") + b"PUT /b HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\n"
           b"Content-Length: 3\r\n\r\n")
    assert [r.target for r in w.backend(SHOP).requests()] == [b"/a", b"/b"]
    w.reply(SHOP, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.take().endswith(b"seen /a" + b"HTTP/1.1 100 Continue\r\n\r\n")
    c.send(b"abc")  # the client sends the body once told to
    assert w.backend(SHOP).requests()[1].body == b"abc"
    assert answered(c) == [b"seen /b"]


# -- header fields are counted --------------------------------------------------------------------
def test_more_than_100_header_fields_is_a_431():
    w = wire()
    c = w.client()
    c.send(get(b"/100", b"".join(b"X-F%d: v\r\n" % i for i in range(99))))  # Host + 99
    assert answered(c) == [b"seen /100"]
    c.send(get(b"/101", b"".join(b"X-F%d: v\r\n" % i for i in range(100))))
    assert b"HTTP/1.1 431 " in c.received() and c.closed
    assert [r.target for r in w.backend(SHOP).requests()] == [b"/100"]


def test_a_head_of_tiny_fields_is_refused_after_the_count_not_its_size():
    w = wire(limits={"max_header_fields": 10})
    c = w.client()
    c.send(b"GET / HTTP/1.1\r\nHost: shop.test\r\n")
    fields = 1
    while not c.closed and fields < 1000:
        c.send(b"a:b\r\n")
        fields += 1
    # llhttp reports a field when the next one begins: refused as the 12th arrives.
    assert b"HTTP/1.1 431 " in c.received() and fields == 12


def test_a_head_that_keeps_coming_is_cut_near_the_limits():
    w = wire()
    c = w.client()
    c.send(b"GET / HTTP/1.1\r\nHost: shop.test\r\n")
    sent = 0
    while not c.closed and sent < 300_000:
        c.send(b"X-Long: " + b"v" * 4000 + b"\r\n")
        sent += 4010
    assert b"HTTP/1.1 431 " in c.received()
    # max_request_line + max_headers + 16 per field + 64 (docs/request-path.md), not 4x them.
    assert sent <= 8192 + 65536 + 1600 + 64 + 4010


# -- a client that does not read what it is sent --------------------------------------------------
def test_a_client_that_takes_nothing_is_closed_after_client_send():
    w = wire(timeouts={"client_send": "5s"})
    c = w.client()
    c.send(get(b"/big"))
    c.transport.buffered = 70_000
    c.conn.pause_writing()  # the socket's buffer is full and the client does not read
    w.loop.advance(4.9)
    assert not c.closed
    w.loop.advance(0.2)
    assert c.closed and c.transport.aborted
    assert w.ctx.timeouts == {"client_send": 1}


def test_a_slow_reader_that_makes_progress_is_kept():
    w = wire(timeouts={"client_send": "5s"})
    c = w.client()
    c.send(get(b"/big"))
    c.transport.buffered = 70_000
    c.conn.pause_writing()
    for _ in range(5):
        w.loop.advance(4)
        c.transport.buffered -= 5000  # it reads a little every few seconds
    assert not c.closed
    w.loop.advance(11)  # then nothing
    assert c.closed and w.ctx.timeouts == {"client_send": 1}


def test_an_unread_pipeline_waits_for_the_client_then_times_out():
    w = wire(timeouts={"client_send": "5s"})
    c = w.client()
    c.send(get(b"/1"))
    c.transport.buffered = 70_000
    c.conn.pause_writing()  # the first response filled the socket: the client reads nothing
    c.send(get(b"/2") + get(b"/3") + get(b"/4"))
    # Nothing more is forwarded while the client does not read what it is sent.
    assert [r.target for r in w.backend(SHOP).requests()] == [b"/1"]
    w.loop.advance(5.1)
    assert c.closed and w.ctx.timeouts == {"client_send": 1}
    assert [r.target for r in w.backend(SHOP).requests()] == [b"/1"]


def test_an_unread_pipeline_goes_on_when_the_client_reads():
    w = wire()
    c = w.client()
    c.send(get(b"/1"))
    c.conn.pause_writing()
    c.send(get(b"/2") + get(b"/3"))
    assert [r.target for r in w.backend(SHOP).requests()] == [b"/1"]
    c.conn.resume_writing()
    w.loop.run()
    assert answered(c) == [b"seen /1", b"seen /2", b"seen /3"]


# -- tunnels ----------------------------------------------------------------------------------------
def tunnel(w: Wire) -> Client:
    w.backend(SHOP).answer = lambda r: ([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\n"
                                         b"Connection: Upgrade\r\n\r\n"], False)
    c = w.client()
    c.send(get(b"/ws", b"Connection: Upgrade\r\nUpgrade: ws\r\n"))
    assert c.take().startswith(b"HTTP/1.1 101 ")
    return c


def test_an_idle_tunnel_is_closed_after_tunnel_idle_and_traffic_keeps_it():
    w = wire(timeouts={"tunnel_idle": "30s"})
    c = tunnel(w)
    w.loop.advance(20)
    c.send(b"ping")  # client to backend
    w.loop.advance(20)
    w.reply(SHOP, b"pong")  # backend to client
    w.loop.advance(29)
    assert not c.closed and c.take() == b"pong"
    w.loop.advance(2)
    assert c.closed and w.backend(SHOP).connections[0].closed
    assert w.ctx.timeouts == {"tunnel_idle": 1}


# -- the connection cap ---------------------------------------------------------------------------
def test_stuck_connections_make_room_at_the_cap():
    w = wire(limits={"max_connections": 2})
    w.backend(SHOP).answer = None
    reader = w.client(("127.0.0.1", 1))
    reader.send(get(b"/"))
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000)
    reader.transport.buffered = 70_000
    reader.conn.pause_writing()  # a client that reads nothing
    ws = tunnel(w)  # a tunnel with no traffic
    w.loop.advance(0.5)
    late = w.client(("127.0.0.1", 3))
    assert late.transport.aborted and w.ctx.refused == 1  # stuck for less than a second
    w.loop.advance(2)
    new = w.client(("127.0.0.1", 4))
    w.loop.run()
    assert not new.closed and reader.closed and ws.closed and w.ctx.refused == 1
    w.backend(SHOP).answer = ok
    new.send(get(b"/new"))
    assert answered(new) == [b"seen /new"]


def test_busy_connections_are_not_taken_at_the_cap():
    w = wire(limits={"max_connections": 1})
    w.backend(SHOP).answer = None
    c = w.client()
    c.send(get(b"/busy"))
    c.conn.pause_writing()
    c.conn.resume_writing()  # it reads: writing goes on
    w.loop.advance(5)
    late = w.client(("127.0.0.1", 2))
    assert late.transport.aborted and w.ctx.refused == 1 and not c.closed
