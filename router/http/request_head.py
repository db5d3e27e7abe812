"""A client's request head: checked once, and turned into the head sent to a backend.

Pure: ``read_request_head`` takes what llhttp parsed (method, target, version, header fields)
and what the connection knows (the client's address, whether it is a trusted proxy), fills a
``RequestHead`` and returns nothing, or raises ``Refused`` with the status to answer. No I/O,
no clock: the tests drive it from tables of bytes (docs/request-path.md, "The request head").

What it decides:

- the routing inputs: the host (the ``Host`` field, or the authority of an absolute-form
  target, never dialled) and the path the routing table matches;
- the framing of the body (``framing.NONE``, ``LENGTH`` or ``CHUNKED``) and its length;
- whether the request asks for a protocol upgrade the router will tunnel (``h2c`` never is);
- the head forwarded to the backend: hop-by-hop fields and every field named in ``Connection``
  removed (never ``Host``, ``Content-Length``, cookies or the router's own fields), then
  ``X-Forwarded-For``/``-Proto``/``-Host`` and ``X-Request-ID`` set.

The path a backend reads must be the path the router routed: the target's path is normalised
(percent-encoded unreserved characters decoded, runs of ``/`` merged) and then routed with each
segment's ``;parameters`` left out, as Tomcat, Jetty and Spring read it; a path that a common
backend could read as another path -- a dot segment (``..``, ``%2e%2e``, ``..;x``), an encoded
``/``, ``\\``, ``;`` or NUL, a raw ``\\``, a malformed percent-encoding -- is refused with 400.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Final

import httptools

from . import framing
from .fields import HOP, OWN, PROTECTED, connection_tokens, without_named


def _join(*parts: bytes) -> bytes:
    return b"".join(parts)


class _CFunctions:
    """The C versions of request_fields, classify, plain_target, read_host and _join
    (router/http/_fields.c, built when a C compiler is present), None where the Python one
    runs: ROUTER_PURE_PYTHON set at start runs them all. Fields of one object, not module
    globals, which compiled code looks up in the module's dict at each use (the tests swap
    them)."""

    __slots__ = ("fields", "classify", "plain_target", "host", "concat")

    def __init__(self) -> None:
        self.fields: Callable[[bytes | bytearray, int, int],
                              tuple[list[tuple[bytes, bytes]], bool]] | None = None
        self.classify: Callable[[list[tuple[bytes, bytes]], bool, bool, int],
                                tuple[list[tuple[int, bytes]], bytes, int, bool]] | None = None
        self.plain_target: Callable[[bytes], bool] | None = None
        self.host: Callable[[bytes], bytes | None] | None = None
        self.concat: Callable[..., bytes] = _join


_C: Final = _CFunctions()
if not os.environ.get("ROUTER_PURE_PYTHON"):
    try:
        from . import _fields
        _C.fields = _fields.fields
        _C.classify = _fields.classify
        _C.plain_target = _fields.plain_target
        _C.host = _fields.host
        _C.concat = _fields.concat
    except ImportError:
        pass


class Refused(Exception):
    """The request is answered with ``status`` (and the connection closed): ``str()`` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# The end of an HTTP/1.1 request line (http11_line).
_HTTP11_LINE_END: Final = b"HTTP/1.1\r\n"
# Fields only a trusted proxy may pass on, because backends and their frameworks believe them for
# the client's identity or the request's route: the client's address (RFC 7239 Forwarded,
# nginx's X-Real-IP, the CDNs' True-Client-IP, CF-Connecting-IP, Fastly-Client-IP, and the
# X-Client-IP / X-Cluster-Client-IP that Rails, Express and Symfony consult), the URL a framework
# routes by instead of the request line (IIS and Symfony's X-Original-URL and X-Rewrite-URL), and
# what it builds its own URLs from (Spring's and Traefik's X-Forwarded-Prefix, X-Forwarded-Port,
# X-Forwarded-Server, X-Forwarded-Scheme, X-Original-Host, X-Host). From anyone else they are
# dropped, as X-Forwarded-For/-Proto/-Host are replaced; the list is docs/forwarding.md's.
_TRUSTED_ONLY: Final = frozenset({
    b"forwarded", b"x-real-ip", b"true-client-ip", b"cf-connecting-ip", b"fastly-client-ip",
    b"x-client-ip", b"x-cluster-client-ip", b"x-original-url", b"x-rewrite-url",
    b"x-forwarded-prefix", b"x-forwarded-port", b"x-forwarded-server", b"x-forwarded-scheme",
    b"x-original-host", b"x-host"})
