"""The access log (config ``access_log``): one line per request on stdout, JSON or combined.

Lines are made as bytes, without the logging module, and written in batches: one write per
turn of the event loop, of whole lines and at most ``PIPE_BUF`` bytes, so that the lines of
several worker processes sharing one stdout pipe never interleave. The timestamp is formatted
once per second.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import sys
import time
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from .proxy import Exchange

# A write to a pipe of at most this many bytes is never interleaved with another writer's.
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
# What a JSON string may hold as it is: printable ASCII but the quote and the backslash.
_JSON_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _json_str(value: bytes) -> bytes:
    """``value`` as a JSON string (read as Latin-1, escaped as ``json.dumps`` escapes it)."""
    if _JSON_UNSAFE.search(value) is None:
        return b'"' + value + b'"'
    return json.dumps(value.decode("latin-1")).encode()


class AccessLog:
    """Called with each finished exchange and its status."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fmt: str, out: BinaryIO | None = None) -> None:
        self.loop = loop
        self.out = out if out is not None else sys.stdout.buffer
        self.line = self._json if fmt == "json" else self._combined
        self._buf: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._second = -1
        self._iso = b""  # 2026-11-26T18:00:00+0000, for this second
        self._clf = b""  # 26/Nov/2026:18:00:00 +0000

    def __call__(self, ex: "Exchange", status: int) -> None:
        line = self.line(ex, status)
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

    def _stamps(self) -> None:
        now = int(time.time())
        if now != self._second:
            self._second = now
            t = time.localtime(now)
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", t).encode()
            self._clf = time.strftime("%d/%b/%Y:%H:%M:%S %z", t).encode()

    def _json(self, ex: "Exchange", status: int) -> bytes:
        self._stamps()
        conn = ex.conn
        app = ex.app
        svc = ex.service
        be = ex.backend
        return b'{"time": "%b", "remote": "%b", "method": %b, "uri": %b, "host": %b, ' \
               b'"status": %d, "app": "%b", "service": "%b", "backend": "%b", ' \
               b'"duration_ms": %b, "request_id": "%b"}\n' % (
                   self._iso, conn.peer.encode(), _json_str(ex.method), _json_str(ex.url),
                   _json_str(ex.host if ex.host else b""), status,
                   app.name_b if app is not None else b"",
                   svc.name.encode() if svc is not None else b"",
                   be.key.encode() if be is not None else b"",
                   repr(round((conn.loop.time() - ex.started) * 1000, 3)).encode(),
                   ex.request_id if ex.request_id else b"")

    def _combined(self, ex: "Exchange", status: int) -> bytes:
        self._stamps()
        ua = ref = b"-"
        for name, value in ex.headers:
            lname = name.lower()
            if lname == b"user-agent":
                ua = value
            elif lname == b"referer":
                ref = value
        return b'%b - - [%b] "%b %b HTTP/1.1" %d - "%b" "%b"\n' % (
            ex.conn.peer.encode(), self._clf, ex.method, ex.url, status, ref, ua)
