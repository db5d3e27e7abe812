"""The request head module from tables of bytes: what is refused, what is routed, what is
forwarded. No sockets, no loop."""

from __future__ import annotations

import httptools
import pytest

from router.http import framing
from router.http.request_head import (
    Refused,
    RequestHead,
    RequestIds,
    forwarded_tail,
    is_h2c,
    normalise_path,
    read_request_head,
)


class _Parsed:
    """What llhttp makes of one head (the client connection passes the same to the module)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def read(raw: bytes, trusted: bool = False) -> RequestHead:
    """The head as the client connection reads it: llhttp's refusals are 400s too."""
    p = _Parsed()
    parser = httptools.HttpRequestParser(p)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        raise Refused(400, f"malformed request: {e}") from None
    assert p.done, raw
    rh = RequestHead()
    read_request_head(rh, parser.get_method(), p.url, parser.get_http_version(), p.headers,
                      parser.should_upgrade(), max_header=8192, max_headers=65536,
                      trusted=trusted, peer=b"10.9.8.7", tail=forwarded_tail(b"10.9.8.7"),
                      ids=RequestIds(b"id-"))
    return rh


def head(target: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: shop.test\r\n" + extra + b"\r\n"


# -- paths: routed as a backend reads them, or refused ------------------------------------
@pytest.mark.parametrize("target, routed, forwarded", [
    (b"/", b"/", b"/"),
    (b"/admin/x", b"/admin/x", b"/admin/x"),
    (b"/%61dmin/x", b"/admin/x", b"/admin/x"),  # %61 is "a" (RFC 3986 6.2.2.2)
    (b"/%41%42c", b"/ABc", b"/ABc"),
    (b"/a%2eb", b"/a.b", b"/a.b"),  # "." is unreserved: decoded
    (b"/caf%C3%A9", b"/caf%C3%A9", b"/caf%C3%A9"),  # not unreserved: kept as sent
    (b"/admin;jsessionid=1/x", b"/admin/x", b"/admin;jsessionid=1/x"),  # Tomcat's reading
    (b"/a//b///c", b"/a/b/c", b"/a/b/c"),  # merge_slashes
    (b"/x?q=/../admin", b"/x", b"/x?q=/../admin"),  # the query is not a path
    (b"/%7Euser", b"/~user", b"/~user"),
    (b"http://shop.test/%61dmin", b"/admin", b"/admin"),  # absolute form
])
def test_paths_routed_as_backends_read_them(target, routed, forwarded):
    rh = read(head(target))
    assert (rh.path, rh.url) == (routed, forwarded)
    assert rh.head.startswith(b"GET " + forwarded + b" HTTP/1.1\r\n")


@pytest.mark.parametrize("target", [
    b"/public/../admin/x", b"/public/./x", b"/..", b"/.", b"/a/..",
    b"/public/..;/admin/x",  # Tomcat and Spring read "..;" as ".."
    b"/public/..;x=1/admin/x",
    b"/public/..%3b/admin/x",  # an encoded ";" is refused outright
    b"/public/%2e%2e/admin/x", b"/public/%2E%2e/admin", b"/public/.%2e/admin",
    b"/a%2fb", b"/a%2Fb", b"/a%5cb", b"/a%00b", b"/a%3bb",
    b"/a\\b",
    b"/a%zzb", b"/a%", b"/a%4",  # malformed percent-encodings
    b"/a#frag",
])
def test_paths_a_backend_could_read_as_another_app_are_refused(target):
    with pytest.raises(Refused) as e:
        read(head(target))
    assert e.value.status == 400


def test_normalise_path_is_idempotent_on_its_output():
    for p in (b"/%61dmin/x", b"/a//b", b"/admin;x/y", b"/%7E"):
        out = normalise_path(p)
        assert out is not None
        assert normalise_path(out[0]) == out


# -- framing --------------------------------------------------------------------------------
def test_framing_of_the_body():
    assert read(head(b"/")).framing == framing.NONE
    rh = read(head(b"/", b"Content-Length: 5\r\n", b"POST"))
    assert (rh.framing, rh.length) == (framing.LENGTH, 5)
    assert read(head(b"/", b"Content-Length: 0\r\n", b"POST")).framing == framing.NONE
    rh = read(head(b"/", b"Transfer-Encoding: chunked\r\n", b"POST"))
    assert rh.framing == framing.CHUNKED and b"Transfer-Encoding: chunked\r\n" in rh.head


@pytest.mark.parametrize("te", [b"gzip, chunked", b"chunked, chunked", b"identity", b"gzip", b"", b",", b"chunked,", b", chunked"])
def test_transfer_codings_other_than_chunked_are_refused(te):
    with pytest.raises(Refused) as e:
        read(head(b"/", b"Transfer-Encoding: " + te + b"\r\n", b"POST"))
    assert e.value.status == 400


# -- upgrades ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, tunnelled", [
    (b"websocket", True),
    (b"h2c", False),
    (b"H2C", False),
    (b"h2c, websocket", False),  # h2c anywhere in the list
    (b"websocket, h2c", False),
    (b"h2c/1", False),
    (b" h2c ", False),
    (b"h2cx", True),
])
def test_h2c_is_never_tunnelled(value, tunnelled):
    rh = read(head(b"/", b"Connection: Upgrade\r\nUpgrade: " + value + b"\r\n"))
    assert rh.upgrade is tunnelled
    assert (b"Upgrade: " in rh.head) is tunnelled
    assert is_h2c(value) is (not tunnelled)


