"""Signed, opaque session-stickiness tokens (docs/routing.md, "The pin").

A token pins a client to one backend of one service of one app. It is::

    base64url( version(1) | service id(6) | backend id(6) | issued(4) | last seen(4) | mac(12) )

44 characters, no padding. The ids are truncated HMACs of the names (the service's with its
incarnation), so the token reveals no address and no service name; the MAC covers the app name
too, so a token minted for one app is worthless for another. ``issued`` enforces ``max_life``
and ``last seen`` ``max_idle`` (HAProxy's ``cookie ... maxidle maxlife``); the router re-issues
the cookie when ``last seen`` is older than a quarter of ``max_idle``, so an active client never
expires while an idle one does, without a Set-Cookie on every response.

Anything that does not verify (wrong length, bad base64, bad MAC, unknown version, expired,
issued in the future) is treated as no cookie at all.

A *preview* token (docs/release-ramp.md, "Preview") is signed with the same secret, in its own
domain (the MAC covers ``preview\0`` first, so neither kind can pass for the other)::

    base64url( version 2 (1) | preview id(6) | issued(4) | expires(4) | mac(12) )

36 characters. The preview id is a truncated HMAC of the app, the new service, its incarnation
(the generation that started the release) and the moment the release started, so a token opens
the preview of one release only: not the next release of a service of the same name, even one
started within the same second, and nothing once the release is confirmed or rolled back.
"""

from __future__ import annotations

import binascii
import glob
import hashlib
import hmac
import logging
import os
import struct
import time
from typing import NamedTuple

log = logging.getLogger("router")

VERSION = 1
ID_LEN = 6
MAC_LEN = 12
_BODY = struct.Struct(">B6s6sII")
TOKEN_LEN = 44  # base64 of 21 + 12 bytes
PREVIEW_VERSION = 2
_PREVIEW_BODY = struct.Struct(">B6sII")
PREVIEW_TOKEN_LEN = 36  # base64 of 15 + 12 bytes
_PREVIEW_DOMAIN = b"preview\0"
_CLOCK_SKEW = 60  # seconds a token may claim to come from the future (replicas' clocks)

_b64decode = binascii.a2b_base64
_URLSAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# Tokens whose signature has been checked, per codec: a pinned client sends the same cookie
# on every request until it is refreshed, and the HMAC is most of verify()'s cost. Bounded;
# emptied when full (a flood of distinct valid tokens only costs HMACs again).
_VERIFIED_MAX = 16384
# Tokens kept for reuse within one second (refreshed tokens keep their first issue time, so
# there can be more than one per backend).
_ISSUED_MAX = 4096


class Pin(NamedTuple):
    service_id: bytes
    backend_id: bytes
    issued: int
    seen: int


