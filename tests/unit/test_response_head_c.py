"""The response head's C function (router/http/_head.c) against the Python code it stands in
for: llhttp's verdict (``llhttp_check``) and ``read_response_head``'s rewrite, byte for byte,
on hand-written edge cases, the responses of the attack corpus, and Hypothesis' heads; and
whether the backend connection is used again against RFC 9112 9.3, read here on its own
(``persistent``), not from llhttp's should_keep_alive(), which is wrong after a response
complete at its head (a 204 with ``Connection: close`` kept, a 200 with ``Content-Length: 0``
not)."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.http import framing
from router.http import response_head as rhm
from router.http.response_head import ResponseError, llhttp_check, read_response_head

try:
    from router.http import _head
except ImportError:  # not built: nothing to compare (a build with a compiler must have it)
    _head = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    _head is None and not os.environ.get("ROUTER_EXPECT_COMPILED"),
    reason="router.http._head not built")

COOKIE = b"Set-Cookie: CONTAINERID=tok; Path=/"
# Every combination of what the request was (head_request, client_http11, client_keep_alive,
# upgrade_requested, request_done, accepting), as the flags of _head.head.
FLAGS = range(64)


def python(raw: bytes, flags: int, set_cookie: bytes, own: bytes):
    """What the Python code makes of ``raw``: a tuple as the C function's, or the error."""
    try:
        rh = read_response_head(
            raw, llhttp_check(raw), head_request=bool(flags & 1),
            client_http11=bool(flags & 2), client_keep_alive=bool(flags & 4),
            upgrade_requested=bool(flags & 8), request_done=bool(flags & 16),
            accepting=bool(flags & 32), set_cookie=set_cookie, own_cookie=own)
    except ResponseError as e:
        return str(e)
    return (rh.status, rh.head, rh.body, rh.length, rh.rechunk, rh.close, rh.reusable)


def persistent(raw: bytes) -> bool:
    """Whether the backend keeps the connection after the response head ``raw`` (RFC 9112 9.3:
    not with ``close`` among the Connection options; else HTTP/1.1 or later does, HTTP/1.0 only
    with ``keep-alive``), read naively from the lines: for heads llhttp accepted. llhttp reads
    ``Proxy-Connection`` as Connection, and so does the router."""
    lines = raw.lstrip(b"\r\n").split(b"\r\n")  # (llhttp skips empty lines before it)
    version = lines[0].split(b"/", 1)[1][:3]
    options = set()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() in (b"connection", b"proxy-connection"):
            options |= {t.strip(b" \t").lower() for t in value.split(b",")}
    return b"close" not in options and (version >= b"1.1" or b"keep-alive" in options)


def reusable(raw: bytes, flags: int, body: int) -> bool:
    """Whether the backend connection may serve another request after the final response
    ``raw`` whose body is framed as ``body``: the backend keeps it, the body does not end with
    the close, the request was sent whole, and no Transfer-Encoding came with HTTP/1.0 (RFC
    9112 6.1)."""
    names = {line.partition(b":")[0].lower() for line in raw.split(b"\r\n")[1:]}
    old = raw.split(b"/", 1)[1][:3] < b"1.1"
    return (persistent(raw) and body != framing.EOF and bool(flags & 16)
            and not (old and b"transfer-encoding" in names))


def c(raw: bytes, flags: int, set_cookie: bytes, own: bytes, after: bytes = b""):
    """What the C function makes of ``raw`` followed by its empty line and ``after`` (the body,
    the next response: what a read holds past the head), less the head's end, which must be
    where ``bytes.find`` finds it."""
    buf = raw + b"\r\n\r\n" + after
    try:
        got = _head.head(buf, flags, set_cookie, own)
    except ValueError as e:
        return str(e)
    if got is None:
        return None
    end = buf.find(b"\r\n\r\n")
    assert got[7] == end, buf
    # A short Content-Length body after the head goes with it, as much of it as was read.
    head, taken = got[1], got[8]
    body = buf[end + 4:end + 4 + got[3]] if got[2] == framing.LENGTH else b""
    assert taken == (len(body) if len(body) <= 4096 else 0), buf
    assert head[len(head) - taken:] == body[:taken], buf
    return got[:1] + (head[:len(head) - taken],) + got[2:7]


