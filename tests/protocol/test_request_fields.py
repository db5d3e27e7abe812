"""The request head's fields, read from its bytes once llhttp has accepted it, against what
llhttp reports field by field (``on_header``, the reference): equal for every head llhttp
accepts, whole, split into reads at every byte, and pipelined behind other requests."""

from __future__ import annotations

import io

import httptools
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from router.dataplane.accesslog import AccessLog, Entry
from router.http import request_head
from router.http.request_head import field_lines, request_fields
from tests.memory import Request, Wire
from tests.reliability.corpus import CORPUS

SHOP = "10.0.0.1:80"


class _Reference:
    """llhttp's own report of each head's fields, one callback per field."""

    def __init__(self) -> None:
        self.heads: list[list[tuple[bytes, bytes]]] = []
        self.fields: list[tuple[bytes, bytes]] = []
        self.in_head = False

    def on_message_begin(self) -> None:
        self.fields = []
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # (not a chunked body's trailer fields)
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.heads.append(self.fields)


def reference(data: bytes) -> list[list[tuple[bytes, bytes]]] | None:
    """The fields of each head llhttp accepts in ``data``; None if it refuses any of it."""
    ref = _Reference()
    try:
        httptools.HttpRequestParser(ref).feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    return ref.heads


# The Python version, and the C one (router/http/_fields.c) when it is built: each must read
# what llhttp reports.
def _c(buf: bytes | bytearray, pos: int) -> list[tuple[bytes, bytes]]:
    assert request_head._C.fields is not None
    return request_head._C.fields(buf, pos, -1)[0]


SCANS = [request_fields] + ([_c] if request_head._C.fields else [])


def scanned(head: bytes | bytearray) -> list[tuple[bytes, bytes]]:
    pos = 0
    while head[pos] in b"\r\n":
        pos += 1
    got = [scan(bytes(head), pos) for scan in SCANS]
    if request_head._C.fields is not None:  # (the C one reads the read buffer itself)
        got.append(_c(bytearray(head), pos))
    assert all(g == got[0] for g in got), got
    return got[0]


# -- the scan against llhttp, head by head ---------------------------------------------------
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPECIAL = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade",
            b"content-length", b"CONNECTION", b"Proxy-Connection", b"Keep-Alive", b"Expect"]
names = st.one_of(st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(_TCHAR[c % len(_TCHAR)] for c in b)), st.sampled_from(_SPECIAL))
# Value bytes llhttp sees: visible characters, obs-text, spaces and tabs; and now and then a
# few it refuses (CR, LF, NUL, DEL, other controls), so that refused heads are drawn too.
_VALUE = list(range(0x21, 0x7F)) + [0x80, 0xA0, 0xFF, 0x20, 0x20, 0x09]
_BAD = _VALUE + [0x0D, 0x0A, 0x00, 0x7F, 0x01]
values = st.one_of(*[st.lists(st.sampled_from(_VALUE), max_size=20).map(bytes)] * 9,
                   st.lists(st.sampled_from(_BAD), max_size=20).map(bytes))
ows = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t ", b"\t\t"])
values_by_name = {b"Content-Length": st.sampled_from([b"0", b"5", b" 5", b"5 ", b"05", b"x"]),
                  b"Transfer-Encoding": st.sampled_from([b"chunked", b"gzip, chunked", b"x"]),
                  b"Connection": st.sampled_from([b"close", b"keep-alive", b"Upgrade",
                                                   b" keep-alive , upgrade ", b"x,,y"])}


@st.composite
def field_line(draw: st.DrawFn) -> bytes:
    name = draw(names)
    value = draw(values_by_name.get(name, values))
    sep = draw(st.sampled_from([b":"] * 5 + [b": "] * 5 + [b" :"]))  # (" :" is refused)
    fold = draw(st.sampled_from([b""] * 20 + [b"\r\n folded", b"\r\n\tfolded"]))
    return name + sep + draw(ows) + value + draw(ows) + fold + b"\r\n"


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lead = draw(st.sampled_from([b"", b"", b"\r\n", b"\n", b"\r\n\r\n"]))
    line = draw(st.sampled_from([b"GET / HTTP/1.1", b"POST /a?b=c HTTP/1.0",
                                 b"OPTIONS * HTTP/1.1", b"GET  /two-spaces HTTP/1.1",
                                 b"GET http://x.test/p HTTP/1.1", b"PRI * HTTP/2.0"]))
    fields = draw(st.lists(field_line(), max_size=12))
    return lead + line + b"\r\n" + b"".join(fields) + b"\r\n"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(heads())