class TokenCodec:
    """Issues and verifies tokens with one secret and one cookie policy."""

    __slots__ = ("_secret", "max_idle", "max_life", "refresh_after", "_verified", "_issued",
                 "_issued_at", "_previews")

    def __init__(self, secret: bytes, max_idle: float, max_life: float) -> None:
        if len(secret) < 16:
            raise ValueError("sticky secret must be at least 16 bytes")
        self._secret = secret
        self.max_idle = int(max_idle)
        self.max_life = int(max_life)
        self.refresh_after = max(1, self.max_idle // 4)
        self._verified: dict[tuple[bytes, bytes], Pin] = {}
        # Tokens issued this second: one token's content is (app, service, backend, issued,
        # seen), all in whole seconds, so every new client pinned to the same backend in one
        # second gets the same bytes; the HMAC is computed once per second per backend.
        self._issued: dict[tuple[bytes, bytes, bytes, int], bytes] = {}
        self._issued_at = 0
        # Preview tokens whose signature has been checked: (app, token) -> (preview id, expiry).
        self._previews: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}

    def _id(self, *parts: str) -> bytes:
        msg = "\0".join(parts).encode()
        return hmac.digest(self._secret, b"id\0" + msg, hashlib.sha256)[:ID_LEN]

    def service_id(self, app: str, service: str, incarnation: int = 0) -> bytes:
        """What a token names a service by: its app, its name and its incarnation (the
        generation that added it; 0 gives the id of tokens issued before incarnations were
        kept), so a token of a deleted service does not reach a later one of the same name."""
        if incarnation == 0:
            return self._id(app, service)
        return self._id(app, service, str(incarnation))

    def backend_id(self, app: str, service: str, backend: str) -> bytes:
        return self._id(app, service, backend)

    def issue(self, app: bytes, service_id: bytes, backend_id: bytes, issued: int, now: int) -> bytes:
        """A token for ``app`` (the app name, encoded) as cookie-value bytes."""
        if now != self._issued_at or len(self._issued) >= _ISSUED_MAX:
            self._issued.clear()
            self._issued_at = now
        key = (app, service_id, backend_id, issued)
        token = self._issued.get(key)
        if token is None:
            token = self._issued[key] = self._sign(app, service_id, backend_id, issued, now)
        return token

    def _sign(self, app: bytes, service_id: bytes, backend_id: bytes, issued: int, now: int) -> bytes:
        body = _BODY.pack(VERSION, service_id, backend_id, issued, now)
        mac = hmac.digest(self._secret, app + b"\0" + body, hashlib.sha256)[:MAC_LEN]
        return binascii.b2a_base64(body + mac, newline=False).translate(_TO_URLSAFE)

    def verify(self, app: bytes, token: bytes, now: int) -> Pin | None:
        key = (app, token)
        pin = self._verified.get(key)
        if pin is None:
            pin = self._check(app, token)
            if pin is None:
                return None
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[key] = pin
        issued, seen = pin.issued, pin.seen
        if issued > now + _CLOCK_SKEW or seen > now + _CLOCK_SKEW:
            return None
        if now - issued > self.max_life or now - seen > self.max_idle:
            return None
        return pin

    def pin(self, app: bytes, cookie_header: bytes, name: bytes, now: int) -> Pin | None:
        """The pin of the first cookie ``name`` (``b"CONTAINERID="``) in a ``Cookie`` header
        that is valid for ``app``, or None: under one app's path the browser may also send
        the cookie of another app on the host whose path contains it."""
        j = find_cookie(cookie_header, name, 0)
        while j >= 0:
            pin = self.verify(app, cookie_at(cookie_header, j), now)
            if pin is not None:
                return pin
            j = find_cookie(cookie_header, name, j)
        return None

    def _check(self, app: bytes, token: bytes) -> Pin | None:
        """The token's content if it is well-formed and signed for ``app``; no clock."""
        if len(token) != TOKEN_LEN or token.translate(None, _URLSAFE):
            return None  # wrong length, or a byte outside url-safe base64 (one spelling only)
        try:
            raw = _b64decode(token.translate(_FROM_URLSAFE))
        except (binascii.Error, ValueError):
            return None
        body = raw[:-MAC_LEN]
        mac = hmac.digest(self._secret, app + b"\0" + body, hashlib.sha256)[:MAC_LEN]
        if not hmac.compare_digest(mac, raw[-MAC_LEN:]):
            return None
        version, sid, bid, issued, seen = _BODY.unpack(body)
        if version != VERSION or seen < issued:
            return None
        return Pin(sid, bid, issued, seen)


    def preview_id(self, app: str, service: str, incarnation: int, release_started: str) -> bytes:
        """What a preview token of the release of ``service`` names: the service's incarnation
        (the generation that started the release, one per release) and the release's
        ``started_at``."""
        if incarnation == 0:
            return self._id("preview", app, service, release_started)
        return self._id("preview", app, service, release_started, str(incarnation))

    def issue_preview(self, app: bytes, preview_id: bytes, issued: int, expires: int) -> bytes:
        """A preview token for ``app`` valid until ``expires`` (Unix seconds)."""
        body = _PREVIEW_BODY.pack(PREVIEW_VERSION, preview_id, issued, expires)
        mac = hmac.digest(self._secret, _PREVIEW_DOMAIN + app + b"\0" + body,
                          hashlib.sha256)[:MAC_LEN]
        return binascii.b2a_base64(body + mac, newline=False).translate(_TO_URLSAFE)

    def verify_preview(self, app: bytes, token: bytes, now: int) -> tuple[bytes, int] | None:
        """(preview id, expiry) of a valid, unexpired preview token for ``app``; None otherwise."""
        key = (app, token)
        known = self._previews.get(key)
        if known is None:
            if len(token) != PREVIEW_TOKEN_LEN or token.translate(None, _URLSAFE):
                return None
            try:
                raw = _b64decode(token.translate(_FROM_URLSAFE))
            except (binascii.Error, ValueError):
                return None
            body = raw[:-MAC_LEN]
            mac = hmac.digest(self._secret, _PREVIEW_DOMAIN + app + b"\0" + body,
                              hashlib.sha256)[:MAC_LEN]
            if not hmac.compare_digest(mac, raw[-MAC_LEN:]):
                return None
            version, pid, issued, expires = _PREVIEW_BODY.unpack(body)
            if version != PREVIEW_VERSION or expires < issued:
                return None
            if len(self._previews) >= _VERIFIED_MAX:
                self._previews.clear()
            known = self._previews[key] = (pid, expires)
        if now >= known[1]:
            return None
        return known

    def previewing(self, app: bytes, cookie_header: bytes, name: bytes, preview_id: bytes,
                   now: int) -> bool:
        """Whether a ``Cookie`` header has a cookie ``name`` (``b"CONTAINERID_PREVIEW="``) with
        a valid preview token of ``app`` naming ``preview_id``."""
        j = find_cookie(cookie_header, name, 0)
        while j >= 0:
            found = self.verify_preview(app, cookie_at(cookie_header, j), now)
            if found is not None and found[0] == preview_id:
                return True
            j = find_cookie(cookie_header, name, j)
        return False