def not_whole(raw: bytes, flags: int, set_cookie: bytes, own: bytes) -> None:
    """Every prefix of the head without its whole empty line is not a head yet for the C
    function (None: the caller reads on, and llhttp checks the pieces), whatever it holds."""
    buf = raw + b"\r\n\r\n"
    for i in range(buf.find(b"\r\n\r\n") + 4):
        assert _head.head(buf[:i], flags, set_cookie, own) is None, buf[:i]


def agree(raw: bytes, flags: int = 2 | 4 | 16 | 32, set_cookie: bytes = b"",
          own: bytes = b"") -> bool:
    """Assert the C function and the Python code agree on ``raw``; False if C left it to
    Python (None). The backend connection's reuse is checked against ``reusable``."""
    got = c(raw, flags, set_cookie, own)
    want = python(raw, flags, set_cookie, own)
    # The bytes after the head change nothing: nor the body, nor what looks like a head.
    for after in (b"body", b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"\x00",
                  b"x" * 4095, b"x" * 4097, b"x" * 70000):
        assert c(raw, flags, set_cookie, own, after) == got, (raw, after)
    if isinstance(want, tuple) and want[0] >= 200 and want[0] != 101:
        assert want[6] == reusable(raw, flags, want[2]), (raw, flags)
    if got is None:
        return False
    assert got == want, raw
    # llhttp's own verdict: C refuses as malformed exactly what llhttp refuses.
    try:
        llhttp_check(raw)
        refused = False
    except ResponseError:
        refused = True
    assert refused == (isinstance(got, str) and got.startswith("malformed response")), raw
    return True


