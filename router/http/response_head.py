"""A backend's response head: checked, and turned into the head the client receives.

``check_response_head`` takes what the backend sent so far and what the request was, finds the
head's end, checks the head as llhttp does (in C, in one pass with the rest, when built:
router/http/_head.c), and returns what ``ResponseHead`` holds: the bytes for the client, how
the backend's body is framed, how it is passed on, and whether either connection can be used
again. One set of rules for every response (docs/request-path.md, "The response head"):

- hop-by-hop fields and every field the ``Connection`` field names are removed (never
  ``Content-Length``, ``Set-Cookie`` or ``Cookie``); a ``Set-Cookie`` of the router's own cookie
  name is removed from sticky apps' responses (the router owns that cookie);
- a status line with control characters, or a status below 100, is refused (502);
- 1xx (but 101), 204 and 304 have no body and carry no ``Content-Length`` or
  ``Transfer-Encoding`` on the way out; a response to ``HEAD`` has no body and keeps its
  ``Content-Length``;
- a chunked body, or one that ends with the connection, reaches an HTTP/1.1 client chunked, its
  other transfer codings kept (``gzip, chunked`` stays ``gzip, chunked``), so the client keeps
  its connection; an HTTP/1.0 client gets it delimited by the end of the connection, and a
  transfer coding other than chunked, which it cannot be sent, is refused (502). A coding list
  whose last coding is not chunked makes a body that ends with the connection (RFC 9112 6.3);
  if chunked is among its other codings (``chunked, gzip``) it cannot be chunked once more
  (RFC 9112 6.1), so it is passed on as it is and the client connection ends with it; chunked
  applied twice is refused (502);
- the backend connection is used again only if the backend keeps it (RFC 9112 9.3: an
  HTTP/1.1 response unless ``close`` is among its ``Connection`` options, an HTTP/1.0 one only
  with ``keep-alive``; whatever the status, with or without a body), the response does not end
  with the close, the final head came after the request was sent whole (a backend that answers
  early may read the rest of the body as a request), and never after a response below
  HTTP/1.1 with ``Transfer-Encoding`` (RFC 9112 6.1: faulty framing);
- ``Connection: close`` when the client connection ends after this response (the client asked,
  a refused upgrade, the request body not read to its end, a graceful stop, an HTTP/1.0 client
  with a body delimited by the close), ``Connection: keep-alive`` for an HTTP/1.0 client that
  keeps it.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Final

import httptools

from . import framing
from .fields import HOP, connection_tokens, without_named

# What check_response_head returns: (status, head, body, length, rechunk, close, reusable, end,
# taken), ResponseHead's fields, where the head ends in the bytes read (-1: not whole yet), and
# how many bytes of the body that follow it ``head`` holds after the client's head (the C
# version copies a short Content-Length body in, so that the two leave in one write; the
# Python one none). A tuple, not an object: compiled, a struct returned by value, where an
# object is made and freed per response.
Checked = tuple[int, bytes, int, int, bool, bool, bool, int, int]
NOT_WHOLE: Final[Checked] = (0, b"", framing.NONE, 0, False, False, False, -1, 0)


def _c_version() -> Callable[[bytes, int, bytes, bytes], Checked | None] | None:
    """The C version of check_response_head (router/http/_head.c, built when a C compiler is
    present); ROUTER_PURE_PYTHON set at start runs the Python one."""
    if os.environ.get("ROUTER_PURE_PYTHON"):
        return None
    try:
        from . import _head
    except ImportError:
        return None
    return _head.head


# Final: compiled, a static, not a lookup in the module's dict per response.
_c_head: Final = _c_version()
# What _c_head is told of the request, in one int.
_HEAD_REQUEST: Final = 1
_CLIENT_HTTP11: Final = 2
_CLIENT_KEEP_ALIVE: Final = 4
_UPGRADE_REQUESTED: Final = 8
_REQUEST_DONE: Final = 16
_ACCEPTING: Final = 32

# What _special tells of a field's name.
_HOP: Final = 1
_CONNECTION: Final = 2
_TRANSFER_ENCODING: Final = 3
_UPGRADE: Final = 4
_CONTENT_LENGTH: Final = 5
_SET_COOKIE: Final = 6
_PROXY_CONNECTION: Final = 7
# The Connection options that tell whether the backend keeps the connection (RFC 9112 9.3).
_CLOSE: Final = 1
_KEEP_ALIVE: Final = 2
# Control characters other than HTAB (RFC 9112 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text )).
_CTL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Status lines already checked (a backend sends a handful of distinct ones): the check runs
# once per distinct line, not per response.
_GOOD_STATUS: set[bytes] = set()
_GOOD_STATUS_MAX: Final = 1024


class ResponseError(Exception):
    """A response head the router will not pass on (the client gets a 502)."""


class HeadCheck:
    """The target of a parser that only checks heads: no callback, so llhttp makes none."""

    __slots__ = ()


HEAD_CHECK: Final = HeadCheck()


class ResponseHead:
    """What the router makes of one backend response head (the Python code's; check_response_head
    returns its fields as a ``Checked``)."""

    __slots__ = ("status", "head", "body", "length", "rechunk", "close", "reusable")

    def __init__(self, status: int) -> None:
        self.status = status
        self.head = b""  # for the client, through the empty line (b"": nothing to send)
        self.body = framing.NONE  # how the backend's body is framed
        self.length = 0  # with framing.LENGTH
        self.rechunk = False  # each piece of body goes to the client as one chunk
        self.close = False  # the client connection closes after this response
        self.reusable = True  # the backend connection may serve another request after it


def check_response_head(buf: bytes, *, head_request: bool, client_http11: bool,
                        client_keep_alive: bool, upgrade_requested: bool, request_done: bool,
                        accepting: bool, set_cookie: bytes, own_cookie: bytes) -> Checked:
    """The response head at the start of ``buf`` (what the backend sent: the head through its
    empty line, maybe more; ``NOT_WHOLE`` if the empty line has not come yet) checked as
    llhttp checks it (``ResponseError("malformed response: ...")`` with llhttp's reason), then
    ``read_response_head``'s view of it, with the status llhttp reads, as a ``Checked``.

    In C when it is built (router/http/_head.c: one pass that finds the head's end too, one
    tuple), which leaves the rare heads to this code (it returns None): llhttp checks them,
    ``read_response_head`` reads them."""
    if _c_head is not None:
        flags = ((_HEAD_REQUEST if head_request else 0) | (_CLIENT_HTTP11 if client_http11 else 0)
                 | (_CLIENT_KEEP_ALIVE if client_keep_alive else 0)
                 | (_UPGRADE_REQUESTED if upgrade_requested else 0)
                 | (_REQUEST_DONE if request_done else 0) | (_ACCEPTING if accepting else 0))
        try:
            done = _c_head(buf, flags, set_cookie, own_cookie)
        except ValueError as e:
            raise ResponseError(str(e)) from None
        if done is not None:
            return done
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return NOT_WHOLE
    raw = buf[:end]
    rh = read_response_head(
        raw, llhttp_check(raw), head_request=head_request,
        client_http11=client_http11, client_keep_alive=client_keep_alive,
        upgrade_requested=upgrade_requested, request_done=request_done, accepting=accepting,
        set_cookie=set_cookie, own_cookie=own_cookie)
    return (rh.status, rh.head, rh.body, rh.length, rh.rechunk, rh.close, rh.reusable, end, 0)


def llhttp_check(raw: bytes) -> int:
    """The status of the head ``raw`` as llhttp reads it, or the ResponseError for what it
    refuses. (Not llhttp's should_keep_alive(): after a response complete at its head, 204,
    304, 1xx or a Content-Length of 0, it works from flags llhttp has cleared by then, and
    tells keep-alive for a 204 with ``Connection: close``, close for a 200 with
    ``Content-Length: 0``; ``read_response_head`` reads the Connection options itself.)"""
    parser = httptools.HttpResponseParser(HEAD_CHECK)
    try:
        parser.feed_data(raw + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        pass  # a 101 head: complete; what follows is the new protocol
    except httptools.HttpParserError as e:
        raise ResponseError(f"malformed response: {e}") from None
    return parser.get_status_code()


def read_response_head(raw: bytes, status: int, *, head_request: bool, client_http11: bool,
                       client_keep_alive: bool, upgrade_requested: bool, request_done: bool,
                       accepting: bool, set_cookie: bytes, own_cookie: bytes) -> ResponseHead:
    """The client's view of the response head ``raw`` (status line and fields, without the
    final empty line).

    ``set_cookie`` is the router's own ``Set-Cookie: ...`` field to add (or b"");
    ``own_cookie`` is ``b"<name>="`` of the router's cookie when the app is sticky (its
    ``Set-Cookie`` lines from the backend are removed), else b"".
    """
    if status < 100:
        raise ResponseError("status code below 100")
    rh = ResponseHead(status)
    eol = raw.find(b"\r\n")
    status_line = raw if eol < 0 else raw[:eol]
    if status_line not in _GOOD_STATUS:
        if _CTL.search(status_line) is not None:
            raise ResponseError("control character in the status line")
        if len(_GOOD_STATUS) >= _GOOD_STATUS_MAX:
            _GOOD_STATUS.clear()
        _GOOD_STATUS.add(status_line)
    cuts, conn_tokens, options, codings, length, upgrade_to = _read_fields(
        raw, eol, status, own_cookie)
    # The protocol version follows the first "/" (llhttp has checked it); RFC 9112 9.3.
    v = raw.find(b"/") + 1
    http11 = raw[v:v + 3] >= b"1.1"
    keep_alive = not options & _CLOSE and (http11 or options & _KEEP_ALIVE != 0)
    close = (not client_keep_alive or not request_done or not accepting
             or (upgrade_requested and status != 101))
    extra: list[bytes] = []
    if status < 200 and status != 101:  # interim
        if not client_http11:
            return rh  # RFC 9110 15.2: no 1xx to an HTTP/1.0 client
        rh.reusable = keep_alive
    elif status == 101:
        if not upgrade_requested:
            raise ResponseError("101 to a request that asked for no upgrade")
        extra.append(b"\r\nConnection: upgrade\r\nUpgrade: " + upgrade_to)
        rh.reusable = False
    else:
        if _read_body_framing(rh, codings, length, extra, head_request=head_request,
                              client_http11=client_http11):
            close = True
        rh.reusable = (keep_alive and rh.body != framing.EOF and request_done
                       and (codings is None or http11))
        if close:
            extra.append(b"\r\nConnection: close")
        elif not client_http11:
            extra.append(b"\r\nConnection: keep-alive")
        if set_cookie:
            extra.append(b"\r\n" + set_cookie)
        rh.close = close
    rh.head = _rebuild(raw, cuts, conn_tokens, extra)
    return rh


def _read_fields(raw: bytes, eol: int, status: int, own_cookie: bytes) -> tuple[
        list[tuple[int, int]], set[bytes] | None, int, list[bytes] | None, int, bytes]:
    """``(cuts, conn_tokens, options, codings, length, upgrade_to)`` of the fields after the
    status line (which ends at ``eol``): the lines left out on the way to the client, the
    names the Connection field gives, its ``close`` and ``keep-alive`` options (_CLOSE,
    _KEEP_ALIVE; ``Proxy-Connection``'s too, as llhttp reads them), the transfer codings
    (None: no Transfer-Encoding), the Content-Length (-1: none), the Upgrade field.

    One scan, a loop over the bytes: compiled, it costs a few instructions a byte, where
    lower(), a regular expression and a find, strip and int() per field cost hundreds a call
    (and a callback per field from llhttp as much again); a tuple, not an object, back."""
    cuts: list[tuple[int, int]] = []
    conn_tokens: set[bytes] | None = None
    options = 0
    codings: list[bytes] | None = None
    length = -1
    upgrade_to = b""
    cl_cut = (-1, -1)  # the Content-Length line, should it have to go
    n = len(raw)
    pos = eol  # at the "\r\n" before each field
    while 0 <= pos < n:
        i = pos + 2  # the field's name
        colon = i
        while colon < n and raw[colon] != 58 and raw[colon] != 13:  # ":", or a line without
            colon += 1
        nxt = colon
        while nxt < n and raw[nxt] != 13:
            nxt += 1
        kind = _special(raw, i, colon - i, own_cookie != b"") if colon < nxt else 0
        if kind == _CONTENT_LENGTH:
            # llhttp has refused a malformed or repeated one, and one beside Transfer-Encoding:
            # digits, with white space around them.
            length = 0
            for j in range(colon + 1, nxt):
                d = raw[j]
                if 48 <= d <= 57:
                    length = length * 10 + d - 48
            cl_cut = (pos, nxt)
        elif kind == _SET_COOKIE:
            if _sets_own_cookie(raw[colon + 1:nxt], own_cookie):
                cuts.append((pos, nxt))
        elif kind == _CONNECTION and _bare(raw, colon + 1, nxt, b"keep-alive"):
            cuts.append((pos, nxt))
            options |= _KEEP_ALIVE
        elif kind == _CONNECTION and _bare(raw, colon + 1, nxt, b"close"):
            cuts.append((pos, nxt))
            options |= _CLOSE
        elif kind:
            cuts.append((pos, nxt))
            value = b"" if kind == _HOP else raw[colon + 1:nxt].strip()
            if kind == _TRANSFER_ENCODING:
                if codings is None:
                    codings = []
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
            elif kind == _CONNECTION:
                low = value.lower()
                if low != b"keep-alive" and low != b"close" and low:
                    conn_tokens = connection_tokens(value, conn_tokens)
            elif kind == _UPGRADE:
                upgrade_to = value
            elif kind == _PROXY_CONNECTION:
                options |= _options(connection_tokens(value, None))
        pos = nxt
    if conn_tokens is not None:
        options |= _options(conn_tokens)
    if cl_cut[0] >= 0 and (status < 200 or status == 204 or status == 304):
        # No body, and no Content-Length on the way out (RFC 9110 8.6).
        cuts.append(cl_cut)
    return cuts, conn_tokens, options, codings, length, upgrade_to


def _options(tokens: set[bytes]) -> int:
    """The keep-alive options (_CLOSE, _KEEP_ALIVE) among a Connection field's ``tokens``."""
    return (_CLOSE if b"close" in tokens else 0) | (_KEEP_ALIVE if b"keep-alive" in tokens else 0)


def _read_body_framing(rh: ResponseHead, codings: list[bytes] | None, length: int,
                       extra: list[bytes], *, head_request: bool, client_http11: bool) -> bool:
    """How a final response's body is framed from the backend (``rh.body``) and to the client
    (``rh.rechunk`` and the fields added to ``extra``); True if the client connection must end
    with it."""
    status = rh.status
    if status == 204 or status == 304:
        pass  # no body (Content-Length is cut, Transfer-Encoding with the hop fields)
    elif head_request:
        pass  # no body; Content-Length tells the length a GET would have had
    elif codings is not None:
        chunked = bool(codings) and codings[-1].lower() == b"chunked"
        rh.body = framing.CHUNKED if chunked else framing.EOF
        other = codings[:-1] if chunked else codings
        inner = any(c.lower() == b"chunked" for c in other)
        if inner and chunked:
            raise ResponseError("the chunked transfer coding applied twice")
        if not client_http11:
            if other:
                raise ResponseError("a transfer coding an HTTP/1.0 client cannot be sent")
            return True
        if inner:
            # "chunked, gzip": to the close, as it came; chunking it again is forbidden.
            extra.append(b"\r\nTransfer-Encoding: " + b", ".join(other))
            return True
        rh.rechunk = True
        extra.append(b"\r\nTransfer-Encoding: " + b", ".join(other + [b"chunked"]))
    elif length >= 0:
        if length:
            rh.body = framing.LENGTH
            rh.length = length
    else:
        rh.body = framing.EOF
        if not client_http11:
            return True
        rh.rechunk = True
        extra.append(b"\r\nTransfer-Encoding: chunked")
    return False


def _sets_own_cookie(value: bytes, own_cookie: bytes) -> bool:
    """Whether a ``Set-Cookie`` field's ``value`` sets the router's own cookie, its name read
    as a browser reads it (RFC 6265 5.2: up to the first ``=`` of the part before the first
    ``;``, spaces and tabs trimmed: ``CONTAINERID =x`` sets ``CONTAINERID``)."""
    pair = value.split(b";", 1)[0]
    name, eq, rest = pair.partition(b"=")
    name = name.strip(b" \t")
    if not name and eq:
        # A nameless cookie, which a browser that keeps one sends as its value alone.
        name, eq, rest = rest.partition(b"=")
        name = name.strip(b" \t")
    return bool(eq) and name + b"=" == own_cookie


def _is(raw: bytes, i: int, name: bytes) -> bool:
    """Whether ``raw`` at ``i`` is ``name`` (lowercase letters and "-") in any case."""
    for j in range(len(name)):
        if raw[i + j] | 0x20 != name[j]:
            return False
    return True


def _bare(raw: bytes, start: int, end: int, word: bytes) -> bool:
    """Whether ``raw[start:end]`` is ``word`` in any case, with white space around it only."""
    while start < end and (raw[start] == 32 or raw[start] == 9):
        start += 1
    while end > start and (raw[end - 1] == 32 or raw[end - 1] == 9):
        end -= 1
    return end - start == len(word) and _is(raw, start, word)


def _special(raw: bytes, i: int, size: int, cookies: bool) -> int:
    """Which special field the name of ``size`` bytes at ``i`` is (0: none)."""
    c = raw[i] | 0x20
    if c == 99:  # c
        if size == 14 and _is(raw, i, b"content-length"):
            return _CONTENT_LENGTH
        if size == 10 and _is(raw, i, b"connection"):
            return _CONNECTION
    elif c == 116:  # t
        if size == 17 and _is(raw, i, b"transfer-encoding"):
            return _TRANSFER_ENCODING
        if (size == 2 and _is(raw, i, b"te")) or (size == 7 and _is(raw, i, b"trailer")):
            return _HOP
    elif c == 107:  # k
        if size == 10 and _is(raw, i, b"keep-alive"):
            return _HOP
    elif c == 112:  # p
        if size == 16 and _is(raw, i, b"proxy-connection"):
            return _PROXY_CONNECTION
    elif c == 117:  # u
        if size == 7 and _is(raw, i, b"upgrade"):
            return _UPGRADE
    elif c == 115 and cookies:  # s
        if size == 10 and _is(raw, i, b"set-cookie"):
            return _SET_COOKIE
    return 0


# _special matches by hand, for speed, the names of router.http.fields.HOP, the one list of
# them: a name added there and not here stops the import rather than pass hop-by-hop.
if any(_special(name, 0, len(name), False) == 0 for name in HOP):
    raise ImportError("response_head._special misses a name of fields.HOP")


def _rebuild(raw: bytes, cuts: list[tuple[int, int]],
             conn_tokens: set[bytes] | None, extra: list[bytes]) -> bytes:
    """``raw`` as ``HTTP/1.1``, without the ``cuts`` and the fields ``conn_tokens`` names,
    with ``extra`` and the empty line."""
    parts = [b"HTTP/1.1"]
    pos = 8  # llhttp has checked the status line starts "HTTP/x.y "
    if len(cuts) > 1:
        cuts.sort()
    for start, end in cuts:
        parts.append(raw[pos:start])
        pos = end
    parts.append(raw[pos:])
    if conn_tokens:
        lines = b"".join(parts).split(b"\r\n")
        kept = without_named(lines, conn_tokens, 1)
        if kept is not lines:
            parts = [b"\r\n".join(kept)]
    parts += extra
    parts.append(b"\r\n\r\n")
    return b"".join(parts)
