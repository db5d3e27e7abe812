"""The access log (config ``access_log``): one line per request on stdout, JSON or combined.

Lines are made as bytes, without the logging module, and written in batches: one write per
turn of the event loop, of whole lines and at most ``PIPE_BUF`` bytes, so that the lines of
several worker processes sharing one stdout pipe never interleave. The timestamp is formatted
once per second; the JSON line's has the millisecond added.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import sys
import time
from typing import BinaryIO

# A write to a pipe of at most this many bytes is never interleaved with another writer's.
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
# What a JSON string or a quoted field of the combined format may hold as it is: printable
# ASCII but the quote and the backslash. The combined format escapes the rest as nginx does,
# as \xHH: a request line or a User-Agent could otherwise end its field and forge the rest of
# the line, or another line.
_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _clf_str(value: bytes) -> bytes:
    """``value`` for a quoted field of the combined format."""
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m.group(0)[0], value)


def _json_str(value: bytes) -> bytes:
    """``value`` as a JSON string (read as Latin-1, escaped as ``json.dumps`` escapes it)."""
    if _UNSAFE.search(value) is None:
        return b'"' + value + b'"'
    return json.dumps(value.decode("latin-1")).encode()


class Entry:
    """What one line says of one request (filled by the exchange as it ends)."""

    __slots__ = ("remote", "method", "url", "host", "status", "app", "service", "backend",
                 "seconds", "request_id", "sent", "headers")

    def __init__(self, remote: bytes, method: bytes, url: bytes, host: bytes, status: int,
                 app: bytes, service: bytes, backend: bytes, seconds: float, request_id: bytes,
                 sent: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.remote = remote
        self.method = method
        self.url = url
        self.host = host
        self.status = status
        self.app = app
        self.service = service
        self.backend = backend
        self.seconds = seconds
        self.request_id = request_id
        self.sent = sent  # body bytes sent to the client
        self.headers = headers  # the request's header fields (User-Agent, Referer)


class AccessLog:
    """Called with each finished request's ``Entry``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fmt: str, out: BinaryIO | None = None) -> None:
        self.loop = loop
        self.out = out if out is not None else sys.stdout.buffer
        self.line = self._json if fmt == "json" else self._combined
        self._buf: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._second = -1
        self._iso = b""  # 2026-11-26T18:00:00, for this second
        self._tz = b""  # +0000
        self._clf = b""  # 26/Nov/2026:18:00:00 +0000

    def __call__(self, e: Entry) -> None:
        line = self.line(e)
        if self._size + len(line) > PIPE_BUF and self._buf:
            self._write()
        self._buf.append(line)
        self._size += len(line)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._turn_end)

    def _turn_end(self) -> None:
        self._scheduled = False
        self._write()

    def _write(self) -> None:
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            self.out.write(data)
            self.out.flush()
        except (OSError, ValueError):
            pass  # stdout closed: the log is lost, the requests are not

    def flush(self) -> None:
        """Write what is buffered now (at shutdown)."""
        if self._buf:
            self._write()

    def _stamps(self) -> int:
        """The millisecond within the current second, whose stamps are made once."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            t = time.localtime(second)
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", t).encode()
            self._tz = time.strftime("%z", t).encode()
            self._clf = time.strftime("%d/%b/%Y:%H:%M:%S %z", t).encode()
        return int((now - second) * 1000)

    def _json(self, e: Entry) -> bytes:
        ms = self._stamps()
        return b'{"time": "%b.%03d%b", "remote": "%b", "method": %b, "uri": %b, "host": %b, ' \
               b'"status": %d, "app": "%b", "service": "%b", "backend": "%b", ' \
               b'"duration_ms": %b, "bytes": %d, "request_id": "%b"}\n' % (
                   self._iso, ms, self._tz, e.remote, _json_str(e.method), _json_str(e.url),
                   _json_str(e.host), e.status, e.app, e.service, e.backend,
                   b"%.3f" % (e.seconds * 1000), e.sent, e.request_id)

    def _combined(self, e: Entry) -> bytes:
        """nginx's and Apache's combined format, then the request time in seconds with
        microseconds (nginx's ``$request_time``, finer)."""
        self._stamps()
        ua = ref = b"-"
        for name, value in e.headers:
            lname = name.lower()
            if lname == b"user-agent":
                ua = value
            elif lname == b"referer":
                ref = value
        return b'%b - - [%b] "%b %b HTTP/1.1" %d %b "%b" "%b" %.6f\n' % (
            e.remote, self._clf, _clf_str(e.method), _clf_str(e.url), e.status,
            b"%d" % e.sent if e.sent else b"-", _clf_str(ref), _clf_str(ua), e.seconds)