# The kinds of field ``classify`` tells apart by name (router/http/_fields.c has the same
# numbers): 0 for a field passed on as it is, K_HOST to K_COOKIE for the ones read (reported),
# K_TRUSTED for the ones passed on from a trusted proxy only (the _TRUSTED_ONLY fields), and
# K_DROPPED for the hop-by-hop fields not read (Keep-Alive, Proxy-Connection, TE, Trailer):
# they concern the hop from the client, trusted proxy or not, and are never passed on.
K_HOST: Final = 1
K_LENGTH: Final = 2
K_TE: Final = 3
K_CONNECTION: Final = 4
K_UPGRADE: Final = 5
K_XFF: Final = 6
K_RID: Final = 7
K_XFP: Final = 8
K_XFH: Final = 9
K_EXPECT: Final = 10
K_COOKIE: Final = 11
K_TRUSTED: Final = 12
K_DROPPED: Final = 13
_KINDS: Final[dict[bytes, int]] = {
    **{name: K_DROPPED for name in HOP | OWN}, **{name: K_TRUSTED for name in _TRUSTED_ONLY},
    b"host": K_HOST, b"content-length": K_LENGTH, b"transfer-encoding": K_TE,
    b"connection": K_CONNECTION, b"upgrade": K_UPGRADE, b"x-forwarded-for": K_XFF,
    b"x-request-id": K_RID, b"x-forwarded-proto": K_XFP, b"x-forwarded-host": K_XFH,
    b"expect": K_EXPECT, b"cookie": K_COOKIE}
# The names a Connection field may name without removing anything more (see without_named).
_NEVER_NAMED: Final = PROTECTED | HOP

REQUEST_ID_RE: Final = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")
# RFC 9110 7.2: a DNS name or an IP literal, optional port. No userinfo, no list, no spaces.
_HOST_RE: Final = re.compile(rb"^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z")

# What makes a request target need the path checks below: a query, a fragment, "%", "\\", ";",
# "/." or "//". Most targets have none, and one pass tells (plain_target).
_URL_SPECIAL: Final = re.compile(rb"[?#%\\;]|/[./]")
_PCT: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
# Percent-encodings that stay encoded after normalisation but that a backend may decode into
# path structure: "/", "\\", ";", NUL. (".", letters, digits, "-", "_", "~" are decoded.)
_PCT_STRUCT: Final = frozenset({0x2F, 0x5C, 0x3B, 0x00})
_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOT_SEGMENTS: Final = frozenset({b".", b".."})
# The end of a forwarded head without framing or upgrade fields: X-Request-ID's line end and
# the empty line.
_END: Final = b"\r\n\r\n"


class RequestHead:
    """What the router reads from one request head (``read_request_head`` fills it)."""

    __slots__ = ("method", "url", "path", "host", "cookie", "framing", "length", "upgrade",
                 "http11", "keep_alive", "request_id", "head")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""  # the target as forwarded (origin form, normalised path)
        self.path = b""  # the path the routing table matches
        self.host = b""
        self.cookie: bytes | None = None
        self.framing = framing.NONE
        self.length = 0  # with framing.LENGTH
        self.upgrade = False  # an upgrade the router tunnels once the backend answers 101
        self.http11 = True
        self.keep_alive = True
        self.request_id = b""  # the client's X-Request-ID if sane, else one of RequestIds
        self.head = b""  # the head sent to the backend, through its empty line


# The hexadecimal digits of every byte, bare and as two digits: a request id's last two digits
# are looked up, the ones before them formatted once per 256 ids.
_HEX: Final = tuple(b"%x" % i for i in range(256))
_HEX2: Final = tuple(b"%02x" % i for i in range(256))