def cookie_value(cookie_header: bytes, name: bytes) -> bytes | None:
    """The value of the first cookie ``name`` in one ``Cookie`` header, or None.

    ``name`` is ``b"CONTAINERID="``-style (name plus equals sign), matched where a cookie
    begins (the start, or after a ``;`` and spaces) so neither ``XCONTAINERID=`` nor a value
    that contains the name (``a=1, CONTAINERID=x``) counts.
    """
    j = find_cookie(cookie_header, name, 0)
    return None if j < 0 else cookie_at(cookie_header, j)


def find_cookie(cookie_header: bytes, name: bytes, start: int) -> int:
    """Where the value of the next cookie ``name`` after ``start`` begins, or -1. A browser
    sends every cookie of that name whose path matches the request's (RFC 6265 5.4), the most
    specific path first; each app's is told apart by its signature."""
    while True:
        i = cookie_header.find(name, start)
        if i < 0:
            return -1
        if _cookie_starts(cookie_header, i):
            return i + len(name)
        start = i + 1


def cookie_at(cookie_header: bytes, j: int) -> bytes:
    """The cookie value that begins at ``j`` (found by ``find_cookie``): up to the next ";",
    without white space around it, then without double quotes around that."""
    end = cookie_header.find(b";", j)
    if end < 0:
        end = len(cookie_header)
    # As strip() and then strip(b'"'), compiled: no method call, and no bytes object but the
    # value.
    while j < end and _space(cookie_header[j]):
        j += 1
    while end > j and _space(cookie_header[end - 1]):
        end -= 1
    while j < end and cookie_header[j] == 34:
        j += 1
    while end > j and cookie_header[end - 1] == 34:
        end -= 1
    return cookie_header[j:end]


def _space(c: int) -> bool:
    """ASCII white space, as bytes.strip() takes it: space, tab, LF, VT, FF, CR."""
    return c == 32 or 9 <= c <= 13


def _cookie_starts(header: bytes, i: int) -> bool:
    """Whether a cookie begins at ``i``: only spaces between it and a ``;`` or the start."""
    while i > 0:
        i -= 1
        c = header[i]
        if c == 59:  # ";"
            return True
        if c != 32 and c != 9:
            return False
    return True


def load_or_create_secret(path: str | None) -> bytes:
    """The HMAC secret: from ``path`` if it exists, else created there (mode 0600).

    With no path a random per-process secret is used: fine for one process, and the
    multi-worker and replica setups always pass a path or a store.
    """
    if path is None:
        return os.urandom(32)
    _remove_strays(path)
    try:
        with open(path, "rb") as f:
            data = f.read().strip()
        if len(data) < 16:
            raise ValueError(f"{path}: sticky secret shorter than 16 bytes")
        return data
    except FileNotFoundError:
        pass
    secret = binascii.hexlify(os.urandom(32))
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic create-if-absent: a racing process keeps the winner's secret
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create_secret(path)
    os.unlink(tmp)
    log.info("created sticky secret %s", path)
    return secret


# A secret's temporary file lives for milliseconds; one older than this was left by a router
# killed while creating it (replicas sharing the file may be creating theirs right now).
_STRAY_AGE = 60.0


def _remove_strays(path: str) -> None:
    """Temporary files of a secret's creation that a killed router left behind."""
    now = time.time()
    for stray in glob.glob(glob.escape(path) + ".tmp[0-9]*"):
        try:
            if now - os.stat(stray).st_mtime > _STRAY_AGE:
                os.unlink(stray)
        except OSError:
            pass
