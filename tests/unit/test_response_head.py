"""The response head module from tables of bytes: what the client receives, how the body is
framed, which connection can be used again. No sockets, no loop."""

from __future__ import annotations

import pytest

from router.http import framing
from router.http.response_head import (ResponseError, ResponseHead, check_response_head,
                                       llhttp_check, read_response_head)

COOKIE = b"Set-Cookie: CONTAINERID=tok; Path=/; HttpOnly; SameSite=Lax"


def rewrite(raw: bytes, status: int = 200, head: bool = False,
            http11: bool = True, client_keep: bool = True, upgrade: bool = False,
            done: bool = True, accepting: bool = True, cookie: bytes = b"",
            own: bytes = b"") -> ResponseHead:
    return read_response_head(raw, status, head_request=head,
                              client_http11=http11, client_keep_alive=client_keep,
                              upgrade_requested=upgrade, request_done=done, accepting=accepting,
                              set_cookie=cookie, own_cookie=own)


def test_plain_content_length_response_passes_as_it_is():
    raw = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nETag: \"a\""
    rh = rewrite(raw)
    assert rh.head == raw + b"\r\n\r\n"
    assert (rh.body, rh.length, rh.rechunk, rh.close, rh.reusable) == (framing.LENGTH, 5, False,
                                                                       False, True)


def test_hop_by_hop_fields_cut_and_named_fields_too():
    raw = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
           b"X-Hop: 1\r\nContent-Length: 0\r\nX-Keep: 2\r\nProxy-Connection: x\r\nTrailer: T")
    rh = rewrite(raw)
    assert rh.head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Keep: 2\r\n\r\n"
    assert rh.body == framing.NONE


def test_connection_cannot_remove_set_cookie_or_content_length():
    raw = b"HTTP/1.1 200 OK\r\nConnection: Set-Cookie, Content-Length\r\nSet-Cookie: a=1\r\nContent-Length: 2"
    assert rewrite(raw).head == b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize("reason", [b"O\x01K", b"OK\x7f", b"O\x1bK", b"\x00"])