class RequestIds:
    """``X-Request-ID`` values for requests that carry none: a random prefix per process and a
    counter in hexadecimal, unique without a random draw per request."""

    __slots__ = ("prefix", "n", "_high", "_high_n")

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.n = 0
        self._high = prefix  # the prefix and the counter's digits but the last two
        self._high_n = 0  # the counter's value without its last byte, in _high

    def next(self) -> bytes:
        n = self.n + 1
        self.n = n
        if n < 256:
            return self.prefix + _HEX[n]
        high = n >> 8
        if high != self._high_n:
            self._high_n = high
            self._high = self.prefix + b"%x" % high
        return self._high + _HEX2[n & 255]


def read_host(value: bytes) -> bytes | None:
    """A Host field's value without the white space around it, if it is a syntactically valid
    host (RFC 9112 3.2: anything else is a 400); else None."""
    c = _C.host
    if c is not None:
        return c(value)
    host = value.strip()
    return host if _HOST_RE.match(host) else None


def host_ok(host: bytes) -> bool:
    """A syntactically valid host (as ``read_host`` reads it, with no white space around)."""
    return read_host(host) == host


def plain_target(url: bytes) -> bool:
    """Whether a request target has nothing the path checks look at (``_URL_SPECIAL``)."""
    c = _C.plain_target
    if c is not None:
        return c(url)
    return _URL_SPECIAL.search(url) is None


def classify(headers: list[tuple[bytes, bytes]], trusted: bool, http11: bool,
             max_header: int) -> tuple[list[tuple[int, bytes]], bytes, int, bool]:
    """The one pass over a head's fields (``_fields.classify`` in C), up to the first one
    larger than ``max_header``, if any: ``(specials, kept, total, too_large)``.

    ``specials``: ``(kind, value)`` of each field ``read_request_head`` reads (K_HOST to
    K_COOKIE); ``kept``: the forwarded lines of the fields passed on, in their order (the
    others as they came, ``Content-Length`` and ``Expect`` spelled so, and the K_TRUSTED ones
    from a trusted proxy only); ``total``: the fields' sizes added; ``too_large``: whether it
    stopped at a field larger than ``max_header``."""
    specials: list[tuple[int, bytes]] = []
    kept: list[bytes] = []
    total = 0
    for name, value in headers:
        size = len(name) + len(value)
        if size > max_header:
            return specials, b"".join(kept), total, True
        total += size
        kind = _KINDS.get(name.lower(), 0)
        if kind == K_LENGTH:
            kept.append(b"Content-Length: " + value + b"\r\n")
        elif kind == K_EXPECT:
            if http11:
                kept.append(b"Expect: 100-continue\r\n")
        elif kind == 0 or kind == K_COOKIE or (kind == K_TRUSTED and trusted):
            kept.append(name + b": " + value + b"\r\n")
        if 0 < kind < K_TRUSTED:
            specials.append((kind, value))
    return specials, b"".join(kept), total, False


def _decode_unreserved(path: bytes) -> bytes | None:
    """``%41`` -> ``A`` for unreserved characters (RFC 3986 6.2.2.2); None if a ``%`` is not
    followed by two hexadecimal digits or encodes path structure."""
    if path.count(b"%") != len(_PCT.findall(path)):
        return None
    bad = False

    def repl(m: Any) -> bytes:
        nonlocal bad
        code = int(m.group(1), 16)
        if code in _UNRESERVED:
            return bytes((code,))
        if code in _PCT_STRUCT:
            bad = True
        return bytes(m.group(0))

    out = _PCT.sub(repl, path)
    return None if bad else out


def normalise_path(path: bytes) -> tuple[bytes, bytes] | None:
    """``(forwarded path, routed path)`` for a target's path, or None to refuse it (400).

    The forwarded path has unreserved percent-encodings decoded and runs of ``/`` merged
    (nginx's ``merge_slashes``: sloppy clients send ``//``, and backends read it as ``/``). The
    routed path is the forwarded one read as a Servlet container (Tomcat, Jetty) and Spring
    read it, in their order: each segment's ``;parameters`` removed, then the empty segments
    that leaves merged (``/;x/admin`` is ``/admin`` to Tomcat), then dot segments, which are
    refused wherever they appear (``/..;x/``).
    """
    if b"\\" in path:
        return None
    if b"%" in path:
        decoded = _decode_unreserved(path)
        if decoded is None:
            return None
        path = decoded
    while b"//" in path:
        path = path.replace(b"//", b"/")
    routed = path
    if b";" in path:
        routed = b"/".join(seg.split(b";", 1)[0] for seg in path.split(b"/"))
        while b"//" in routed:
            routed = routed.replace(b"//", b"/")
    if b"." in routed and any(seg in _DOT_SEGMENTS for seg in routed.split(b"/")):
        return None
    return path, routed


