"""The hostile-request corpus: crafted byte sequences and the verdict each must get.

Every case is sent on its own fresh connection to a router whose table has two apps on one
host: ``shop`` at ``app.test`` and ``admin`` at ``app.test/admin`` (so path tricks that would
reach ``/admin`` through ``shop``'s prefix are visible), each backed by a recording
``FaultServer``. A case names:

``expect``     the statuses of the responses on that connection, in order; ``close`` at the end
               means the router must close the connection after them (``"400 close"``);
``forwarded``  how many requests the backends may see (a rejected or smuggled request: none);
``reason``     why this is the right verdict;
``check``      optionally, what the forwarded request must (not) carry.

Paths of requests that must never reach a backend contain ``smuggled``; the runner checks that
no backend ever saw such a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .faultserver import Seen

H = b"Host: app.test\r\n"
CLOSE = b"Connection: close\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str
    forwarded: int
    reason: str
    check: Callable[[list[Seen]], None] | None = None

    @property
    def statuses(self) -> list[str]:
        return self.expect.split()


def _get(path: bytes = b"/", extra: bytes = b"", host: bytes = H, version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + path + b" " + version + b"\r\n" + host + extra + CLOSE + b"\r\n"


def _post(extra: bytes, body: bytes, path: bytes = b"/") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\n" + H + extra + CLOSE + b"\r\n" + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


def _one(pred: Callable[[Seen], bool], what: str) -> Callable[[list[Seen]], None]:
    def check(seen: list[Seen]) -> None:
        assert len(seen) == 1 and pred(seen[0]), f"{what}: {seen}"
    return check


def _hdr(name: str, want: list[bytes]) -> Callable[[list[Seen]], None]:
    return _one(lambda s: s.header(name) == want, f"{name} should be {want}")


def _no_upgrade(seen: list[Seen]) -> None:
    for s in seen:
        assert not s.header("upgrade") and not s.header("http2-settings"), s


CORPUS: list[Case] = [
    # -- message framing: the request-smuggling family (RFC 9112 6) --------------------------
    Case("cl_and_te", _post(b"Content-Length: 6\r\n" + TE, b"0\r\n\r\nG"), "400 close", 0,
         "Content-Length with Transfer-Encoding: the classic CL.TE desync; refused, not guessed"),
    Case("te_and_cl", _post(TE + b"Content-Length: 3\r\n", b"0\r\n\r\n"), "400 close", 0,
         "the same, headers in the other order (TE.CL)"),
    Case("cl_duplicate_same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
         "400 close", 0, "duplicate Content-Length, even equal"),
    Case("cl_duplicate_differ", _post(b"Content-Length: 5\r\nContent-Length: 0\r\n", b"hello"),
         "400 close", 0, "two lengths: which one the backend picks is a desync"),
    Case("cl_list", _post(b"Content-Length: 5, 5\r\n", b"hello"), "400 close", 0,
         "a list value: RFC 9110 8.6 lets a recipient merge it, refusing is safer"),
    Case("cl_empty", _post(b"Content-Length: \r\n", b""), "400 close", 0, "empty Content-Length"),
    Case("cl_signed", _post(b"Content-Length: +5\r\n", b"hello"), "400 close", 0,
         "a sign is not 1*DIGIT"),
    Case("cl_negative", _post(b"Content-Length: -1\r\n", b""), "400 close", 0,
         "negative length"),
    Case("cl_hex", _post(b"Content-Length: 0x5\r\n", b"hello"), "400 close", 0,
         "hexadecimal length"),
    Case("cl_overflow", _post(b"Content-Length: 99999999999999999999\r\n", b""), "400 close", 0,
         "a length past 2**64"),
    Case("cl_leading_zeros", _post(b"Content-Length: 005\r\n", b"hello"), "200 close", 1,
         "leading zeros are still 1*DIGIT: valid"),
    Case("te_identity", _post(b"Transfer-Encoding: identity\r\n", b""), "400 close", 0,
         "a request whose last coding is not chunked has no length (RFC 9112 6.3)"),
    Case("te_gzip_chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
         "400 close", 0,
         "llhttp accepts it, the router re-frames bodies and would lose the gzip: only chunked"),
    Case("te_twice", _post(TE + TE, b"0\r\n\r\n"), "400 close", 0,
         "chunked applied twice (two headers)"),
    Case("te_chunked_chunked", _post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
         "400 close", 0, "chunked twice in one value"),
    Case("te_xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), "400 close", 0,
         "unknown coding"),
    Case("te_vtab", _post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), "400 close", 0,
         "vertical tab is not whitespace in HTTP: an obfuscated TE some parsers trim"),
    Case("te_space_before_colon", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
         "400 close", 0, "RFC 9112 5.1: whitespace before the colon MUST be a 400"),
    Case("te_quoted", _post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"), "400 close", 0,
         "a quoted coding is not the chunked coding"),
    Case("te_http10", b"POST / HTTP/1.0\r\n" + H + TE + b"\r\n0\r\n\r\n", "400 close", 0,
         "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (llhttp accepts it)"),
    Case("te_uppercase", _post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
         "200 close", 1, "coding names are case-insensitive: valid",
         _one(lambda s: s.body == b"hello", "body re-chunked intact")),
    Case("chunk_size_overflow", _post(TE, b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n"), "400 close", 0,
         "a chunk size past 2**64 (wraps to a small number in naive parsers)"),
    Case("chunk_missing_crlf", _post(TE, b"3\r\nabcX\r\n0\r\n\r\n"), "400 close", 0,
         "chunk data not followed by CRLF"),
    Case("chunk_size_space", _post(TE, b"3 \r\nabc\r\n0\r\n\r\n"), "400 close", 0,
         "whitespace after a chunk size without an extension"),
    Case("chunk_bare_lf", _post(TE, b"3\nabc\r\n0\r\n\r\n"), "400 close", 0,
         "bare LF after a chunk size"),
    Case("chunk_negative", _post(TE, b"-3\r\nabc\r\n0\r\n\r\n"), "400 close", 0, "negative size"),
    Case("chunk_0x", _post(TE, b"0x3\r\nabc\r\n0\r\n\r\n"), "400 close", 0, "0x prefix"),
    Case("chunk_extension", _post(TE, b"3;a=b\r\nabc\r\n0\r\n\r\n"), "200 close", 1,
         "chunk extensions are valid (and dropped when re-chunking)",
         _one(lambda s: s.body == b"abc", "body intact")),
    # -- line endings, whitespace, bytes ------------------------------------------------------
    Case("bare_lf_request_line", b"GET / HTTP/1.1\n" + H + b"\r\n", "400 close", 0,
         "bare LF"),
    Case("bare_lf_header", b"GET / HTTP/1.1\r\nHost: app.test\nX-A: 1\r\n\r\n", "400 close", 0,
         "bare LF ending a header: one parser sees X-A, another sees it inside Host"),
    Case("bare_cr_header", b"GET / HTTP/1.1\r\nHost: app.test\rX-A: 1\r\n\r\n", "400 close", 0,
         "bare CR"),
    Case("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n 2\r\n" + CLOSE + b"\r\n",
         "400 close", 0, "obs-fold: RFC 9112 5.2 allows a 400"),
    Case("nul_in_value", _get(extra=b"X-A: a\x00b\r\n"), "400 close", 0, "NUL in a value"),
    Case("space_before_first_header", b"GET / HTTP/1.1\r\n Host: app.test\r\n\r\n", "400 close", 0,
         "a first header line starting with whitespace (RFC 9112 2.2)"),
    Case("header_bad_token", _get(extra=b"X(a): 1\r\n"), "400 close", 0,
         "a header name that is not a token"),
    Case("header_no_colon", _get(extra=b"X-A\r\n"), "400 close", 0, "a header line without ':'"),
    Case("header_obs_text_value", _get(extra=b"X-A: caf\xc3\xa9\r\n"), "200 close", 1,
         "bytes 0x80-0xFF in a value are obs-text: passed through",
         _hdr("x-a", [b"caf\xc3\xa9"])),
    Case("leading_empty_line", b"\r\n" + _get(), "200 close", 1,
         "RFC 9112 2.2: a server SHOULD ignore an empty line before the request line"),
    Case("request_line_double_space", b"GET  / HTTP/1.1\r\n" + H + CLOSE + b"\r\n", "200 close", 1,
         "llhttp accepts repeated SP in the request line; the path it forwards is unambiguous"),
    Case("version_2_0", _get(version=b"HTTP/2.0"), "505 close", 0,
         "llhttp accepts any HTTP/d.d: anything but 1.0 and 1.1 is refused"),
    Case("version_1_2", _get(version=b"HTTP/1.2"), "400 close", 0, "llhttp refuses it"),
    Case("http_0_9", b"GET /\r\n\r\n", "400 close", 0, "HTTP/0.9 has no headers, so no Host"),
    Case("method_lowercase", b"get / HTTP/1.1\r\n" + H + b"\r\n", "400 close", 0,
         "methods are case-sensitive; 'get' is not GET"),
    Case("method_unknown", b"FOO / HTTP/1.1\r\n" + H + b"\r\n", "400 close", 0,
         "llhttp knows a fixed list of methods"),
    Case("space_in_target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", "400 close", 0,
         "a space inside the request target"),
    Case("raw_utf8_in_target", _get(b"/caf\xc3\xa9"), "400 close", 0,
         "raw non-ASCII in the target: must be percent-encoded"),
    Case("fragment_in_target", _get(b"/public#/../admin"), "400 close", 0,
         "a request target has no fragment (RFC 9112 3.2); it can hide path tricks"),
    # -- limits (docs/behaviour.md) -------------------------------------------------------------------
    Case("request_line_too_long", _get(b"/" + b"a" * 9000), "414 close", 0, "request line 8 KiB"),
    Case("header_too_large", _get(extra=b"X-Big: " + b"b" * 9000 + b"\r\n"), "431 close", 0,
         "one header 8 KiB"),
    Case("header_fields_100", _get(extra=b"".join(b"X-F%d: v\r\n" % i for i in range(98))),
         "200 close", 1, "Host, 98 fields and Connection: 100 fields, the limit "
         "(limits.max_header_fields, HAProxy's tune.http.maxhdr is 101)"),
    Case("header_fields_101", _get(extra=b"".join(b"X-F%d: v\r\n" % i for i in range(99))),
         "431 close", 0, "101 fields: one past limits.max_header_fields, whatever their size"),
    Case("header_fields_tiny_many", _get(extra=b"a:b\r\n" * 5000), "431 close", 0,
         "a head of tiny fields is cut by their count, not held until its bytes run out"),
    Case("header_block_too_large",
         _get(extra=b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 4000) for i in range(20))),
         "431 close", 0, "all headers 64 KiB"),
    # -- Host (RFC 9112 3.2) -------------------------------------------------------------------
    Case("host_missing", b"GET / HTTP/1.1\r\n" + CLOSE + b"\r\n", "400 close", 0,
         "HTTP/1.1 without Host MUST be a 400"),
    Case("host_duplicate", _get(extra=b"Host: evil.example\r\n"), "400 close", 0,
         "two Host headers MUST be a 400"),
    Case("host_userinfo", _get(host=b"Host: app.test:80@evil.example\r\n"), "400 close", 0,
         "userinfo in Host: port-stripping would route it to app.test"),
    Case("host_bad_port", _get(host=b"Host: app.test:8o\r\n"), "400 close", 0, "a port of digits"),
    Case("host_list", _get(host=b"Host: app.test, evil.example\r\n"), "400 close", 0,
         "a list is not one host"),
    Case("host_empty", _get(host=b"Host: \r\n"), "400 close", 0,
         "an empty Host with an origin-form target names no host"),
    Case("host_case_and_port", _get(host=b"Host: APP.Test:8080\r\n"), "200 close", 1,
         "host matching ignores case and port"),
    Case("host_unknown", _get(host=b"Host: evil.example\r\n"), "404 close", 0,
         "not in the table: 404, nothing proxied"),
    Case("absolute_form_other_host", _get(b"http://evil.example/"), "404 close", 0,
         "absolute form is routed by its authority through our table, never dialled"),
    Case("absolute_form_metadata", _get(b"http://169.254.169.254/latest/meta-data/"), "404 close", 0,
         "a cloud metadata address is just another unknown host"),
    Case("absolute_form_our_host", _get(b"http://app.test/x", host=b"Host: evil.example\r\n"),
         "200 close", 1, "RFC 9112 3.2.2: the target's authority wins over Host; Host rewritten",
         _one(lambda s: s.header("host") == [b"app.test"] and s.path == "/x", "Host app.test, /x")),
    Case("absolute_form_userinfo", _get(b"http://u:p@app.test/"), "400 close", 0,
         "RFC 9110 4.2.4: userinfo in an http URI is an error"),
    Case("absolute_form_ftp", _get(b"ftp://app.test/"), "400 close", 0, "only http(s) URIs"),
    Case("authority_form_get", _get(b"app.test:80"), "400 close", 0,
         "authority form is only for CONNECT"),
    Case("connect", b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n", "405 close", 0,
         "CONNECT gets 405 : the router is no tunnel to anywhere"),
    Case("options_asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + CLOSE + b"\r\n", "200 close", 1,
         "asterisk form with OPTIONS is valid"),
    Case("get_asterisk", _get(b"*"), "400 close", 0, "asterisk form is only for OPTIONS"),
    # -- path tricks: refused, except // which is merged ------------------------------------------
    Case("path_dotdot", _get(b"/public/../admin/x"), "400 close", 0,
         "routed by prefix as shop, read by the backend as /admin/x: refused"),
    Case("path_dotdot_encoded", _get(b"/public/%2e%2e/admin/x"), "400 close", 0,
         "the same, percent-encoded"),
    Case("path_dotdot_mixed", _get(b"/public/.%2E/admin/x"), "400 close", 0, "half encoded"),
    Case("path_dot", _get(b"/./admin/x"), "400 close", 0, "a '.' segment"),
    Case("path_encoded_slash", _get(b"/public%2F..%2Fadmin"), "400 close", 0,
         "an encoded '/' some backends decode before routing"),
    Case("path_backslash", _get(b"/public\\..\\admin"), "400 close", 0,
         "some backends read '\\' as '/'"),
    Case("path_encoded_nul", _get(b"/a%00b"), "400 close", 0, "an encoded NUL"),
    Case("path_double_slash", _get(b"//admin//x?a=//b"), "200 close", 1,
         "runs of '/' merged before matching and forwarding (query untouched)",
         _one(lambda s: s.path == "/admin/x?a=//b", "merged path at admin")),
    Case("path_dotdot_semicolon", _get(b"/public/..;/admin/x"), "400 close", 0,
         "Tomcat and Spring read '..;' as '..': a dot segment in disguise"),
    Case("path_dotdot_encoded_semicolon", _get(b"/public/..%3b/admin/x"), "400 close", 0,
         "an encoded ';' some backends decode before reading path parameters"),
    Case("path_unreserved_encoded", _get(b"/%61dmin/x"), "200 close", 1,
         "'%61' is 'a' (RFC 3986 6.2.2.2): routed and forwarded as /admin/x",
         _one(lambda s: s.path == "/admin/x", "decoded path at admin")),
    Case("path_parameters", _get(b"/admin;jsessionid=1/x"), "200 close", 1,
         "routed as Tomcat reads it (/admin/x), forwarded as sent",
         _one(lambda s: s.path == "/admin;jsessionid=1/x", "path with its parameters")),
    Case("path_dot_file", _get(b"/.well-known/x"), "200 close", 1,
         "a segment starting with '.' is not a dot segment"),
    Case("path_dotdot_in_query", _get(b"/x?next=../admin"), "200 close", 1,
         "the query is not a path"),
    # -- Expect (RFC 9110 10.1.1) -------------------------------------------------------------------
    Case("expect_100_with_body", _post(b"Content-Length: 5\r\nExpect: 100-continue\r\n", b"hello"),
         "200 close", 1, "100-continue is forwarded, the body follows at once: no deadlock"),
    Case("expect_100_unrouted",
         b"POST / HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
         "404 close", 0, "answered at once without waiting for the body, then closed"),
    Case("expect_other", _get(extra=b"Expect: something\r\n"), "417 close", 0,
         "an expectation the router cannot meet: 417"),
    Case("expect_http10_ignored", _get(extra=b"Expect: something\r\n", version=b"HTTP/1.0"),
         "200 close", 1, "HTTP/1.0 expectations are ignored (RFC 9110 10.1.1)",
         _hdr("expect", [])),
    # -- headers the router owns ---------------------------------------------------------------------
    Case("xff_spoofed", _get(extra=b"X-Forwarded-For: 203.0.113.9\r\n"), "200 close", 1,
         "the peer is not a trusted proxy: its X-Forwarded-For is replaced",
         _hdr("x-forwarded-for", [b"127.0.0.1"])),
    Case("connection_names_xff",
         _get(extra=b"Connection: X-Forwarded-For\r\nX-Forwarded-For: 203.0.113.9\r\n"),
         "200 close", 1, "Connection cannot remove what the router sets",
         _hdr("x-forwarded-for", [b"127.0.0.1"])),
    Case("connection_names_host_length",
         _post(b"Connection: Host, Content-Length\r\nContent-Length: 5\r\n", b"hello"),
         "200 close", 1, "nor Host or Content-Length",
         _one(lambda s: s.header("host") == [b"app.test"] and s.body == b"hello", "Host and body kept")),
    Case("forwarded_spoofed", _get(extra=b"Forwarded: for=203.0.113.9;host=evil.example\r\n"),
         "200 close", 1, "Forwarded from an untrusted peer is removed",
         _hdr("forwarded", [])),
    Case("x_real_ip_spoofed", _get(extra=b"X-Real-IP: 203.0.113.9\r\n"), "200 close", 1,
         "X-Real-IP from an untrusted peer is removed", _hdr("x-real-ip", [])),
    Case("xfh_spoofed", _get(extra=b"X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n"),
         "200 close", 1, "X-Forwarded-Host/-Proto are the router's own",
         _one(lambda s: s.header("x-forwarded-host") == [b"app.test"]
              and s.header("x-forwarded-proto") == [b"http"], "own values")),
    # -- pipelining and upgrades ----------------------------------------------------------------------
    Case("pipeline_three", b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n" + _get(b"/3"),
         "200 200 200 close", 3, "answered in order"),
    Case("pipeline_body_then_get",
         b"POST /1 HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello" + _get(b"/2"),
         "200 200 close", 2, "a pipelined request after a body: read after the body, in order"),
    Case("pipeline_chunked_then_get",
         b"POST /1 HTTP/1.1\r\n" + H + TE + b"\r\n5\r\nhello\r\n0\r\n\r\n" + _get(b"/2"),
         "200 200 close", 2, "the same after a chunked body, whose end the router finds to stop "
         "reading ahead there"),
    Case("pipeline_expect_100",
         b"GET /1 HTTP/1.1\r\n" + H + b"\r\nPOST /2 HTTP/1.1\r\n" + H
         + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello" + _get(b"/3"),
         "200 200 200 close", 3, "a pipelined 100-continue request with its body: answered in "
         "its turn, no deadlock"),
    Case("pipeline_deep", b"".join(b"GET /%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(60))
         + _get(b"/last"), " ".join(["200"] * 61) + " close", 61,
         "61 pipelined requests: read one ahead at a time, every one answered in order"),
    Case("pipeline_after_unrouted_body",
         b"POST / HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 3\r\n\r\nabc" + SMUGGLED,
         "404 close", 0, "answered before its body was read, the answer closes: nothing after it "
         "is read as a request"),
    Case("pipeline_after_unrouted_close",
         b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n" + SMUGGLED,
         "404 close", 0, "the client said this was its last request"),
    Case("pipeline_after_rejected",
         b"GET /1 HTTP/1.1\r\n" + H + b"\r\n" + _post(b"Content-Length: 3\r\n" + TE, b"0\r\n\r\n")
         + SMUGGLED, "200 400 close", 1, "the requests before a rejected one are answered, none after it"),
    Case("body_looks_like_request", _post(b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
         "200 close", 1, "a body is a body: the backend sees one POST carrying it",
         _one(lambda s: s.method == "POST" and s.body == SMUGGLED, "one POST")),
    Case("upgrade_refused_then_smuggle",
         b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + SMUGGLED,
         "200 close", 1, "no 101: the bytes after the upgrade request are never parsed or forwarded"),
    Case("upgrade_h2c", b"GET / HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\n"
         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + _get(b"/2"),
         "200 200 close", 2, "h2c would tunnel HTTP/2 past the router: ignored, served as HTTP/1.1",
         lambda seen: _no_upgrade(seen)),
]