CASES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200",
    b"HTTP/1.1 200 ",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0",
    b"HTTP/1.1 204 No Content\r\nConnection: close",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: e",
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s>",
    b"HTTP/1.1 150 X\r\nContent-Length: 5",
    b"HTTP/1.1 199 X",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade",
    b"HTTP/1.1 099 Low",
    b"HTTP/1.1 000 Zero",
    b"HTTP/1.1 600 High\r\nContent-Length: 1",
    b"HTTP/1.1 999 X",
    b"HTTP/1.1 20 OK",
    b"HTTP/1.1 2000 OK",
    b"HTTP/1.1 2OO OK\r\nContent-Length: 2",
    b"HTTP/1.1  200 OK",
    b"HTTP/1.2 200 OK",
    b"HTTP/2.0 200 OK\r\nContent-Length: 1",
    b"HTTP/0.9 200 OK\r\nContent-Length: 1",
    b"HTTP/3.0 200 OK",
    b"HTTP/1.10 200 OK",
    b"HTTP/a.1 200 OK",
    b"HTTP/11 200 OK",
    b"HTTP/1.1\t200 OK",
    b"HTTP/1.1 200\tOK",
    b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0",
    b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0",
    b"HTTP/1.1 200 O\tK \xe9\r\nContent-Length: 0",
    b"HTTP/1.1 200 OK\x7f",
    b"HTTP/1.1 200 OK\nContent-Length: 0",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\nX: y",
    b"HTTP/1.1 200 OK\r\nX: y\rZ: w",
    b"HTTP/1.1 200 OK\r\nX: y\r",
    b"HTTP/1.1 200 OK\r\n Folded: x",
    b"HTTP/1.1 200 OK\r\n\tFolded: x",
    b"HTTP/1.1 200 OK\r\nX: y\r\n folded",
    b"HTTP/1.1 200 OK\r\nX: y\r\n\tfolded",
    b"HTTP/1.1 200 OK\r\nX:\r\n folded",
    b"HTTP/1.1 200 OK\r\nX:\r\nY: z",
    b"HTTP/1.1 200 OK\r\nX:   \t \r\nY: z",
    b"HTTP/1.1 200 OK\r\nX: a\x00b",
    b"HTTP/1.1 200 OK\r\nX: a\x01b",
    b"HTTP/1.1 200 OK\r\nX: a\x7fb",
    b"HTTP/1.1 200 OK\r\nX: a\x0bb",
    b"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9 \xff\x80",
    b"HTTP/1.1 200 OK\r\nX: a\tb ",
    b"HTTP/1.1 200 OK\r\nX : y",
    b"HTTP/1.1 200 OK\r\nContent-Length : 5",
    b"HTTP/1.1 200 OK\r\nConnection : close",
    b"HTTP/1.1 200 OK\r\nUpgrade : x",
    b"HTTP/1.1 200 OK\r\nSet-Cookie : x",
    b"HTTP/1.1 200 OK\r\nX\t: y",
    b"HTTP/1.1 200 OK\r\n: y",
    b"HTTP/1.1 200 OK\r\nX y: z",
    b"HTTP/1.1 200 OK\r\nX(y): z",
    b"HTTP/1.1 200 OK\r\nX\xe9: z",
    b"HTTP/1.1 200 OK\r\nNoColon",
    b"HTTP/1.1 200 OK\r\n!#$%&'*+-.^_`|~09azAZ: z",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length:",
    b"HTTP/1.1 200 OK\r\nContent-Length:",
    b"HTTP/1.1 200 OK\r\nContent-Length: ",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1",
    b"HTTP/1.1 200 OK\r\nContent-Length: +1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x10",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1 2",
    b"HTTP/1.1 200 OK\r\nContent-Length: \t12 \t",
    b"HTTP/1.1 200 OK\r\nContent-Length: 007",
    b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615",
    b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding:",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked \t",
    b"HTTP/1.1 204 X\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 304 X\r\nTransfer-Encoding: chunked\r\nX: y",
    b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1",
    b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK\r\nKeep-Alive: a\r\nKeep-Alive: b\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: CONTAINERID=evil\r\nSet-Cookie: a=b\r\nContent-Length: 0",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 1",
    b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close",
    b"HTTP/1.1 304 Not Modified\r\nConnection: close",
    b"HTTP/1.1 100 Continue\r\nConnection: close",
    b"HTTP/1.1 204 X\r\nConnection: x, close\r\nX: 1",
    b"HTTP/1.1 204 X\r\nProxy-Connection: close",
    b"HTTP/1.0 204 No Content\r\nConnection: keep-alive",
    b"HTTP/1.0 204 X\r\nConnection: Keep-Alive, x",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive",
    b"HTTP/1.0 200 OK\r\nProxy-Connection: keep-alive\r\nContent-Length: 1",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive",
    b"HTTP/2.0 204 X",
    b"HTTP/0.9 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Big: " + b"v" * 5000,
    b"RTSP/1.0 200 OK\r\nContent-Length: 0",
    b"ICE/1.0 200 OK",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0",
    b"HTTPS/1.1 200 OK",
    b"http/1.1 200 OK",
    b"garbage",
    b"",
]


@pytest.mark.parametrize("raw", CASES)
def test_c_and_python_agree_on_edge_cases(raw):
    for flags in FLAGS:
        agree(raw, flags)
        agree(raw, flags, COOKIE)
        agree(raw, flags, COOKIE, b"CONTAINERID=")


@pytest.mark.parametrize("raw", CASES)
def test_a_head_without_its_empty_line_is_not_whole(raw):
    not_whole(raw, 2 | 4 | 16 | 32, b"", b"")
    not_whole(raw, 2 | 4 | 16 | 32, COOKIE, b"CONTAINERID=")