def is_h2c(upgrade: bytes) -> bool:
    """Whether an ``Upgrade`` value offers h2c (as any of its protocols, with or without a
    version): h2c would hand the client an HTTP/2 connection to the backend, past every rule
    of the router, so such a request is served as a plain request (RFC 9113 3.2 allows it)."""
    for proto in upgrade.split(b","):
        if proto.strip().split(b"/", 1)[0].strip().lower() == b"h2c":
            return True
    return False


def forwarded_tail(peer: bytes) -> bytes:
    """What follows ``Host: <host>`` in every head forwarded for a client that is not a trusted
    proxy, up to the host again: the router's own values, made once per connection."""
    return b"\r\nX-Forwarded-For: " + peer + b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "


def http11_line(head: bytes, pos: int, method: bytes, url: bytes) -> bool:
    """Whether the request line llhttp parsed at ``head[pos:]``, with this ``method`` and
    ``url``, is HTTP/1.1: a shorter way to its version than ``get_http_version()``, which
    formats a string.

    The line is ``method SP... url SP... HTTP/x.y CRLF``, at least k + 10 bytes from ``pos``
    (k: the method, the url and two spaces). "HTTP/1.1" CR LF at k are its end only if it is
    exactly that long (no CR comes before a line's end), and then they are its version."""
    k = pos + len(method) + len(url) + 2
    return head[k:k + 10] == _HTTP11_LINE_END


def request_line_at(src: bytes | bytearray, pos: int) -> int:
    """Where the request line of a head llhttp read from ``src[pos:]`` begins: past the empty
    lines llhttp skips before it (RFC 9112 2.2)."""
    while src[pos] == 13 or src[pos] == 10:
        pos += 1
    return pos