def test_generated_heads_read_as_llhttp_reports_them(head):
    ref = reference(head)
    assume(ref is not None and len(ref) == 1)
    assert scanned(head) == ref[0], head


HAND = [
    b"GET / HTTP/1.1\r\n\r\n",  # no field
    b"GET / HTTP/1.1\r\nA:\r\n\r\n",  # empty value
    b"GET / HTTP/1.1\r\nA: \t \r\nB:c\r\n\r\n",  # only whitespace, then none
    b"GET / HTTP/1.1\r\nA:  b  \r\n\r\n",  # trailing spaces are llhttp's value too
    b"GET / HTTP/1.1\r\nA:\tb\t\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b: c :d\r\n\r\n",  # the first colon ends the name
    b"GET / HTTP/1.1\r\nA: \x80\xff\xfe\r\n\r\n",  # obs-text
    b"GET / HTTP/1.1\r\nA: b c  d\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n",  # empty lines before the request line
    b"\n\nGET / HTTP/1.1\r\nA: b\r\n\r\n",
    b"GET  /x  HTTP/1.1\r\nA: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection:  keep-alive ,  Upgrade \r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length:  0 \r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding:  chunked\r\n\r\n0\r\nT: trailer\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-F%d: %d\r\n" % (i, i) for i in range(200)) + b"\r\n",
    b"GET / HTTP/1.1\r\nCookie: " + b"a=" + b"b" * 9000 + b"\r\n\r\n",
    # refused by llhttp: nothing to compare, but they must stay refused
    b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
    b"GET / HTTP/1.1\r\n A: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
    b"GET / HTTP/1.1\r\n: b\r\n\r\n",
]
_REFUSED = HAND[-6:]


@pytest.mark.parametrize("head", HAND)
def test_hand_written_heads_read_as_llhttp_reports_them(head):
    ref = reference(head)
    if head in _REFUSED:
        assert ref is None  # (llhttp judges these; the scan never sees them)
        return
    assert ref is not None
    assert scanned(head) == ref[0]


class _Starts(_Reference):
    """The reference, fed a byte at a time: where each head begins, too."""

    def __init__(self) -> None:
        super().__init__()
        self.at = 0
        self.starts: list[int] = []

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.starts.append(self.at)


def test_the_attack_corpus_heads_read_as_llhttp_reports_them():
    compared = 0
    for case in CORPUS:
        ref = _Starts()
        parser = httptools.HttpRequestParser(ref)
        try:
            for i in range(len(case.data)):
                ref.at = i
                parser.feed_data(case.data[i:i + 1])
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            pass  # (the heads accepted before are compared)
        for start, fields in zip(ref.starts, ref.heads):
            for scan in SCANS:
                assert scan(case.data, start) == fields, case.name
            compared += 1
    assert compared > 100


@pytest.mark.parametrize("line, method, url, http11", [
    (b"GET / HTTP/1.1", b"GET", b"/", True),
    (b"\r\nGET /x?y HTTP/1.1", b"GET", b"/x?y", True),
    (b"GET / HTTP/1.0", b"GET", b"/", False),
    (b"GET  / HTTP/1.1", b"GET", b"/", False),  # (llhttp's get_http_version tells then)
    (b"OPTIONS * HTTP/1.1", b"OPTIONS", b"*", True),
])
def test_http11_read_with_the_fields_as_http11_line_reads_it(line, method, url, http11):
    head = line + b"\r\nHost: a\r\n\r\n"
    want = ([(b"Host", b"a")], http11)
    assert request_head.head_fields(head, 0, method, url) == want
    assert request_head.head_fields(bytearray(head), 0, method, url) == want
    saved, request_head._C.fields = request_head._C.fields, None
    try:  # the Python version, as without a C compiler
        assert request_head.head_fields(head, 0, method, url) == want
        assert request_head.head_fields(bytearray(head), 0, method, url) == want
    finally:
        request_head._C.fields = saved


def test_field_lines_counts_the_fields_begun():
    head = bytearray(b"GET / HTTP/1.1\r\nA: b\r\nC: d\r\n")
    assert field_lines(head, 0) == 2  # A begun by the request line's end, C by A's
    head += b"E"
    assert field_lines(head, len(head) - 3) == 1  # C reported (its end and E's first byte)
    head += b": f\r\n\r"
    assert field_lines(head, len(head) - 7) == 0  # the empty line begins no field


