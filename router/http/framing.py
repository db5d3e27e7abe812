"""Message framing: how a body's end is found, and the one chunk encoder.

Pure, bytes in and bytes out. The kinds of framing a body can have, for a request from a client
or a response from a backend (RFC 9112 6):

``NONE``     no body (a request without Content-Length or Transfer-Encoding; a response to
             HEAD; 1xx, 204, 304)
``LENGTH``   exactly Content-Length bytes
``CHUNKED``  chunked transfer coding, ended by the last chunk and the trailer section
``EOF``      a response body that ends when the backend closes the connection

llhttp (through httptools) finds the end of every chunked body the router reads, with one
exception: llhttp stops at the head of a request that asks for a protocol upgrade, even when the
request announces a body, and leaves the body unparsed. ``ChunkedDecoder`` reads such a body.
Its rules are llhttp's strict ones (a hexadecimal size of at most 16 digits, chunk extensions of
tokens, CRLF at every line end, a trailer section of header lines), so no byte stream is read
differently by the two; after such a request the client connection is either a tunnel or
closed, so no later request depends on where it ended.
"""

from __future__ import annotations

import re
from typing import Final

NONE: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
EOF: Final = 3

LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes | memoryview) -> bytes:
    """``data`` as one chunk of the chunked transfer coding (data must not be empty)."""
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))


class BodyWriter:
    """Writes a request body's bytes as they are (a ``Content-Length`` body). A body's writer is
    chosen once, with its head, as h11's ``_writers`` are."""

    __slots__ = ()

    def frame(self, data: bytes) -> bytes:
        return data

    def last(self) -> bytes:
        """What ends the body on the wire (nothing: its length said where)."""
        return b""


class ChunkedWriter(BodyWriter):
    """Writes a request body's bytes as chunks, and the last chunk at its end."""

    __slots__ = ()

    def frame(self, data: bytes) -> bytes:
        return chunk(data)

    def last(self) -> bytes:
        return LAST_CHUNK


AS_IS: Final = BodyWriter()
CHUNKED_WRITER: Final = ChunkedWriter()


class FramingError(Exception):
    """A body whose framing is malformed: the message cannot be delimited."""


# chunk-size [ chunk-ext ] CRLF (RFC 9112 7.1.1), as llhttp's strict mode reads it: no
# whitespace around ";" and "=", a value may be empty
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|"
                        + _QUOTED + rb")?)?)*)\r\n")
# A trailer field line: a token name, a colon, a value without CR, LF or NUL.
_TRAILER_LINE = re.compile(_TOKEN + rb":[^\r\n\x00]*\r\n")
# What a body's follower (ChunkedDecoder.scan, for a body llhttp reads and judges) needs of the
# same lines: where they end. Laxer than the rules above, so that it finds the end of every
# body llhttp reads whole, and the same end.
_SIZE_LINE_LAX = re.compile(rb"0*([0-9A-Fa-f]{1,16})[^\r\n]*\r\n")
_TRAILER_LINE_LAX = re.compile(rb"[^\r\n]*\r\n")
_MAX_LINE = 4096  # a size line or a trailer line longer than this is refused
_MAX_TRAILERS = 65536  # the whole trailer section
# Where a ChunkedDecoder is: reading a size line, chunk data, the CRLF after it, the trailers.
_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILER: Final = 3


class BodyDecoder:
    """Reads one body whose framing the router must find itself (see the module's doc):
    ``feed(data)`` returns the body bytes found (a list of pieces) and sets ``done`` once the
    body has ended; ``rest`` then holds the bytes after it."""

    __slots__ = ("done", "rest")

    def __init__(self) -> None:
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        raise NotImplementedError


class LengthDecoder(BodyDecoder):
    """A body of ``length`` bytes."""

    __slots__ = ("_left",)

    def __init__(self, length: int) -> None:
        super().__init__()
        self._left = length
        self.done = length <= 0

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.rest += data
            return []
        take = min(self._left, len(data))
        self._left -= take
        if not self._left:
            self.done = True
            self.rest = data[take:]
        return [data[:take]] if take else []


class ChunkedDecoder(BodyDecoder):
    """Incremental decoder of one chunked body.

    ``feed(data)`` returns the body bytes it decoded (a list of pieces) and sets ``done`` once
    the last chunk and the trailer section are read; ``rest`` then holds the bytes after the
    body. A malformed body raises ``FramingError``.
    """

    __slots__ = ("_buf", "_left", "_state", "_trailers", "_size_line", "_trailer_line")

    def __init__(self, lax: bool = False) -> None:
        """``lax``: only to follow a body llhttp reads and judges (``scan``): its lines are
        taken as llhttp takes them, or more loosely."""
        super().__init__()
        self._buf = b""
        self._left = 0
        self._state = _SIZE
        self._trailers = 0
        self._size_line = _SIZE_LINE_LAX if lax else _SIZE_LINE
        self._trailer_line = _TRAILER_LINE_LAX if lax else _TRAILER_LINE

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.rest += data
            return []
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        end = self._walk(buf, 0, out)
        if end >= 0:
            self.rest = buf[end:]
        return out

    def scan(self, data: bytes, pos: int) -> int:
        """Follow the body through ``data[pos:]`` without keeping it: the offset in ``data``
        just past its end, or -1 if it goes on past ``data``. ``FramingError`` if malformed.

        The client connection uses it to know where a chunked request body that llhttp reads
        ends, so that it never gives llhttp more than the requests it will answer next."""
        held = self._buf
        if not held:
            return self._walk(data, pos, None)
        self._buf = b""
        end = self._walk(held + data[pos:], 0, None)
        return end if end < 0 else end - len(held) + pos

    def _walk(self, buf: bytes, pos: int, out: list[bytes] | None) -> int:
        """Read ``buf`` from ``pos``, appending the body bytes to ``out`` (if not None): where
        the body ended in ``buf``, or -1 (an incomplete line is kept for the next call)."""
        n = len(buf)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                if out is not None:
                    out.append(buf[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
                continue
            if state == _DATA_END:
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise FramingError("chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if n - pos > _MAX_LINE:
                    raise FramingError("chunk line too long")
                break
            if end + 1 - pos > _MAX_LINE:
                raise FramingError("chunk line too long")
            line = buf[pos:end + 1]
            pos = end + 1
            if state == _SIZE:
                m = self._size_line.fullmatch(line)
                if m is None:
                    raise FramingError("invalid chunk size line")
                size = int(m.group(1), 16)
                if size:
                    self._left = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
            else:  # trailer section: field lines, then an empty line
                if line == b"\r\n":
                    self.done = True
                    return pos
                self._trailers += len(line)
                if self._trailer_line.fullmatch(line) is None or self._trailers > _MAX_TRAILERS:
                    raise FramingError("invalid trailer section")
        if pos < n:
            self._buf = buf[pos:]
        return -1
