"""Body framing: the chunk encoder, and the decoders for the body of an upgrade request --
checked against llhttp on generated bodies, so the two never disagree on where a body ends."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.http.framing import (
    LAST_CHUNK,
    ChunkedDecoder,
    FramingError,
    LengthDecoder,
    chunk,
)


def test_chunk():
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def decode(data: bytes, split: int | None = None) -> tuple[bytes, bytes]:
    d = ChunkedDecoder()
    parts = [data] if split is None else [data[:split], data[split:]]
    body = b""
    for p in parts:
        body += b"".join(d.feed(p))
    assert d.done
    return body, d.rest


def test_chunked_decoder_exact():
    data = b"5\r\nhello\r\n6;ext=1;q=\"a b\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT"
    for split in [None] + list(range(len(data))):
        assert decode(data, split) == (b"hello world", b"NEXT")


@pytest.mark.parametrize("bad", [
    b"x\r\n", b"5\r\nhelloX\r\n", b"5\nhello\r\n", b"0x5\r\nhello\r\n", b" 5\r\nhello\r\n",
    b"5 ;\r\n", b"11111111111111111\r\n", b"0\r\nbad trailer\r\n\r\n", b"0\r\nX: a\nY: b\r\n\r\n",
    b"-1\r\n",
])
def test_chunked_decoder_refuses(bad):
    with pytest.raises(FramingError):
        ChunkedDecoder().feed(bad + b"0\r\n\r\n")


def test_length_decoder():
    d = LengthDecoder(5)
    assert d.feed(b"he") == [b"he"] and not d.done
    assert d.feed(b"lloGET") == [b"llo"] and d.done and d.rest == b"GET"
    assert d.feed(b"!") == [] and d.rest == b"GET!"
    assert LengthDecoder(0).done


def _llhttp(body: bytes) -> tuple[bytes, bool] | None:
    """What llhttp reads as a chunked request body: (body, complete), or None if it refuses."""
    got: list[bytes] = []
    done: list[bool] = []

    class P:
        def on_body(self, b: bytes) -> None:
            got.append(b)

        def on_message_complete(self) -> None:
            done.append(True)
            raise StopIteration  # stop at the end of the body, as the router's decoder does

    parser = httptools.HttpRequestParser(P())
    try:
        parser.feed_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    except httptools.HttpParserCallbackError:
        pass
    except httptools.HttpParserError:
        return None
    return b"".join(got), bool(done)


_ext = st.sampled_from([b"", b";a", b";a=b", b';a="x y"', b"; a = b", b";a=", b";=b", b";a b"])
_size = st.one_of(st.integers(0, 40).map(lambda n: b"%x" % n),
                  st.sampled_from([b"0x1", b" 1", b"1 ", b"+1", b"g", b"00000000000000001", b"A"]))
_crlf = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        size = draw(_size)
        data = draw(st.binary(min_size=0, max_size=40))
        out += size + draw(_ext) + draw(_crlf) + data + draw(_crlf)
    out += b"0" + draw(_ext) + draw(_crlf)
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"X-T: 1", b"X-T:", b"bad line", b"X-T: a\x00b"])) + draw(_crlf)
    out += draw(_crlf)
    return out


@settings(max_examples=400, deadline=None)
@given(chunked_bodies(), st.integers(0, 200))
def test_chunked_decoder_agrees_with_llhttp(data, split):
    """The decoder never reads a body end where llhttp would not: where both read a whole body
    they read the same one, however it is split; where llhttp refuses, the decoder refuses or
    finds no end. (It may refuse what llhttp lets through, e.g. an extension with no name:
    stricter is safe, a different end is not.)"""
    want = _llhttp(data)
    d = ChunkedDecoder()
    try:
        got = b"".join(d.feed(data[:split]) + d.feed(data[split:]))
    except FramingError:
        return
    if want is None:
        assert not d.done, data  # llhttp refused: the decoder must not have found an end
        return
    body, complete = want
    if complete:
        assert d.done and got == body, (data, got, body)
    else:
        assert not d.done, data


@settings(max_examples=400, deadline=None)
@given(chunked_bodies(), st.integers(0, 200), st.binary(max_size=8))
def test_scan_finds_the_end_the_decoder_finds(data, split, after):
    """scan follows a body without keeping it, to the same end as feed, however it is split."""
    data += after
    d = ChunkedDecoder()
    try:
        d.feed(data[:split])
        d.feed(data[split:])
    except FramingError:
        return
    s = ChunkedDecoder()
    cut = min(split, len(data))
    first = s.scan(data[:cut], 0)
    end = first if first >= 0 else s.scan(data, cut)
    if not d.done:
        assert end < 0
    else:
        assert end == len(data) - len(d.rest)


def test_scan_from_an_offset_with_a_line_split_over_reads():
    data = b"GET / HTTP/1.1\r\n\r\n" + b"5;x=y\r\nhello\r\n0\r\n\r\nNEXT"
    s = ChunkedDecoder()
    assert s.scan(data[:22], 18) == -1  # "5;x=" kept for the next read
    assert s.scan(data, 22) == len(data) - 4


def _llhttp_end(body: bytes) -> int:
    """Where llhttp ends a chunked request body (fed a byte at a time); -1 if it does not."""
    done: list[bool] = []

    class P:
        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpRequestParser(P())
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(len(body)):
        try:
            parser.feed_data(body[i:i + 1])
        except httptools.HttpParserError:
            return -1
        if done:
            return i + 1
    return -1


@settings(max_examples=1000, deadline=None)
@given(chunked_bodies(), st.integers(0, 200), st.binary(max_size=8))
def test_a_lax_scan_finds_the_end_llhttp_finds(data, split, after):
    """The follower of a body llhttp reads (the client connection's read-ahead) finds the end
    of every body llhttp reads whole, and the same end, however the body is split."""
    data += after
    want = _llhttp_end(data)
    if want < 0:
        return
    s = ChunkedDecoder(lax=True)
    cut = min(split, len(data))
    first = s.scan(data[:cut], 0)
    end = first if first >= 0 else s.scan(data, cut)
    assert end == want, data
