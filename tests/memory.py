"""The data plane without sockets and without waiting: in-memory transports, a loop whose clock
the test moves, and a pool whose backend connections are in memory too.

``Wire`` puts them together: one data plane (``ProxyContext``) from a configuration, client
connections fed with bytes, backend connections that record what they receive and answer what
the test tells them. Everything runs in the test's own thread, one step at a time, so a test
asserts exact bytes in and out (uvicorn's tests/protocols pattern). The benchmark
``benchmarks/micro.py`` times one request through the same pieces.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

import h11

from router.dataplane.client import ClientConnection
from router.config import config_from_dict
from router.dataplane.context import ProxyContext
from router.dataplane.health import Health, PassiveHealth
from router.dataplane.sticky import TokenCodec
from router.dataplane.table import TableBuilder
from router.dataplane.pool import UpstreamPool
from router.dataplane.upstream import UpstreamConnection


class MemoryTransport:
    """Stands in for a socket: keeps what is written (``keep=False``: only counts it), records
    closes, aborts and pauses, never blocks. ``protocol``'s ``connection_lost`` follows a close
    or an abort on the loop's next turn, as with a real transport. What the peer sends while
    reading is paused waits (``pending``) and arrives on the loop's next turn after it resumes,
    as the kernel's buffer would keep it."""

    def __init__(self, loop: "FakeLoop | None" = None, peer: tuple[str, int] = ("127.0.0.1", 40000),
                 keep: bool = True) -> None:
        self.loop = loop
        self.peer = peer
        self.keep = keep
        self.data = bytearray()
        self.sent = 0
        self.closed = False
        self.aborted = False
        self.paused = False
        self.pending: list[bytes] = []  # sent by the peer while reading was paused
        self.buffered = 0  # what get_write_buffer_size says (a test sets it)
        self.protocol: Any = None
        self.on_write: Callable[[bytes], None] | None = None  # the peer reading what is written

    def write(self, data: bytes | memoryview) -> None:
        assert not self.closed, "write after close"
        self.sent += len(data)
        if self.keep:
            self.data += data
        if self.on_write is not None:
            self.on_write(bytes(data))

    def writelines(self, data: list[bytes | memoryview]) -> None:
        for d in data:
            self.write(d)

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.pending and self.loop is not None:
            self.loop.call_soon(self._deliver)

    def receive(self, data: bytes) -> None:
        """The peer sends ``data``: to the protocol now, or once reading resumes."""
        if self.closed:
            return
        if self.paused or self.pending:
            self.pending.append(data)
        else:
            self._read(data)

    def _deliver(self) -> None:
        while self.pending and not self.paused and not self.closed:
            self._read(self.pending.pop(0))

    def _read(self, data: bytes) -> None:
        """As uvloop reads: into the protocol's buffer (``get_buffer``), as much as it holds
        at a time, until reading pauses (the rest waits); or as bytes (``data_received``)."""
        proto = self.protocol
        if not hasattr(proto, "get_buffer"):
            proto.data_received(data)
            return
        while data and not self.paused and not self.closed:
            buf = proto.get_buffer(65536)
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            proto.buffer_updated(n)
        if data and not self.closed:
            self.pending.insert(0, data)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.loop is not None and self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)

    def take(self) -> bytes:
        """What was written since the last take."""
        out = bytes(self.data)
        self.data.clear()
        return out