# -- through the client connection: split into reads, pipelined ------------------------------
def ok(req: Request) -> tuple[list[bytes], bool]:
    return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], False


def logged(reads: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
    """The fields each request on one connection was read with (from the access log), the
    connection given ``reads`` one after the other."""
    w = Wire({"apps": {"shop": {"routes": ["shop.test"], "session_sticky": False,
                                "services": {"web": {"backends": [SHOP]}}}}})
    w.backend(SHOP).answer = ok
    got: list[list[tuple[bytes, bytes]]] = []

    def line(e: Entry) -> bytes:
        got.append(list(e.headers))
        return b""

    log = AccessLog(w.loop, "json", io.BytesIO())  # type: ignore[arg-type]
    log.line = line
    w.ctx.log_access = log
    c = w.client()
    for data in reads:
        c.send(data)
    assert c.received().count(b"HTTP/1.1 200 ") == len(got), c.received()
    return got


H = b"Host: shop.test\r\n"
BROWSER = (b"GET /app/page?x=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive\r\n"
           b"Cache-Control: max-age=0\r\nsec-ch-ua: \"Chromium\";v=\"131\"\r\n"
           b"sec-ch-ua-mobile: ?0\r\nsec-ch-ua-platform: \"Linux\"\r\n"
           b"Upgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
           b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
           b"Sec-Fetch-Site: none\r\nAccept-Encoding: gzip, deflate, br\r\n"
           b"Accept-Language: en-US,en;q=0.9\r\nCookie: a=b; c=d\r\n\r\n")
ODD = (b"\r\nGET /odd HTTP/1.1\r\nhost:shop.test\r\nX-Empty:\r\nX-Ws: \t \r\n"
       b"X-Trail: v \t\r\nX-Colon: a:b\r\nX-Obs: \x80\xff\r\n\r\n")
POST_LENGTH = b"POST /l HTTP/1.1\r\n" + H + b"X-A: 1\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = (b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nX-B:  2 \r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n")
STREAMS = {
    "browser": BROWSER,
    "odd": ODD,
    "pipelined, no bodies": BROWSER + ODD + BROWSER,
    "pipelined behind a length body": POST_LENGTH + ODD + POST_LENGTH,
    "pipelined behind a chunked body": POST_CHUNKED + BROWSER + POST_CHUNKED + ODD,
}


@pytest.mark.parametrize("stream", list(STREAMS.values()), ids=list(STREAMS))
def test_heads_split_at_every_byte_and_pipelined_read_as_llhttp_reports_them(stream):
    want = reference(stream)
    assert want is not None and len(want) >= 1
    assert logged([stream]) == want
    for cut in range(1, len(stream)):
        assert logged([stream[:cut], stream[cut:]]) == want, cut
    # and byte by byte
    assert logged([stream[i:i + 1] for i in range(len(stream))]) == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(st.lists(field_line(), max_size=6), min_size=1, max_size=3),
       st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_generated_pipelined_heads_split_anywhere_read_as_llhttp_reports_them(fieldss, cuts):
    reqs = [b"GET /%d HTTP/1.1\r\n" % i + H + b"".join(fs) + b"\r\n" for i, fs in enumerate(fieldss)]
    stream = b"".join(reqs)
    want = reference(stream)
    assume(want is not None and len(want) == len(reqs))
    # Only heads the router answers (the fields the router reads itself are checked above).
    assume(all(n.lower() not in {b"host", b"content-length", b"transfer-encoding", b"connection",
                                 b"upgrade", b"expect"} for fs in want for n, _ in fs[1:]))
    points = sorted({c % len(stream) for c in cuts} - {0})
    reads = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
    assert logged(reads) == want


def test_the_c_version_refuses_what_is_not_a_whole_head():
    c = request_head._C.fields
    if c is None:
        pytest.skip("router/http/_fields.c not built")
    for partial in [b"GET / HTTP/1.1", b"GET / HTTP/1.1\r\nA: b\r\n", b"GET / HTTP/1.1\r\nA: b\r\n\r",
                    b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"\r\n\r\n", b""]:
        with pytest.raises(ValueError, match="not a whole request head"):
            c(partial, 0, 5)
    with pytest.raises(ValueError):
        c(b"GET / HTTP/1.1\r\n\r\n", -1, 5)
    assert c(b"GET / HTTP/1.1\r\n\r\n", 0, 6) == ([], True)