def head_fields(src: bytes | bytearray, pos: int, method: bytes,
                url: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The fields of the request head llhttp accepted at ``src[pos:]`` (bytes, or the buffer a
    read went into; the empty lines llhttp skips before a request line included), as
    ``request_fields`` reads them, and whether its request line (with this ``method`` and
    ``url``) is HTTP/1.1 (``http11_line``): in C when it is built."""
    c = _C.fields
    k = len(method) + len(url) + 2
    if c is not None:
        return c(src, pos, k)
    pos = request_line_at(src, pos)
    if not isinstance(src, bytes):
        src = bytes(src[pos:src.find(b"\r\n\r\n", pos) + 4])
        pos = 0
    return request_fields(src, pos), http11_line(src, pos, method, url)


def request_fields(head: bytes, pos: int) -> list[tuple[bytes, bytes]]:
    """The fields of the request head whose request line begins at ``head[pos:]``, as
    ``(name, value)``: what llhttp reports for them one by one, read in one pass once it has
    accepted the whole head (a test checks the two against each other; router/http/_fields.c
    is the same in C).

    llhttp's strict syntax is relied on, not checked again: every line ends in CRLF (no bare
    CR or LF, no obs-fold), a name is token characters up to the first colon (no space
    before it), and the empty line ends the head. The value is what follows the colon with
    its leading spaces and tabs left out; llhttp keeps trailing ones, and so does this."""
    fields: list[tuple[bytes, bytes]] = []
    pos = head.find(b"\r\n", pos) + 2  # past the request line
    while head[pos] != 13:  # (the empty line)
        end = head.find(b"\r\n", pos)
        colon = pos
        while head[colon] != 58:
            colon += 1
        v = colon + 1
        c = head[v]
        while c == 32 or c == 9:  # (the CR of the line's end stops it)
            v += 1
            c = head[v]
        fields.append((head[pos:colon], head[v:end]))
        pos = end + 2
    return fields


def field_lines(head: bytearray, pos: int) -> int:
    """How many line ends in ``head[pos:]`` (a head being read, from its request line on) are
    followed by the first byte of another line that is not the empty one: each one is a
    field begun, so that this count minus one is the fields llhttp has reported whole."""
    n = 0
    end = len(head) - 2
    i = head.find(b"\r\n", pos)
    while 0 <= i < end:
        if head[i + 2] != 13:
            n += 1
        i = head.find(b"\r\n", i + 2)
    return n


def read_request_head(rh: RequestHead, method: bytes, url: bytes, version: str,
                      headers: list[tuple[bytes, bytes]], upgrade: bool, *, max_header: int,
                      max_headers: int, trusted: bool, peer: bytes, tail: bytes,
                      ids: RequestIds) -> None:
    """Check one request head and fill ``rh``; ``Refused`` if it is answered without routing.

    ``upgrade`` is llhttp's verdict (``Connection: upgrade`` and an ``Upgrade`` field);
    ``tail`` is ``forwarded_tail(peer)`` (made once per connection); ``ids`` makes the
    request id of a request that brings no sane one.
    """
    rh.method = method
    http11 = version == "1.1"
    if not http11 and version != "1.0":
        # llhttp accepts any "HTTP/<digit>.<digit>", and "0.9" for a bare "GET /".
        raise Refused(505 if version >= "2" else 400, "HTTP version not supported")
    rh.http11 = http11
    host = b""
    hosts = 0
    cookie = None
    conn_tokens: set[bytes] | None = None
    xff = xfp = xfh = rid = upgrade_to = b""
    chunked = False
    length = -1
    # The one pass over the fields: sizes added, the special ones reported, the others' lines
    # kept (in C: no lowercase copy of each name, no set lookup, no bytes per line).
    c = _C.classify
    specials, kept, total, too_large = (c if c is not None else classify)(
        headers, trusted, http11, max_header)
    for kind, value in specials:
        if kind == K_HOST:
            host = value
            hosts += 1
        elif kind == K_LENGTH:
            # llhttp has refused a repeated or malformed one, and one beside chunked.
            length = int(value)
        elif kind == K_TE:
            # llhttp lets "gzip, chunked" through; the router re-frames the body and
            # would drop the other coding, so only plain "chunked" is accepted.
            if chunked or value.strip().lower() != b"chunked":
                raise Refused(400, "unsupported Transfer-Encoding")
            chunked = True
        elif kind == K_CONNECTION:
            if conn_tokens is None and (value == b"keep-alive" or value == b"close"):
                conn_tokens = {value}  # (what browsers send: nothing to split or lower)
            else:
                conn_tokens = connection_tokens(value, conn_tokens)
        elif kind == K_UPGRADE:
            upgrade_to = value
        elif kind == K_XFF:
            if trusted:
                xff = value if not xff else xff + b", " + value
        elif kind == K_RID:
            rid = value
        elif kind == K_XFP:
            xfp = value
        elif kind == K_XFH:
            xfh = value
        elif kind == K_EXPECT:
            # RFC 9110 10.1.1: HTTP/1.0 expectations are ignored (and not forwarded)
            if http11 and value.strip().lower() != b"100-continue":
                raise Refused(417, "only Expect: 100-continue is supported")
        else:  # K_COOKIE
            cookie = value if cookie is None else cookie + b"; " + value
    if too_large:
        raise Refused(431, "header field too large")
    if total > max_headers:
        raise Refused(431, "request header block too large")
    rh.cookie = cookie
    _read_framing(rh, conn_tokens, upgrade_to, chunked=chunked, length=length, upgrade=upgrade)
    if method == b"CONNECT":
        raise Refused(405, "CONNECT is not supported")
    if hosts != 1:
        raise Refused(400, "missing or repeated Host header")
    checked = read_host(host)
    if checked is None:
        raise Refused(400, "invalid Host header")
    _read_target(rh, url=url, host=checked)
    if not rid or not REQUEST_ID_RE.match(rid):
        rid = ids.next()
    rh.request_id = rid
    if conn_tokens and not conn_tokens <= _NEVER_NAMED:
        kept = b"\r\n".join(without_named(kept.split(b"\r\n"), conn_tokens, 0))
    rh.head = _forwarded_head(rh, kept, upgrade_to, trusted, peer=peer, tail=tail, xff=xff,
                              xfp=xfp, xfh=xfh)


def _read_framing(rh: RequestHead, conn_tokens: set[bytes] | None, upgrade_to: bytes, *,
                  chunked: bool, length: int, upgrade: bool) -> None:
    """Whether the connection persists (``conn_tokens``: the Connection field's), how the body
    is framed, whether the upgrade llhttp saw (to ``upgrade_to``) is tunnelled."""
    http11 = rh.http11
    # RFC 9112 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    if conn_tokens is None:
        rh.keep_alive = http11
    else:
        rh.keep_alive = (b"close" not in conn_tokens
                         and (http11 or b"keep-alive" in conn_tokens))
    if chunked:
        if not http11:
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
        rh.framing = framing.CHUNKED
    elif length > 0:
        rh.framing = framing.LENGTH
        rh.length = length
    rh.upgrade = upgrade and not is_h2c(upgrade_to)


def _read_target(rh: RequestHead, *, url: bytes, host: bytes) -> None:
    """The request target checked and normalised: ``rh.url`` forwarded, ``rh.path`` routed,
    and ``rh.host`` (``host``, the Host field's, or an absolute-form target's authority)."""
    if url[:1] != b"/":
        if url == b"*":
            if rh.method != b"OPTIONS":
                raise Refused(400, "request target * is only for OPTIONS")
        else:
            host, url = _absolute_form(url)
    if plain_target(url):
        path = url  # no query, no fragment, nothing normalise_path would change
    else:
        if b"#" in url:
            raise Refused(400, "fragment in request target")
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        paths = normalise_path(path)
        if paths is None:
            raise Refused(400, "path with dot segments, encoded separators or bad encoding")
        fwd = paths[0]
        if fwd != path:
            url = fwd if q < 0 else fwd + url[q:]
        path = paths[1]
    rh.url = url
    rh.path = path
    rh.host = host


def _absolute_form(url: bytes) -> tuple[bytes, bytes]:
    """``(host, origin-form target)`` of an absolute-form target: routed by its authority
    through our table, never dialled."""
    try:
        # Any: the stubs say bytes where the parser gives None (userinfo, ...)
        parsed: Any = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise Refused(400, "invalid request target") from None
    if (not parsed.host or parsed.userinfo
            or parsed.schema.lower() not in (b"http", b"https")):
        raise Refused(400, "invalid request target")
    host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
    if not host_ok(host):
        raise Refused(400, "invalid request target")
    if parsed.fragment:
        raise Refused(400, "fragment in request target")
    return host, (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")


def _forwarded_head(rh: RequestHead, kept: bytes, upgrade_to: bytes, trusted: bool, *,
                    peer: bytes, tail: bytes, xff: bytes, xfp: bytes, xfh: bytes) -> bytes:
    """The head for the backend: the request line, the client's fields kept (``kept``), the
    router's own fields (``X-Forwarded-*`` from a trusted proxy's ``xff``, ``xfp``, ``xfh`` and
    ``peer``, or ``tail``), the framing fields and the empty line, in one allocation."""
    host = rh.host
    if trusted:
        # A trusted proxy in front knows the client, the original scheme and host.
        tail = (b"\r\nX-Forwarded-For: " + (xff + b", " + peer if xff else peer)
                + b"\r\nX-Forwarded-Proto: " + (xfp or b"http") + b"\r\nX-Forwarded-Host: ")
        fwd_host = xfh or host
    else:
        fwd_host = host
    end = _END
    if rh.framing == framing.CHUNKED:
        end = b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    if rh.upgrade:
        end = end[:-2] + b"Connection: upgrade\r\nUpgrade: " + upgrade_to + b"\r\n\r\n"
    return _C.concat(rh.method, b" ", rh.url, b" HTTP/1.1\r\n", kept, b"Host: ", host, tail,
                     fwd_host, b"\r\nX-Request-ID: ", rh.request_id, end)
