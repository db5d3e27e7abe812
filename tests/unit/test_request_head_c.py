"""The request head's C functions (router/http/_fields.c) against the Python code they stand in
for: ``classify`` (the one pass over the fields), ``plain_target``, ``host`` and ``concat``,
on hand-written edge cases and Hypothesis' inputs; and ``read_request_head`` as a whole, the C
functions against the Python ones, byte for byte, on generated heads and the attack corpus."""

from __future__ import annotations

import os

import httptools
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from router.http import request_head as rq
from tests.reliability.corpus import CORPUS

try:
    from router.http import _fields
except ImportError:  # not built: nothing to compare (a build with a compiler must have it)
    _fields = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    _fields is None and not os.environ.get("ROUTER_EXPECT_COMPILED"),
    reason="router.http._fields not built")


def py_host(value: bytes) -> bytes | None:
    host = value.strip()
    return host if rq._HOST_RE.match(host) else None


def py_plain_target(url: bytes) -> bool:
    return rq._URL_SPECIAL.search(url) is None


# -- host --------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", [
    b"", b"a", b"shop.test", b"shop.test:", b"shop.test:8080", b"shop.test:65535",
    b"shop.test:123456", b"shop.test:80:80", b"shop.test:8a", b":80", b"Sh_op-1.T", b"a b",
    b"[::1]", b"[::1]:443", b"[]", b"[", b"]", b"[::1", b"[::1]x", b"[::g]", b"[1.2.3.4]",
    b"[::1]:", b"[::1]:123456", b"user@shop.test", b"shop.test\n", b"shop.test\x00",
    b"caf\xc3\xa9.test", b"a,b", b"[::1][::1]", b"shop.test:\xb9", b" shop.test", b"shop.test \t",
    b"\x0bshop.test\x0c", b" ", b" \t ", b"shop .test", b"\xa0shop.test", b" [::1]:80 ",
])
def test_host_read_as_the_regex(host):
    assert _fields.host(host) == py_host(host), host


_HOST_BYTES = b"aZ09._-[]:: \t\x0b@,/\n\x00\xff"


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(list(_HOST_BYTES)), max_size=12).map(bytes))
def test_generated_hosts_read_as_the_regex(host):
    assert _fields.host(host) == py_host(host), host


# -- plain_target ----------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    b"", b"/", b"/small", b"/a/b/c", b"/a?b", b"/a#b", b"/a%20", b"/a\\b", b"/a;b", b"/.",
    b"/a/.", b"/a/./b", b"//", b"/a//b", b"/a/", b"a/", b"/a.b", b"/a/b.", b".", b"/\xff/",
    b"*", b"/a/\x00",
])
def test_plain_target_as_the_regex(url):
    assert _fields.plain_target(url) == py_plain_target(url), url


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(list(b"a/./?#%\\;\x00\xff")), max_size=12).map(bytes))
def test_generated_targets_judged_as_the_regex(url):
    assert _fields.plain_target(url) == py_plain_target(url), url


# -- classify --------------------------------------------------------------------------------
def _cases(name: bytes) -> list[bytes]:
    return [name, name.upper(), name.title(), name[:-1] + name[-1:].upper()]


@pytest.mark.parametrize("name", sorted({c for n in rq._KINDS for c in _cases(n)}
                                        | {b"hosts", b"hos", b"cookies", b"x-forwarded",
                                           b"te\xff", b"\xc8ost", b"Host\x00"}))
@pytest.mark.parametrize("trusted, http11", [(False, True), (True, True), (True, False)])
def test_each_name_classified_as_the_python_reads_it(name, trusted, http11):
    fields = [(b"A", b"1"), (name, b" v "), (b"B", b"")]
    assert (_fields.classify(fields, trusted, http11, 100)
            == rq.classify(fields, trusted, http11, 100))


_NAMES = sorted(rq._KINDS) + [b"accept", b"x-a", b"cookie2", b"a"]
names = st.one_of(
    st.sampled_from(_NAMES).flatmap(lambda n: st.sampled_from(_cases(n))),
    st.binary(min_size=1, max_size=20))
field = st.tuples(names, st.binary(max_size=30))


@settings(max_examples=2000, deadline=None)
@given(st.lists(field, max_size=70), st.booleans(), st.booleans(), st.integers(0, 40))
def test_generated_fields_classified_as_the_python_reads_them(fields, trusted, http11, limit):
    assert (_fields.classify(fields, trusted, http11, limit)
            == rq.classify(fields, trusted, http11, limit))


