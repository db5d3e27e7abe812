"""Generated client byte streams and backend answers, and the invariant they must keep.

A stream is a few requests on one client connection (pipelined, bodies by length and chunked,
upgrades with and without bodies, h2c, requests for no app, requests that are refused), split
into reads at arbitrary points; each backend answers each request in a drawn way (every framing,
1xx first, closing its connection, 101 or a refusal to an upgrade), split too. ``check`` runs
one stream through the data plane in memory (tests/memory.py) and asserts:

- every backend connection reads, with h11, exactly the requests the router accepted, in order,
  with their bodies intact -- and nothing that came after a closing answer;
- the client gets exactly one response per request up to the one that ends the connection, in
  order, each from its own request's backend exchange (the backend echoes the request's
  sequence number), then the connection closes (or, after a 101, becomes the tunnel, whose bytes
  reach the backend as sent);
- a request whose body breaks its framing never ends at the backend.

Used by tests/protocol/test_invariant.py (a few hundred examples in the suite) and by
``python3 -m benchmarks.invariant`` (hundreds of thousands, with a report).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import h11
from hypothesis import strategies as st

from tests.memory import Request, Wire

SHOP, ADMIN = "10.0.0.1:80", "10.0.0.2:80"
CONFIG: dict[str, Any] = {"apps": {
    "shop": {"routes": ["shop.test"], "session_sticky": False,
             "services": {"web": {"backends": [SHOP]}}},
    "admin": {"routes": ["shop.test/admin"], "session_sticky": False,
              "services": {"web": {"backends": [ADMIN]}}},
}}


@dataclass
class Req:
    seq: int
    kind: str  # routed | nohost | refused | badchunk | upgrade | h2c
    method: bytes
    target: bytes  # as sent
    seen_target: bytes  # as the backend must see it
    backend: str | None
    body: bytes
    raw: bytes  # the bytes on the wire
    close: bool  # Connection: close
    tunnel: bytes = b""  # bytes sent after an upgrade request
    answer: str = "cl"  # how its backend answers (see ANSWERS)
    answer_splits: list[int] = field(default_factory=list)


ANSWERS = ("cl", "cl-close", "chunked", "eof", "204", "interim", "empty")
_PATHS = [(b"/", b"/", SHOP), (b"/a/b?q=1", b"/a/b?q=1", SHOP), (b"/admin/x", b"/admin/x", ADMIN),
          (b"/%61dmin/y", b"/admin/y", ADMIN), (b"//a//b", b"/a/b", SHOP),
          (b"/admin;s=1/z", b"/admin;s=1/z", ADMIN), (b"/adminx", b"/adminx", SHOP)]
_REFUSED = [b"GET /../admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            b"GET /a/..;/admin HTTP/1.1\r\nHost: shop.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: shop.test\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: shop.test\r\n\r\n"]
# Bodies that look like requests: if one is ever read as a request, the stream shows it.
_BODIES = [b"", b"x", b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n", b"0\r\n\r\n", b"a" * 70]


def _chunked(body: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    out = b""
    for a, b in zip(points, points[1:]):
        if b > a:
            out += b"%x\r\n%b\r\n" % (b - a, body[a:b])
    return out + b"0\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn, seq: int) -> Req:
    kind = draw(st.sampled_from(["routed"] * 6 + ["nohost", "refused", "badchunk", "upgrade",
                                                  "h2c", "head"]))
    close = draw(st.booleans()) and draw(st.booleans())
    seqh = b"X-Seq: %d\r\n" % seq
    conn = b"Connection: close\r\n" if close else b""
    if kind == "refused":
        raw = draw(st.sampled_from(_REFUSED))
        return Req(seq, kind, b"", b"", b"", None, b"", raw, True)
    target, seen, backend = draw(st.sampled_from(_PATHS))
    body = draw(st.sampled_from(_BODIES))
    framing = draw(st.sampled_from(["length", "chunked"])) if body else "none"
    method = b"POST" if body else draw(st.sampled_from([b"GET", b"DELETE"]))
    host = b"shop.test"
    extra = b""
    if kind == "head":
        method, body, framing, kind = b"HEAD", b"", "none", "routed"
    if kind == "nohost":
        host = b"nowhere.test"
    if kind == "upgrade":
        extra = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        conn = b""
        close = False
    if kind == "h2c":
        extra = draw(st.sampled_from([b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                      b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
                                      b"Connection: upgrade\r\nUpgrade: h2c, websocket\r\n"]))
        kind = "routed"
    head = (method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + seqh + conn + extra)
    if framing == "length":
        raw = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        cuts = draw(st.lists(st.integers(0, 80), max_size=3))
        raw = head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, cuts)
    else:
        raw = head + b"\r\n"
    if kind == "badchunk":
        method = b"POST"
        raw = (b"POST " + target + b" HTTP/1.1\r\nHost: shop.test\r\n" + seqh
               + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        body = b"abc"
    req = Req(seq, kind, method, target, seen, backend if kind != "nohost" else None, body, raw,
              close)
    if kind == "upgrade":
        req.tunnel = draw(st.sampled_from([b"", b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n",
                                           b"\x81\x05hello"]))
        req.raw += req.tunnel
        req.answer = draw(st.sampled_from(["101", "400"]))
    elif kind == "routed":
        req.answer = draw(st.sampled_from(ANSWERS))
    req.answer_splits = draw(st.lists(st.integers(1, 60), max_size=2))
    return req


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Req], list[int]]:
    n = draw(st.integers(1, 5))
    reqs = [draw(requests(i)) for i in range(n)]
    total = sum(len(r.raw) for r in reqs)
    # Reads part anywhere, and often within a few bytes of where the parsing changes state --
    # a head's end, a request's end -- where a reader's bookkeeping has its edge cases.
    edges = []
    at = 0
    for r in reqs:
        head_end = r.raw.find(b"\r\n\r\n")
        if head_end >= 0:
            edges.append(at + head_end + 4)
        at += len(r.raw)
        edges.append(at)
    near = st.builds(lambda e, d: min(max(1, e + d), max(1, total)),
                     st.sampled_from(edges), st.integers(-3, 3))
    splits = draw(st.lists(st.integers(1, max(1, total)) | near, max_size=6))
    return reqs, splits


def _answer(req: Req, seen: Request) -> tuple[list[bytes], bool]:
    seq = seen.header(b"x-seq") or b"?"
    body = b"seq=" + seq
    kind = req.answer
    if kind == "101":
        raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhi"
        close = False
    elif kind == "400":
        raw, close = b"HTTP/1.1 400 No\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body), False
    elif kind == "cl" or req.method == b"HEAD":
        raw, close = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body), False
        if req.method == b"HEAD":
            raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    elif kind == "cl-close":
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        close = True
    elif kind == "chunked":
        raw, close = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, [3]), False
    elif kind == "eof":
        raw, close = b"HTTP/1.1 200 OK\r\n\r\n" + body, True
    elif kind == "204":
        raw, close = b"HTTP/1.1 204 No Content\r\n\r\n", False
    elif kind == "interim":
        raw = (b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        close = False
    else:  # empty body, length 0
        raw, close = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False
    if kind != "101":  # every final response names its request
        i = raw.rfind(b"HTTP/1.1 ")
        eol = raw.index(b"\r\n", i)
        raw = raw[:eol] + b"\r\nX-Seq: " + seq + raw[eol:]
    pieces, at = [], 0
    for s in sorted(set(req.answer_splits)):
        if at < s < len(raw):
            pieces.append(raw[at:s])
            at = s
    pieces.append(raw[at:])
    return pieces, close


@dataclass
class Expected:
    backend: list[Req]  # the requests backends must read, in order
    responses: list[tuple[int, int | None]]  # (status, seq echoed or None for the router's own)
    closed: bool
    tunnel: Req | None
    # A request whose body broke its framing: a backend may have read its head (if it was sent
    # before the break), never its end.
    broken: Req | None = None


def expected(reqs: list[Req]) -> list[Expected]:
    """Every outcome the router may give ``reqs``, request by request, until one ends the
    stream. One, but for a request for no app with a body: answered as soon as its head is read
    (its body unread) the answer closes; answered once its body is read (it waited its turn
    behind another) it need not. Both are right; which one happens depends on the reads."""
    outs: list[Expected] = []
    _expect(reqs, 0, [], [], outs)
    return outs


def _expect(reqs: list[Req], i: int, backend: list[Req], responses: list[tuple[int, int | None]],
            outs: list[Expected]) -> None:
    for r in reqs[i:]:
        if r.kind == "refused":
            outs.append(Expected(backend, responses + [(400, None)], True, None))
            return
        if r.kind == "nohost":
            responses = responses + [(404, None)]
            if r.close:
                outs.append(Expected(backend, responses, True, None))
                return
            if r.body:
                outs.append(Expected(backend, responses, True, None))
                _expect(reqs, r.seq + 1, list(backend), responses, outs)
                return
            continue
        if r.kind == "badchunk":
            outs.append(Expected(backend, responses + [(400, None)], True, None, broken=r))
            return
        backend = backend + [r]
        if r.kind == "upgrade":
            if r.answer == "101":
                outs.append(Expected(backend, responses + [(101, None)], False, r))
            else:
                outs.append(Expected(backend, responses + [(400, r.seq)], True, None))
            return
        status = 204 if r.answer == "204" and r.method != b"HEAD" else 200
        responses = responses + [(status, r.seq)]
        if r.close:
            outs.append(Expected(backend, responses, True, None))
            return
    outs.append(Expected(backend, responses, False, None))


def _client_responses(data: bytes, reqs: list[Req]) -> tuple[list[tuple[int, bytes, bytes]], bytes]:
    """The responses in ``data`` (parsed with h11, one per request), and what follows a 101."""
    out: list[tuple[int, bytes, bytes]] = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    for r in reqs:
        headers = [("Host", "x")]
        if r.kind == "upgrade":
            headers += [("Connection", "upgrade"), ("Upgrade", "websocket")]
        conn.send(h11.Request(method=r.method or b"GET", target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, b"", b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                return out, b""
            if ev is h11.PAUSED:
                return out + [(101, headers, b"")], bytes(conn.trailing_data[0])
            if isinstance(ev, h11.InformationalResponse):
                if ev.status_code == 101:
                    return out + [(101, b"", b"")], bytes(conn.trailing_data[0])
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
                headers = b"".join(k + b":" + v + b";" for k, v in ev.headers.raw_items())
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                out.append((status, headers, body))
                break
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return out, b""
        conn.start_next_cycle()
    return out, b""


def check(reqs: list[Req], splits: list[int]) -> str:
    """Run one stream; raise AssertionError if the invariant breaks. Returns how it ended."""
    w = Wire(CONFIG)
    by_seq = {r.seq: r for r in reqs}
    for key in (SHOP, ADMIN):
        w.backend(key).answer = lambda seen: _answer(by_seq[int(seen.header(b"x-seq") or -1)], seen)
    c = w.client()
    data = b"".join(r.raw for r in reqs)
    at = 0
    for s in sorted(set(splits)) + [len(data)]:
        if at < s <= len(data):
            c.send(data[at:s])
            at = s
    w.loop.run()
    first: AssertionError | None = None
    for want in expected(reqs):
        try:
            return _compare(w, c, reqs, want)
        except AssertionError as e:
            first = first or e
    assert first is not None
    raise first


def _compare(w: Wire, c: Any, reqs: list[Req], want: Expected) -> str:
    # What the backends read: exactly the accepted requests, in order, whole.
    seen_all: list[tuple[int, Request]] = []
    for key in (SHOP, ADMIN):
        for peer in w.backend(key).peers:
            assert peer.error is None, f"{key}: h11 refused what the router sent: {peer.error}"
            seqs = [int(r.header(b"x-seq") or -1) for r in peer.requests if r.method]
            assert seqs == sorted(seqs), f"{key}: out of order on one connection: {seqs}"
            seen_all += [(int(r.header(b"x-seq") or -1), r) for r in peer.requests if r.method]
            for r in peer.requests:
                assert r.target != b"/smuggled", "a body or tunnel byte was read as a request"
    seen_all.sort(key=lambda x: x[0])
    broken = want.broken
    if broken is not None and seen_all and seen_all[-1][0] == broken.seq:
        assert not seen_all.pop()[1].complete, (
            "a request whose body broke its framing ended at the backend")
    assert [s for s, _ in seen_all] == [r.seq for r in want.backend], (
        f"backends read {[s for s, _ in seen_all]}, want {[r.seq for r in want.backend]}")
    for (seq, got), r in zip(seen_all, want.backend):
        assert got.method == r.method and got.target == r.seen_target, (got, r)
        assert got.complete and got.body == r.body, (seq, got.body, r.body)
        assert got.header(b"upgrade") in ((b"websocket",) if r.kind == "upgrade" else (None,))

    # What the client got: one response per request, in order, each its own.
    got, after = _client_responses(c.received(), reqs[:len(want.responses)])
    statuses = [(s, int(m.group(1)) if (m := re.search(rb"seq[=:] ?([0-9]+)", b + h, re.I)) else None)
                for s, h, b in got]
    assert [s for s, _ in statuses] == [s for s, _ in want.responses], (statuses, want.responses)
    for (s, q), (_, wq) in zip(statuses, want.responses):
        if wq is not None:
            assert q == wq, f"response {s} carries seq {q}, want {wq}"
    tunnel = want.tunnel
    if tunnel is not None:
        assert after == b"hi", after
        sent_after = tunnel.tunnel + b"".join(r.raw for r in reqs if r.seq > tunnel.seq)
        got_tunnel = w.backend(tunnel.backend or "").requests()[-1].tunnel
        assert got_tunnel == sent_after, (got_tunnel, sent_after)
        assert not c.closed
        return "tunnel"
    assert c.closed == want.closed, f"client connection closed={c.closed}, want {want.closed}"
    return "closed" if want.closed else "open"