class CountingTransport:
    """The cheapest stand-in for a socket: counts what is written, nothing else (so a timing
    of the data plane is not a timing of the test's transport)."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes | memoryview) -> None:
        self.sent += len(data)

    def writelines(self, data: list[bytes | memoryview]) -> None:
        self.sent += sum(map(len, data))

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class _Handle:
    __slots__ = ("_when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The parts of an event loop the data plane uses, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, _Handle]] = []
        self._ready: deque[_Handle] = deque()
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        h = _Handle(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), h))
        return h

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> _Handle:
        h = _Handle(self.now, callback, args)
        self._ready.append(h)
        return h

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` on the next turn; it must not wait on anything (the memory pool's
        connect does not)."""
        def step() -> None:
            try:
                coro.send(None)
            except StopIteration:
                return
            raise AssertionError("a coroutine waited on the fake loop")
        self.call_soon(step)

    def run(self) -> None:
        """Run what is ready, until nothing is."""
        for _ in range(100_000):
            if not self._ready:
                return
            h = self._ready.popleft()
            if not h.cancelled:
                h.callback(*h.args)
        raise AssertionError("the fake loop never became idle")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing the timers due on the way (and what they make ready)."""
        end = self.now + seconds
        self.run()
        while self._timers and self._timers[0][0] <= end:
            when, _, h = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not h.cancelled:
                h.callback(*h.args)
            self.run()
        self.now = end


@dataclass
class Request:
    """A request as a backend read it (with h11, an HTTP/1.1 implementation of its own)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False
    tunnel: bytes = b""  # bytes that followed it once the backend switched protocols

    def header(self, name: bytes) -> bytes | None:
        """The value of field ``name`` (lower case), or None."""
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


# What a backend answers to a request: the bytes (split as they are to be delivered) and
# whether it closes the connection after them. None: it does not answer (yet).
Answer = Callable[[Request], "tuple[list[bytes], bool] | None"]


class BackendConnection:
    """The backend's end of one connection: what it reads, parsed by h11 as it arrives."""

    def __init__(self, backend: "MemoryBackend", up: UpstreamConnection,
                 transport: MemoryTransport) -> None:
        self.backend = backend
        self.up = up
        self.transport = transport
        self.h11 = h11.Connection(h11.SERVER)
        self.requests: list[Request] = []
        self.error: str | None = None  # h11 refused what it read: the framing broke
        self.switched = False

    def received(self, data: bytes) -> None:
        if self.switched:
            self.requests[-1].tunnel += data
            return
        if self.error is not None:
            return
        self.h11.receive_data(data)
        self._events()

    def _events(self) -> None:
        while True:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self.error = str(e)
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                if ev is h11.PAUSED and self.h11.their_state is h11.MIGHT_SWITCH_PROTOCOL:
                    self._answer(self.requests[-1])
                return
            if isinstance(ev, h11.Request):
                self.requests.append(Request(ev.method, ev.target, list(ev.headers.raw_items())))
            elif isinstance(ev, h11.Data):
                self.requests[-1].body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                req = self.requests[-1]
                req.complete = True
                if self.h11.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
                    self._answer(req)
            elif isinstance(ev, h11.ConnectionClosed):
                return

    def _answer(self, req: Request) -> None:
        answer = self.backend.answer
        if answer is None:
            return
        plan = answer(req)
        if plan is None:
            return
        pieces, close = plan
        raw = b"".join(pieces)
        if raw.startswith(b"HTTP/1.1 101"):
            self.switched = True
            self.requests[-1].tunnel = bytes(self.h11.trailing_data[0])
        else:
            # h11 keeps its own view of the response, to read the next request after it.
            self._h11_response(raw, req)
        loop = self.transport.loop
        assert loop is not None
        for piece in pieces:
            loop.call_soon(self._deliver, piece)
        if close:
            loop.call_soon(self.transport.close)

    def _h11_response(self, raw: bytes, req: Request) -> None:
        try:
            self._h11_sync(raw, req)
        except h11.ProtocolError:
            # Not a response h11 would send (a test of a broken backend): what this connection
            # reads from now on is kept raw, not parsed.
            self.switched = True
            self.requests.append(Request(b"", b"", []))

    def _h11_sync(self, raw: bytes, req: Request) -> None:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=req.method, target=req.target,
                                headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(raw)
        while True:
            ev = client.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                break
            if isinstance(ev, h11.InformationalResponse):
                self.h11.send(ev)
            elif isinstance(ev, h11.Response):
                self.h11.send(h11.Response(status_code=ev.status_code, headers=ev.headers,
                                           reason=ev.reason))
            elif isinstance(ev, h11.Data):
                self.h11.send(ev)
            elif isinstance(ev, h11.EndOfMessage):
                self.h11.send(h11.EndOfMessage())
                break
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._events()

    def _deliver(self, data: bytes) -> None:
        if not self.transport.closed:
            self.up.data_received(data)