def test_classify_refuses_what_is_not_a_list_of_bytes_pairs():
    for bad in ([(b"a",)], [(b"a", "b")], [("a", b"b")], [b"ab"]):
        with pytest.raises(TypeError):
            _fields.classify(bad, False, True, 100)
    with pytest.raises(TypeError):
        _fields.classify(((b"a", b"b"),), False, True, 100)


def test_concat_is_a_join_of_bytes():
    assert _fields.concat() == b""
    assert _fields.concat(b"a", b"", b"bc") == b"abc"
    with pytest.raises(TypeError):
        _fields.concat(b"a", bytearray(b"b"))


# -- read_request_head, C against Python -----------------------------------------------------
_READ = ("method", "url", "path", "host", "cookie", "framing", "length", "upgrade", "http11",
         "keep_alive", "request_id", "head")
_C_NAMES = ("classify", "plain_target", "host", "concat")


def _read(raw: bytes, trusted: bool) -> tuple[object, ...]:
    """What read_request_head makes of the first head llhttp reads in ``raw``: the fields of
    the RequestHead, or the refusal."""
    heads: list[tuple[bytes, str, list[tuple[bytes, bytes]], bool, bytes]] = []
    fields: list[tuple[bytes, bytes]] = []
    url = [b""]

    class P:
        def on_message_begin(self) -> None:
            fields.clear()
            url[0] = b""

        def on_url(self, u: bytes) -> None:
            url[0] += u

        def on_header(self, name: bytes, value: bytes) -> None:
            fields.append((name, value))

        def on_headers_complete(self) -> None:
            heads.append((parser.get_method(), parser.get_http_version(), list(fields),
                          parser.should_upgrade(), url[0]))

    parser = httptools.HttpRequestParser(P())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        if not heads:
            return ("llhttp",)
    if not heads:
        return ("incomplete",)
    method, version, first, upgrade, target = heads[0]
    rh = rq.RequestHead()
    try:
        rq.read_request_head(rh, method, target, version, first, upgrade, max_header=60,
                             max_headers=200, trusted=trusted, peer=b"10.9.8.7",
                             tail=rq.forwarded_tail(b"10.9.8.7"), ids=rq.RequestIds(b"id-"))
    except rq.Refused as e:
        return (e.status, str(e))
    return tuple(getattr(rh, k) for k in _READ)


def both(raw: bytes, trusted: bool) -> tuple[object, ...]:
    got = _read(raw, trusted)
    saved = {k: getattr(rq._C, k) for k in _C_NAMES}
    try:
        for k in _C_NAMES:
            setattr(rq._C, k, rq._join if k == "concat" else None)
        assert _read(raw, trusted) == got, raw
    finally:
        for k, v in saved.items():
            setattr(rq._C, k, v)
    return got


def test_the_attack_corpus_read_alike_in_c_and_python():
    read = 0
    for case in CORPUS:
        for trusted in (False, True):
            if len(both(case.data, trusted)) > 2:
                read += 1
    assert read > 0


_FIELD_LINES = [
    b"Host: shop.test", b"host:shop.test:8080", b"HOST: [::1]", b"Host: bad host",
    b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
    b"Connection: close", b"Connection: keep-alive, X-Drop", b"connection: upgrade",
    b"Upgrade: websocket", b"Upgrade: h2c", b"X-Forwarded-For: 1.2.3.4",
    b"x-forwarded-for: 5.6.7.8",
    b"X-Request-ID: abc", b"X-Request-ID: bad id", b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: a.test", b"Expect: 100-continue", b"Expect: nope", b"Cookie: a=b",
    b"cookie: c=d", b"Keep-Alive: 5", b"TE: trailers", b"Forwarded: for=1.2.3.4",
    b"X-Real-IP: 1.2.3.4", b"X-Drop: 1", b"Accept: */*", b"X-Long: " + b"v" * 60,
    b"Proxy-Connection: keep-alive", b"Trailer: x",
]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.sampled_from([b"GET /small", b"POST /a?b=c", b"GET /a/../b", b"OPTIONS *",
                        b"GET http://shop.test/p", b"GET /a//b;c"]),
       st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
       st.lists(st.sampled_from(_FIELD_LINES), max_size=10), st.booleans())
def test_generated_heads_read_alike_in_c_and_python(line, version, lines, trusted):
    raw = line + b" " + version + b"\r\n" + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n"
    got = both(raw, trusted)
    assume(got[0] != "llhttp")