def test_control_characters_in_the_reason_are_refused(reason):
    with pytest.raises(ResponseError):
        rewrite(b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 0")


def test_tab_and_obs_text_in_the_reason_pass():
    rh = rewrite(b"HTTP/1.1 200 O\tK \xe9\r\nContent-Length: 0")
    assert rh.head.startswith(b"HTTP/1.1 200 O\tK \xe9\r\n")


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_length_or_transfer_encoding_on_204_and_304(status):
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\nETag: e" % status
    rh = rewrite(raw, status)
    assert rh.head == b"HTTP/1.1 %d X\r\nETag: e\r\n\r\n" % status
    assert rh.body == framing.NONE and rh.reusable


def test_head_response_keeps_content_length_and_has_no_body():
    rh = rewrite(b"HTTP/1.1 200 OK\r\nContent-Length: 1000", head=True)
    assert rh.head == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    assert rh.body == framing.NONE and rh.reusable


def test_transfer_codings_kept_when_rechunked():
    rh = rewrite(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nX: y")
    assert rh.head == b"HTTP/1.1 200 OK\r\nX: y\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    assert (rh.body, rh.rechunk, rh.reusable) == (framing.CHUNKED, True, True)


def test_transfer_coding_without_chunked_is_a_body_until_close():
    rh = rewrite(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip")
    assert rh.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    assert (rh.body, rh.rechunk, rh.reusable, rh.close) == (framing.EOF, True, False, False)


def test_body_until_close_rechunked_for_http11_closed_for_http10():
    rh = rewrite(b"HTTP/1.1 200 OK\r\nX: y")
    assert rh.head == b"HTTP/1.1 200 OK\r\nX: y\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert (rh.body, rh.rechunk, rh.close) == (framing.EOF, True, False)
    rh = rewrite(b"HTTP/1.1 200 OK\r\nX: y", http11=False)
    assert rh.head == b"HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n"
    assert (rh.body, rh.rechunk, rh.close) == (framing.EOF, False, True)


def test_chunked_to_http10_client_is_dechunked_and_closed():
    rh = rewrite(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", http11=False)
    assert rh.head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    assert (rh.body, rh.rechunk, rh.close) == (framing.CHUNKED, False, True)
    with pytest.raises(ResponseError):
        rewrite(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", http11=False)


def test_http10_client_keeps_alive_explicitly():
    rh = rewrite(b"HTTP/1.1 200 OK\r\nContent-Length: 0", http11=False)
    assert rh.head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"


@pytest.mark.parametrize("kw", [dict(client_keep=False), dict(done=False),
                                dict(accepting=False), dict(upgrade=True)])
def test_closing_the_client(kw):
    rh = rewrite(b"HTTP/1.1 200 OK\r\nContent-Length: 0", **kw)
    assert rh.close and rh.head.endswith(b"Connection: close\r\n\r\n")


def test_backend_http10_response_made_http11():
    rh = rewrite(b"HTTP/1.0 200 OK\r\nContent-Length: 1")
    assert rh.head.startswith(b"HTTP/1.1 200 OK\r\n") and not rh.reusable


@pytest.mark.parametrize("raw,head,kept", [
    # HTTP/1.1: kept unless "close" is among the Connection options, with a body or without.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0", False, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive", False, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close", False, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close", False, False),
    (b"HTTP/1.1 204 No Content", False, True),
    (b"HTTP/1.1 204 No Content\r\nConnection: close", False, False),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close", False, False),
    (b"HTTP/1.1 304 Not Modified\r\nConnection: close", False, False),
    (b"HTTP/1.1 304 Not Modified\r\nConnection: X-A, Close\r\nX-A: 1", False, False),
    (b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\nConnection: close", False, False),
    (b"HTTP/1.1 204 No Content\r\nProxy-Connection: close", False, False),
    (b"HTTP/2.0 204 No Content", False, True),
    # HTTP/1.0: kept only with "keep-alive" (and without "close").
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0", False, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive", False, True),
    (b"HTTP/1.0 204 No Content\r\nConnection: Keep-Alive", False, True),
    (b"HTTP/1.0 304 Not Modified\r\nConnection: keep-alive, X-A", False, True),
    (b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\nConnection: close", False, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nProxy-Connection: keep-alive", False, True),
    (b"HTTP/0.9 200 OK\r\nContent-Length: 1", False, False),
    # A response to HEAD has no body, whatever its fields say: never one until the close.
    (b"HTTP/1.1 200 OK", True, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0", True, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close", True, False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive", True, True),
    # A body that ends with the close: never.
    (b"HTTP/1.1 200 OK", False, False),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive", False, False),
])
def test_backend_connection_kept_as_rfc_9112_says(raw, head, kept):
    """RFC 9112 9.3, on the Python code and on check_response_head (C when built): llhttp's
    should_keep_alive() said keep-alive for a 204 with "close", close for "Content-Length: 0"."""
    assert rewrite(raw, llhttp_check(raw), head=head).reusable is kept
    status, _, _, _, _, _, reusable, end, _ = check_response_head(
        raw + b"\r\n\r\n", head_request=head, client_http11=True, client_keep_alive=True,
        upgrade_requested=False, request_done=True, accepting=True, set_cookie=b"",
        own_cookie=b"")
    assert reusable is kept and end == len(raw)


def test_the_routers_cookie_replaces_the_backends_own():
    raw = (b"HTTP/1.1 200 OK\r\nSet-Cookie: CONTAINERID=evil; Path=/\r\nSet-Cookie: sid=1\r\n"
           b"Content-Length: 0")
    rh = rewrite(raw, cookie=COOKIE, own=b"CONTAINERID=")
    assert rh.head == (b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=1\r\nContent-Length: 0\r\n"
                       + COOKIE + b"\r\n\r\n")
    # An app without stickiness: the backend's cookie is its own business.
    assert b"CONTAINERID=evil" in rewrite(raw).head


@pytest.mark.parametrize("value", [
    b"CONTAINERID =evil", b"CONTAINERID\t=evil", b"CONTAINERID = evil", b" \tCONTAINERID=evil",
    b"CONTAINERID=evil; Path=/admin; Domain=shop.test", b"=CONTAINERID=evil",
    b"= CONTAINERID =evil"])
def test_the_backends_own_cookie_is_removed_however_it_is_spelled(value):
    """A browser trims the name (RFC 6265 5.2; Chromium stores each of these as CONTAINERID),
    and sends a nameless cookie as its value alone (``=CONTAINERID=x`` as ``CONTAINERID=x``)."""
    raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: " + value + b"\r\nContent-Length: 0"
    rh = rewrite(raw, cookie=COOKIE, own=b"CONTAINERID=")
    assert rh.head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + COOKIE + b"\r\n\r\n"


@pytest.mark.parametrize("value", [
    b"CONTAINERIDX=1", b"XCONTAINERID=1", b"containerid=1", b"CONTAINERID", b"CONTAINERID;=1",
    b"sid=CONTAINERID=1", b"sid=1; CONTAINERID=2", b'"CONTAINERID"=1', b"CONTAINERID\xc2\xa0=1"])
def test_other_cookies_pass(value):
    """Other names, as a browser reads them: a cookie without "=" is a nameless one whose value
    has no "=" either, attributes are not cookies, quotes and other spaces are part of a name."""
    raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: " + value + b"\r\nContent-Length: 0"
    assert b"Set-Cookie: " + value + b"\r\n" in rewrite(raw, cookie=COOKIE, own=b"CONTAINERID=").head


def test_interim_responses():
    rh = rewrite(b"HTTP/1.1 100 Continue", 100)
    assert rh.head == b"HTTP/1.1 100 Continue\r\n\r\n" and rh.body == framing.NONE
    rh = rewrite(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: 0", 103)
    assert rh.head == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    assert rewrite(b"HTTP/1.1 100 Continue", 100, http11=False).head == b""  # not to HTTP/1.0
    assert rewrite(b"HTTP/1.1 100 Continue", 100, cookie=COOKIE).head == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_switching_protocols():
    raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x"
    rh = rewrite(raw, 101, upgrade=True)
    assert rh.head == (b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n"
                       b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert not rh.reusable
    with pytest.raises(ResponseError):
        rewrite(raw, 101, upgrade=False)


def test_a_value_that_names_a_hop_by_hop_field_is_not_cut():
    raw = b"HTTP/1.1 200 OK\r\nX-Tip: connection: foo\r\nConnection: close\r\nContent-Length: 1"
    assert rewrite(raw).head == b"HTTP/1.1 200 OK\r\nX-Tip: connection: foo\r\nContent-Length: 1\r\n\r\n"
