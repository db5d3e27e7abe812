"""router.dataplane.sticky: signed tokens, expiry, cookie parsing, the secret file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import re
import stat
import struct
from pathlib import Path

import pytest

from router.dataplane.sticky import Pin, TokenCodec, cookie_value, find_cookie, load_or_create_secret

SECRET = b"0123456789abcdef0123456789abcdef"
MAX_IDLE = 1800
MAX_LIFE = 28800
APP = b"shop"
T0 = 1_700_000_000


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(SECRET, MAX_IDLE, MAX_LIFE)


def ids(codec: TokenCodec, service: str = "blue", backend: str = "10.0.0.1:8080") -> tuple[bytes, bytes]:
    return codec.service_id("shop", service), codec.backend_id("shop", service, backend)


def token(codec: TokenCodec, issued: int = T0, now: int = T0) -> bytes:
    sid, bid = ids(codec)
    return codec.issue(APP, sid, bid, issued, now)


# --------------------------------------------------------------------------------------------
# Issue and verify
# --------------------------------------------------------------------------------------------


def test_round_trip_gives_back_ids_and_timestamps(codec: TokenCodec) -> None:
    sid, bid = ids(codec)
    tok = codec.issue(APP, sid, bid, T0, T0 + 100)
    assert codec.verify(APP, tok, T0 + 200) == Pin(sid, bid, T0, T0 + 100)


def test_ids_are_six_bytes_stable_and_distinct(codec: TokenCodec) -> None:
    sid, bid = ids(codec)
    assert len(sid) == 6 and len(bid) == 6
    assert ids(codec) == (sid, bid)
    assert ids(TokenCodec(SECRET, 1, 1)) == (sid, bid)  # depends on the secret, not the policy
    assert codec.service_id("shop", "green") != sid
    assert codec.service_id("other", "blue") != sid
    assert codec.backend_id("shop", "blue", "10.0.0.2:8080") != bid
    assert codec.backend_id("shop", "green", "10.0.0.1:8080") != bid
    assert TokenCodec(b"x" * 32, MAX_IDLE, MAX_LIFE).service_id("shop", "blue") != sid


def test_each_incarnation_of_a_service_has_its_own_id(codec: TokenCodec) -> None:
    """Incarnation 0 (the seed, or a state stored before incarnations) keeps the id tokens had
    before, so an upgrade re-pins nobody."""
    sid = codec.service_id("shop", "blue")
    assert codec.service_id("shop", "blue", 0) == sid
    later = {codec.service_id("shop", "blue", n) for n in (1, 2, 12, 21)}
    assert len(later) == 4 and sid not in later


def test_pin_takes_the_first_cookie_of_the_name_valid_for_the_app(codec: TokenCodec) -> None:
    """Under an app's path a browser also sends the cookie of the same name that the app at
    "/" set (RFC 6265 5.4): each is tried, the one this app signed wins, whatever the order."""
    mine = token(codec)
    theirs = codec.issue(b"home", *ids(codec), T0, T0)
    for header in (b"CONTAINERID=" + mine + b"; CONTAINERID=" + theirs,
                   b"CONTAINERID=" + theirs + b"; a=1; CONTAINERID=" + mine,
                   b"CONTAINERID=junk; CONTAINERID=" + theirs + b";CONTAINERID=" + mine):
        assert codec.pin(APP, header, b"CONTAINERID=", T0) == Pin(*ids(codec), T0, T0)
    assert codec.pin(APP, b"CONTAINERID=" + theirs, b"CONTAINERID=", T0) is None
    assert codec.pin(APP, b"", b"CONTAINERID=", T0) is None


def test_token_is_44_url_safe_chars(codec: TokenCodec) -> None:
    for n in range(50):
        sid, bid = ids(codec, f"svc{n}", f"10.0.0.{n}:8080")
        tok = codec.issue(APP, sid, bid, T0 + n, T0 + n)
        assert len(tok) == 44
        assert re.fullmatch(rb"[A-Za-z0-9_-]{44}", tok), tok


def test_token_reveals_no_address_or_name(codec: TokenCodec) -> None:
    sid, bid = codec.service_id("shop", "blue"), codec.backend_id("shop", "blue", "10.1.2.3:8080")
    tok = codec.issue(APP, sid, bid, T0, T0)
    raw = base64.urlsafe_b64decode(tok)
    assert len(raw) == 33
    for secret_text in (b"10.1.2.3", b"8080", b"blue", b"shop", bytes([10, 1, 2, 3])):
        assert secret_text not in tok
        assert secret_text not in raw
    assert struct.pack(">H", 8080) not in raw


def test_every_bit_flip_of_the_decoded_token_fails(codec: TokenCodec) -> None:
    raw = bytearray(base64.urlsafe_b64decode(token(codec)))
    for i in range(len(raw)):
        for bit in range(8):
            forged = bytearray(raw)
            forged[i] ^= 1 << bit
            tok = base64.urlsafe_b64encode(bytes(forged))
            assert codec.verify(APP, tok, T0) is None, (i, bit)


def test_every_single_byte_change_of_the_token_fails(codec: TokenCodec) -> None:
    tokens = [token(codec, T0, T0 + k) for k in range(8)]
    for tok in tokens:
        assert codec.verify(APP, tok, T0 + 8) is not None
        for i in range(len(tok)):
            for b in range(256):
                if b == tok[i]:
                    continue
                forged = tok[:i] + bytes([b]) + tok[i + 1:]
                assert codec.verify(APP, forged, T0 + 8) is None, (tok, i, bytes([b]))


def _token_containing(codec: TokenCodec, char: bytes) -> bytes:
    for k in range(1000):
        tok = token(codec, T0, T0 + k)
        if char in tok:
            return tok
    raise AssertionError(f"no token with {char!r}")


# Standard base64 spells url-safe '-' and '_' as '+' and '/': one token, one spelling only.
@pytest.mark.parametrize(("url_safe", "standard"), [(b"-", b"+"), (b"_", b"/")])
def test_standard_base64_spelling_of_a_token_fails(codec: TokenCodec, url_safe: bytes,
                                                   standard: bytes) -> None:
    tok = _token_containing(codec, url_safe)
    forged = tok.replace(url_safe, standard, 1)
    assert forged != tok
    assert codec.verify(APP, forged, T0 + 1000) is None


def test_token_for_one_app_fails_for_another(codec: TokenCodec) -> None:
    tok = token(codec)
    assert codec.verify(b"shop", tok, T0) is not None
    assert codec.verify(b"b", tok, T0) is None
    a_tok = codec.issue(b"a", *ids(codec), T0, T0)
    assert codec.verify(b"a", a_tok, T0) is not None
    assert codec.verify(b"b", a_tok, T0) is None


def test_token_fails_under_another_secret(codec: TokenCodec) -> None:
    other = TokenCodec(b"another secret of 32 bytes......", MAX_IDLE, MAX_LIFE)
    assert other.verify(APP, token(codec), T0) is None


def test_max_idle_boundary(codec: TokenCodec) -> None:
    tok = token(codec, T0, T0 + 10)
    assert codec.verify(APP, tok, T0 + 10 + MAX_IDLE) == Pin(*ids(codec), T0, T0 + 10)
    assert codec.verify(APP, tok, T0 + 10 + MAX_IDLE + 1) is None


def test_max_life_boundary(codec: TokenCodec) -> None:
    seen = T0 + MAX_LIFE - 100  # recently seen: only max_life can expire it
    tok = token(codec, T0, seen)
    assert codec.verify(APP, tok, T0 + MAX_LIFE) == Pin(*ids(codec), T0, seen)
    assert codec.verify(APP, tok, T0 + MAX_LIFE + 1) is None


def test_issued_in_the_future_beyond_skew_fails(codec: TokenCodec) -> None:
    tok = token(codec, T0 + 60, T0 + 60)
    assert codec.verify(APP, tok, T0) == Pin(*ids(codec), T0 + 60, T0 + 60)
    tok = token(codec, T0 + 61, T0 + 61)
    assert codec.verify(APP, tok, T0) is None


def test_seen_in_the_future_beyond_skew_fails(codec: TokenCodec) -> None:
    assert codec.verify(APP, token(codec, T0, T0 + 60), T0) is not None
    assert codec.verify(APP, token(codec, T0, T0 + 61), T0) is None


def test_seen_before_issued_fails(codec: TokenCodec) -> None:
    assert codec.verify(APP, token(codec, T0, T0 - 1), T0) is None


def _signed(body: bytes, app: bytes = APP) -> bytes:
    mac = hmac.digest(SECRET, app + b"\0" + body, hashlib.sha256)[:12]
    return base64.urlsafe_b64encode(body + mac)


def test_unknown_version_with_a_valid_mac_fails(codec: TokenCodec) -> None:
    sid, bid = ids(codec)
    good = _signed(struct.pack(">B6s6sII", 1, sid, bid, T0, T0))
    assert good == token(codec)  # the layout documented in router.dataplane.sticky
    assert codec.verify(APP, good, T0) == Pin(sid, bid, T0, T0)
    v2 = _signed(struct.pack(">B6s6sII", 2, sid, bid, T0, T0))
    assert codec.verify(APP, v2, T0) is None


@pytest.mark.parametrize("bad", [
    b"",
    b"A",
    b"A" * 43,
    b"A" * 45,
    b"A" * 4096,
    b"!" * 44,
    b"@" * 44,
    b"=" * 44,
    b" " * 44,
    b"\xff" * 44,
    b"\x00" * 44,
    b"A" * 43 + b"=",
    b"A" * 42 + b"==",
    b"A" * 44,
    b"A" * 40 + b"\r\n\r\n",
], ids=lambda b: repr(b[:12]) + f"..{len(b)}")
def test_garbage_is_none(codec: TokenCodec, bad: bytes) -> None:
    assert codec.verify(APP, bad, T0) is None


def test_truncated_and_extended_tokens_fail(codec: TokenCodec) -> None:
    tok = token(codec)
    assert codec.verify(APP, tok[:-1], T0) is None
    assert codec.verify(APP, tok + b"A", T0) is None
    assert codec.verify(APP, tok + b"=", T0) is None
    assert codec.verify(APP, tok * 2, T0) is None


def test_policy_fields() -> None:
    codec = TokenCodec(SECRET, 1800.0, 28800.0)
    assert (codec.max_idle, codec.max_life, codec.refresh_after) == (1800, 28800, 450)
    assert TokenCodec(SECRET, 1801, 28800).refresh_after == 450
    assert TokenCodec(SECRET, 100, 200).refresh_after == 25
    # Never 0, which would mean a Set-Cookie on every response.
    assert TokenCodec(SECRET, 3, 200).refresh_after == 1


def test_secret_must_be_16_bytes() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenCodec(b"x" * 15, MAX_IDLE, MAX_LIFE)
    TokenCodec(b"x" * 16, MAX_IDLE, MAX_LIFE)


# --------------------------------------------------------------------------------------------
# cookie_value
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (b"CONTAINERID=abc", b"abc"),
    (b"CONTAINERID=abc; a=1; b=2", b"abc"),
    (b"a=1; CONTAINERID=abc; b=2", b"abc"),
    (b"a=1; b=2; CONTAINERID=abc", b"abc"),
    (b"a=1;CONTAINERID=abc;b=2", b"abc"),
    (b"a=1;\tCONTAINERID=abc", b"abc"),
    (b"CONTAINERID=  abc  ; b=2", b"abc"),
    (b"a=1;   CONTAINERID=abc   ", b"abc"),
    (b'CONTAINERID="abc"', b"abc"),
    (b'a=1; CONTAINERID="abc"; b=2', b"abc"),
    (b"CONTAINERID=", b""),
    (b"CONTAINERID=first; CONTAINERID=second", b"first"),
    (b"XCONTAINERID=evil", None),
    (b"XCONTAINERID=evil; CONTAINERID=good", b"good"),
    (b"a=CONTAINERID=evil; CONTAINERID=good", b"good"),
    (b"a=1, CONTAINERID=evil", None),  # a value with a comma, not a cookie
    (b"a=1 CONTAINERID=evil; CONTAINERID=good", b"good"),
    (b"a=1;; CONTAINERID=good", b"good"),
    (b"a=1; b=2", None),
    (b"CONTAINERID", None),
    (b"containerid=abc", None),
    (b"", None),
])
def test_cookie_value(header: bytes, expected: bytes | None) -> None:
    assert cookie_value(header, b"CONTAINERID=") == expected


def test_cookie_value_with_a_real_token(codec: TokenCodec) -> None:
    tok = token(codec)
    header = b"_ga=GA1.2.3; CONTAINERID=" + tok + b"; theme=dark"
    value = cookie_value(header, b"CONTAINERID=")
    assert value == tok
    assert codec.verify(APP, value, T0) == Pin(*ids(codec), T0, T0)


# --------------------------------------------------------------------------------------------
# load_or_create_secret
# --------------------------------------------------------------------------------------------


def test_secret_without_path_is_random_32_bytes() -> None:
    a, b = load_or_create_secret(None), load_or_create_secret(None)
    assert len(a) == 32 and len(b) == 32
    assert a != b


def test_secret_file_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sticky.secret"
    first = load_or_create_secret(str(path))
    assert len(first) >= 16
    assert re.fullmatch(rb"[0-9a-f]{64}", first)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == first + b"\n"
    assert sorted(os.listdir(tmp_path)) == ["sticky.secret"]  # no temporary file left
    second = load_or_create_secret(str(path))
    assert second == first
    TokenCodec(first, MAX_IDLE, MAX_LIFE)  # usable as it is


def test_secret_file_is_used_as_written(tmp_path: Path) -> None:
    path = tmp_path / "sticky.secret"
    path.write_bytes(b"  sixteen-bytes-secret!!  \n")
    assert load_or_create_secret(str(path)) == b"sixteen-bytes-secret!!"


def test_secret_file_too_short_raises(tmp_path: Path) -> None:
    path = tmp_path / "sticky.secret"
    path.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        load_or_create_secret(str(path))
    assert path.read_bytes() == b"short\n"  # never overwritten
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        load_or_create_secret(str(path))


def test_issue_is_deterministic_and_reused_within_a_second():
    codec = TokenCodec(b"s" * 32, 1800, 28800)
    sid, bid = ids(codec)
    first = codec.issue(APP, sid, bid, T0, T0)
    assert codec.issue(APP, sid, bid, T0, T0) is first  # the same second: the same bytes
    # Every field still counts: another second, issue time or backend is another token.
    assert codec.issue(APP, sid, bid, T0, T0 + 1) != first
    assert codec.issue(APP, sid, bid, T0 - 5, T0 + 1) != codec.issue(APP, sid, bid, T0 + 1, T0 + 1)
    assert codec.issue(APP, sid, codec.backend_id("shop", "blue", "x:1"), T0, T0) != first
    pin = codec.verify(APP, first, T0)
    assert pin is not None and (pin.service_id, pin.backend_id, pin.issued, pin.seen) == (sid, bid, T0, T0)


def _cookie_value_by_methods(cookie_header: bytes, name: bytes) -> bytes | None:
    """cookie_value with its value cut by bytes methods (what the compiled loop follows)."""
    j = find_cookie(cookie_header, name, 0)
    if j < 0:
        return None
    end = cookie_header.find(b";", j)
    value = cookie_header[j:] if end < 0 else cookie_header[j:end]
    return value.strip().strip(b'"')


def test_cookie_value_as_bytes_methods_define_it() -> None:
    rng = random.Random(7)
    pieces = [b"CONTAINERID=", b"XCONTAINERID=", b"a=b", b";", b"; ", b" ", b"\t", b"\x0b",
              b"\r", b'"', b"tok", b"=", b"\x0c", b"\xff"]
    for _ in range(20000):
        header = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 9)))
        assert cookie_value(header, b"CONTAINERID=") == _cookie_value_by_methods(
            header, b"CONTAINERID="), header
