"""The access log's lines and how they are written, through the real protocols (in memory)."""

from __future__ import annotations

import asyncio
import json
import re

import uvloop

from router.dataplane.accesslog import PIPE_BUF, AccessLog, Entry, _json_str
from router.dataplane.client import ClientConnection
from router.config import config_from_dict
from router.dataplane.context import ProxyContext
from router.dataplane.health import Health, PassiveHealth
from router.dataplane.sticky import TokenCodec
from router.dataplane.table import TableBuilder
from router.dataplane.pool import UpstreamPool
from router.dataplane.upstream import UpstreamConnection
from tests.memory import MemoryTransport


def test_json_str_escapes_as_json_dumps():
    for raw in (b"/plain?x=1", b'/q"uote', b"/back\\slash", b"/caf\xe9", b"/tab\there", b""):
        assert _json_str(raw) == json.dumps(raw.decode("latin-1")).encode(), raw
        assert json.loads(_json_str(raw)) == raw.decode("latin-1")


class _Out:
    """Where the log goes: every write kept apart."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None: ...


def _run(fmt: str, n: int, url: bytes = b"/x?y=1") -> tuple[list[bytes], int]:
    """n requests through the protocols; the log's writes, and how many came before the
    event loop's turn ended."""
    loop = uvloop.new_event_loop()
    try:
        cfg = config_from_dict({"upstream": {"reuse": "always"},  # every request: the pooled one
                                "apps": {"shop": {"session_sticky": False, "routes": ["shop.test"],
                                                  "services": {"web": {"backends": ["127.0.0.1:1"]}}}}})
        codec = TokenCodec(b"k" * 32, 1800, 28800)
        pool = UpstreamPool(loop, 3.0)
        passive = PassiveHealth(Health(lambda: None, cfg.passive_health, loop), cfg.passive_health.failures)
        ctx = ProxyContext(cfg, TableBuilder(codec).build(cfg.apps, 1), pool, codec, loop, passive)
        out = _Out()
        ctx.log_access = AccessLog(loop, fmt, out)
        up = UpstreamConnection(pool, "127.0.0.1:1")
        up.connection_made(MemoryTransport())
        pool.put(up, 0.0)
        client = ClientConnection(ctx)
        client.connection_made(MemoryTransport())
        request = (b"GET " + url + b" HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: t/1\r\n"
                   b"X-Request-ID: req-%d\r\n\r\n")
        for i in range(n):
            client.data_received(request % i)
            if client.active is not None:  # not refused: the backend answers
                client.active.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        before = len(out.writes)
        loop.run_until_complete(asyncio.sleep(0))
        return out.writes, before
    finally:
        loop.close()


def test_json_lines_batched_by_loop_turn_never_over_pipe_buf():
    writes, before = _run("json", 100)
    # Written as the buffer would pass PIPE_BUF, and the rest at the end of the loop's turn.
    assert 0 < before < len(writes)
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in writes)
    entries = [json.loads(line) for w in writes for line in w.splitlines()]
    assert [e["request_id"] for e in entries] == [f"req-{i}" for i in range(100)]
    e = entries[0]
    assert (e["remote"], e["method"], e["uri"], e["host"], e["status"], e["app"], e["service"],
            e["backend"]) == ("127.0.0.1", "GET", "/x?y=1", "shop.test", 200, "shop", "web",
                              "127.0.0.1:1")
    assert isinstance(e["duration_ms"], float)
    # RFC 3339 to the millisecond, with the offset: it lines up with the event log and the
    # backends' logs.
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}", e["time"]), e["time"]


def test_json_line_of_an_uri_that_needs_escaping():
    writes, before = _run("json", 1, b'/a"b')
    assert before == 0 and len(writes) == 1  # one line: written when the turn ends
    (entry,) = [json.loads(line) for line in writes[0].splitlines()]
    assert entry["uri"] == '/a"b'


def test_combined_lines():
    writes, before = _run("combined", 3)
    assert before == 0 and len(writes) == 1
    lines = writes[0].splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(b"127.0.0.1 - - [")
    # The body's size in bytes, then the request time in seconds (microseconds).
    assert re.search(rb'"GET /x\?y=1 HTTP/1.1" 200 2 "-" "t/1" [0-9]+\.[0-9]{6}$', lines[0]), lines[0]


def test_combined_fields_escape_quotes_and_control_bytes_as_nginx():
    """A request line or a User-Agent cannot end its field or the line (log injection)."""
    log = AccessLog(None, "combined", _Out())  # type: ignore[arg-type]
    e = Entry(b"10.0.0.1", b"GET", b'/a"b\\c', b"shop.test", 200, b"shop", b"web", b"b:80",
              0.5, b"id", 0, [(b"User-Agent", b'x" "y\n10.0.0.9 - - [forged]'),
                              (b"Referer", b"caf\xe9\x7f")])
    line = log.line(e)
    assert line.endswith(b'"GET /a\\x22b\\x5Cc HTTP/1.1" 200 - "caf\\xE9\\x7F" '
                         b'"x\\x22 \\x22y\\x0A10.0.0.9 - - [forged]" 0.500000\n')
    assert line.count(b"\n") == 1 and line.count(b'"') == 6


def test_a_refused_request_is_logged_with_an_empty_request_id():
    writes, _ = _run("json", 1, b"/bad\\path")  # refused (400) before any backend is chosen
    (entry,) = [json.loads(line) for w in writes for line in w.splitlines()]
    assert (entry["status"], entry["request_id"], entry["backend"]) == (400, "", "")