class MemoryBackend:
    """A backend address: its connections (in memory), what they read, how it answers."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.refuse = False  # connecting fails (as a refused TCP connect)
        self.answer: Answer | None = None  # None: the test answers by hand (Wire.reply)
        self.connections: list[UpstreamConnection] = []
        self.peers: list[BackendConnection] = []

    def received(self, i: int = -1) -> bytes:
        """What its i-th connection (the last by default) has received."""
        t = self.connections[i].transport
        assert isinstance(t, MemoryTransport)
        return bytes(t.data)

    def requests(self) -> list[Request]:
        """Every request its connections have read, connection by connection."""
        return [r for p in self.peers for r in p.requests]


class MemoryOpener:
    """Opens a pool's backend connections in memory (or refuses them, as a closed port)."""

    def __init__(self, loop: FakeLoop, backends: dict[str, MemoryBackend]) -> None:
        self.backends = backends
        self.loop = loop

    async def __call__(self, pool: UpstreamPool, key: str, host: str, port: int) -> UpstreamConnection:
        be = self.backends.setdefault(key, MemoryBackend(key))
        if be.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        up = UpstreamConnection(pool, key)
        t = MemoryTransport(self.loop)
        t.protocol = up
        up.connection_made(t)  # type: ignore[arg-type]
        be.connections.append(up)
        peer = BackendConnection(be, up, t)
        t.on_write = peer.received
        be.peers.append(peer)
        return up


class Wire:
    """A data plane from a configuration (the ``apps`` section and any other settings), its
    clients and its backends, all in memory."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.loop = FakeLoop()
        self.config = config_from_dict(cfg)
        self.codec = TokenCodec(b"k" * 32, self.config.sticky.max_idle, self.config.sticky.max_life)
        self.backends: dict[str, MemoryBackend] = {}
        self.pool = UpstreamPool(self.loop, 3.0, MemoryOpener(self.loop, self.backends))  # type: ignore[arg-type]
        self.builder = TableBuilder(self.codec)
        health = Health(lambda: None, self.config.passive_health, self.loop)  # type: ignore[arg-type]
        self.ctx = ProxyContext(self.config, self.builder.build(self.config.apps, 1), self.pool,
                                self.codec, self.loop,  # type: ignore[arg-type]
                                PassiveHealth(health, self.config.passive_health.failures))

    def backend(self, key: str) -> MemoryBackend:
        return self.backends.setdefault(key, MemoryBackend(key))

    def client(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> "Client":
        return Client(self, peer)

    def reply(self, key: str, data: bytes, i: int = -1) -> None:
        """The backend at ``key`` sends ``data`` on its i-th connection."""
        up = self.backend(key).connections[i]
        up.data_received(data)
        self.loop.run()

    def close_backend(self, key: str, i: int = -1) -> None:
        """The backend closes its i-th connection."""
        up = self.backend(key).connections[i]
        t = up.transport
        assert isinstance(t, MemoryTransport)
        t.close()
        self.loop.run()


class Client:
    """One client connection to the data plane."""

    def __init__(self, wire: Wire, peer: tuple[str, int]) -> None:
        self.wire = wire
        self.conn = ClientConnection(wire.ctx)
        self.transport = MemoryTransport(wire.loop, peer)
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.transport.receive(data)
        self.wire.loop.run()

    def eof(self) -> None:
        """The client closes its sending side (FIN)."""
        if not self.transport.closed and not self.conn.eof_received():
            self.transport.close()
        self.wire.loop.run()

    def received(self) -> bytes:
        return bytes(self.transport.data)

    def take(self) -> bytes:
        return self.transport.take()

    @property
    def closed(self) -> bool:
        return self.transport.closed