def test_upgrade_needs_connection_upgrade():
    rh = read(head(b"/", b"Upgrade: websocket\r\n"))
    assert not rh.upgrade and b"pgrade" not in rh.head


def test_upgrade_with_a_body_keeps_its_framing():
    rh = read(head(b"/", b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n",
                   b"POST"))
    assert rh.upgrade and (rh.framing, rh.length) == (framing.LENGTH, 5)
    assert b"Content-Length: 5\r\n" in rh.head


# -- the forwarded head -------------------------------------------------------------------------
def test_forwarded_head_exact():
    rh = read(head(b"/x?y=1", b"Cookie: a=1\r\nCookie: b=2\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                              b"X-Forwarded-For: 1.2.3.4\r\nX-Request-ID: abc\r\n"))
    assert rh.head == (b"GET /x?y=1 HTTP/1.1\r\nCookie: a=1\r\nCookie: b=2\r\nHost: shop.test\r\n"
                       b"X-Forwarded-For: 10.9.8.7\r\nX-Forwarded-Proto: http\r\n"
                       b"X-Forwarded-Host: shop.test\r\nX-Request-ID: abc\r\n\r\n")
    assert rh.cookie == b"a=1; b=2" and rh.request_id == b"abc"


# Fields a backend framework believes for the client's identity or the request's route.
IDENTITY_AND_ROUTE = [b"Forwarded: for=6.6.6.6", b"X-Real-IP: 6.6.6.6", b"True-Client-IP: 6.6.6.6",
                      b"CF-Connecting-IP: 6.6.6.6", b"Fastly-Client-IP: 6.6.6.6",
                      b"X-Client-IP: 6.6.6.6", b"X-Cluster-Client-IP: 6.6.6.6",
                      b"X-Original-URL: /admin", b"X-Rewrite-URL: /admin",
                      b"X-Forwarded-Prefix: /admin", b"X-Forwarded-Port: 443",
                      b"X-Forwarded-Server: evil", b"X-Forwarded-Scheme: https",
                      b"X-Original-Host: evil.test", b"X-Host: evil.test"]


@pytest.mark.parametrize("field", IDENTITY_AND_ROUTE)
def test_identity_and_route_fields_only_from_a_trusted_proxy(field):
    name = field.split(b":")[0]
    for spelling in (name, name.lower(), name.upper()):
        line = spelling + field[len(name):]
        untrusted = read(head(b"/", line + b"\r\nX-Keep: 1\r\n"))
        assert b"6.6.6.6" not in untrusted.head and b"evil" not in untrusted.head
        assert b"/admin" not in untrusted.head and b"443" not in untrusted.head
        assert b"X-Keep: 1\r\n" in untrusted.head
        assert line + b"\r\n" in read(head(b"/", line + b"\r\n"), trusted=True).head


@pytest.mark.parametrize("trusted", [False, True])
def test_hop_by_hop_fields_are_never_passed_on(trusted):
    # They concern the connection they came on, a trusted proxy's included (RFC 9110 7.6.1).
    rh = read(head(b"/", b"Keep-Alive: timeout=5\r\nPROXY-CONNECTION: keep-alive\r\n"
                         b"TE: trailers\r\ntrailer: X-Sum\r\nX-Keep: 1\r\n"), trusted=trusted)
    lowered = rh.head.lower()
    for name in (b"keep-alive", b"proxy-connection", b"te:", b"trailer"):
        assert b"\n" + name not in lowered
    assert b"X-Keep: 1\r\n" in rh.head


def test_trusted_proxy_keeps_the_chain():
    rh = read(head(b"/", b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
                         b"Forwarded: for=1.2.3.4\r\n"), trusted=True)
    assert b"X-Forwarded-For: 1.2.3.4, 10.9.8.7\r\n" in rh.head
    assert b"X-Forwarded-Proto: https\r\n" in rh.head and b"Forwarded: for=1.2.3.4" in rh.head


def test_connection_cannot_remove_what_the_router_sets():
    rh = read(head(b"/", b"Connection: close, Host, X-Forwarded-For, Cookie, X-Secret\r\n"
                         b"X-Secret: s\r\nCookie: c=1\r\n"))
    assert b"X-Secret" not in rh.head and b"Cookie: c=1" in rh.head
    assert b"Host: shop.test" in rh.head and b"X-Forwarded-For: 10.9.8.7" in rh.head
    assert not rh.keep_alive


@pytest.mark.parametrize("version, connection, keep", [
    (b"1.1", b"", True), (b"1.1", b"Connection: close\r\n", False),
    (b"1.1", b"Connection: Keep-Alive, CLOSE\r\n", False), (b"1.0", b"", False),
    (b"1.0", b"Connection: keep-alive\r\n", True), (b"1.0", b"Connection: x, Keep-Alive\r\n", True),
])
def test_keep_alive(version, connection, keep):
    rh = read(b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + connection + b"\r\n")
    assert rh.keep_alive is keep


def test_generated_request_ids_when_absent_or_insane():
    assert read(head(b"/")).request_id == b"id-1"
    assert read(head(b"/", b"X-Request-ID: bad id\r\n")).request_id == b"id-1"


@pytest.mark.parametrize("raw, status", [
    (b"CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
    (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 431),
])
def test_refusals(raw, status):
    with pytest.raises(Refused) as e:
        read(raw)
    assert e.value.status == status


def test_request_ids_count_in_hexadecimal_after_the_prefix():
    ids = RequestIds(b"ab12-")
    for n in range(1, 70_000):
        assert ids.next() == b"ab12-%x" % n