def test_the_heads_end_is_the_first_empty_line():
    """As bytes.find: the first CRLF CRLF, after a status line alone, an empty value, with a
    second head after it; none in a CR LF CR without its LF, nor in a buffer that ends in the
    status line, the reason phrase (a NUL in it) or after a field's line."""
    for buf in [b"HTTP/1.1 200 OK\r\n\r\n",
                b"HTTP/1.1 204 X\r\nA: b\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nA:\r\n\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"]:
        got = _head.head(buf, 2 | 4 | 16 | 32, b"", b"")
        assert got is not None and got[7] == buf.find(b"\r\n\r\n"), buf
    for buf in [b"HTTP/1.1 200 OK\r\n\r", b"HTTP/1.1 200 OK\r\nA: b\r\n\rx\n",
                b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 2", b"HTTP", b""]:
        assert _head.head(buf, 2 | 4 | 16 | 32, b"", b"") is None, buf
    with pytest.raises(ValueError, match="Invalid header token"):
        _head.head(b"HTTP/1.1 200 OK\r\nA b\r\n\r\n", 2, b"", b"")


def test_the_common_heads_are_not_left_to_python():
    """The heads of an ordinary exchange take the C path (a None here would hide a slowdown)."""
    for raw in [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
                b"HTTP/1.1 304 Not Modified\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5",
                b"HTTP/1.0 200 OK\r\nConnection: close",
                b"HTTP/1.1 100 Continue"]:
        assert agree(raw)
        assert agree(raw, set_cookie=COOKIE, own=b"SID=")


def test_refusals_carry_llhttps_reason():
    assert c(b"HTTP/1.1 200 OK\r\nX: a\x00b", 2, b"", b"") == (
        "malformed response: Invalid header value char")
    assert c(b"HTTP/1.1 2OO OK", 2, b"", b"") == "malformed response: Invalid status code"
    assert c(b"HTTP/1.1 099 X", 2, b"", b"") == "status code below 100"


def test_attack_corpus_responses():
    from tests.protocol import streams
    from tests.reliability import faultserver

    heads = []
    for mod in (streams, faultserver):
        src = open(mod.__file__, "rb").read()
        heads += [h.split(b"\r\n\r\n")[0] for h in _literals(src)]
    assert len(heads) >= 5
    for raw in heads:
        for flags in FLAGS:
            agree(raw, flags)


def _literals(src: bytes) -> list[bytes]:
    """The response heads written as bytes literals in a test module's source."""
    import ast

    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes) \
                and node.value.startswith(b"HTTP/1.") and b"\r\n\r\n" in node.value:
            out.append(node.value)
    return out


NAMES = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding",
         b"Connection", b"Proxy-Connection", b"Keep-Alive", b"TE", b"Trailer", b"Upgrade",
         b"Set-Cookie", b"X-A", b"Server", b"ETag", b"Content-Lengthx", b"Connectio", b"",
         b"X A", b"X\x00"]
VALUES = [b"0", b"5", b" 12 ", b"1 2", b"", b" ", b"chunked", b"Chunked", b"gzip, chunked",
          b"chunked, gzip", b"close", b"keep-alive", b"Keep-Alive", b" close ", b"close, x",
          b"upgrade", b"x\x00y", b"\xe9", b"a\tb", b"CONTAINERID=x", b"a=b", b"-1",
          b"99999999999999999999", b"\x7f", b"x\ry", b"x\ny"]
STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No", b"HTTP/1.1 304 X",
          b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 S", b"HTTP/1.1 103 E", b"HTTP/1.1 150",
          b"HTTP/1.1 099 X", b"HTTP/1.1 600 X", b"HTTP/2.0 200 OK", b"HTTP/1.1 200 \x01",
          b"HTTP/1.1 20 X", b"HTTP/1.1 404"]
SEPS = [b": ", b":", b":\t", b" : ", b":  "]


@st.composite
def heads(draw):
    lines = [draw(st.sampled_from(STATUS))]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(st.sampled_from(NAMES)) + draw(st.sampled_from(SEPS))
                     + draw(st.sampled_from(VALUES)))
    raw = b"\r\n".join(lines)
    # A few bytes changed anywhere, to reach what no table lists.
    for _ in range(draw(st.integers(0, 2))):
        if raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw.split(b"\r\n\r\n")[0]


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(heads(), st.sampled_from(FLAGS), st.sampled_from([b"", COOKIE]),
       st.sampled_from([b"", b"CONTAINERID="]))
def test_c_and_python_agree_on_generated_heads(raw, flags, set_cookie, own):
    agree(raw, flags, set_cookie, own)
    not_whole(raw, flags, set_cookie, own)


def test_check_response_head_uses_the_c_function():
    assert rhm._c_head is not None or os.environ.get("ROUTER_PURE_PYTHON")
