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
from typing import Any, Callable, Coroutine

from router.client import ClientConnection
from router.config import config_from_dict
from router.context import ProxyContext
from router.sticky import TokenCodec
from router.table import TableBuilder
from router.upstream import UpstreamConnection, UpstreamPool


class MemoryTransport:
    """Stands in for a socket: keeps what is written (``keep=False``: only counts it), records
    closes, aborts and pauses, never blocks. ``protocol``'s ``connection_lost`` follows a close
    or an abort on the loop's next turn, as with a real transport."""

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
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.sent += len(data)
        if self.keep:
            self.data += data

    def writelines(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

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


class MemoryBackend:
    """A backend address: its connections (in memory) and what it does when one is opened."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.refuse = False  # connecting fails (as a refused TCP connect)
        self.connections: list[UpstreamConnection] = []

    def received(self, i: int = -1) -> bytes:
        """What its i-th connection (the last by default) has received."""
        t = self.connections[i].transport
        assert isinstance(t, MemoryTransport)
        return bytes(t.data)


class MemoryPool(UpstreamPool):
    """An upstream pool whose new connections are in memory (or refused)."""

    def __init__(self, loop: FakeLoop, backends: dict[str, MemoryBackend]) -> None:
        super().__init__(loop, 3.0)  # type: ignore[arg-type]
        self.backends = backends
        self.fake_loop = loop

    async def connect(self, key: str, host: str, port: int) -> UpstreamConnection:
        be = self.backends.setdefault(key, MemoryBackend(key))
        if be.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        up = UpstreamConnection(self, key)
        t = MemoryTransport(self.fake_loop)
        t.protocol = up
        up.connection_made(t)  # type: ignore[arg-type]
        be.connections.append(up)
        return up


class Wire:
    """A data plane from a configuration (the ``apps`` section and any other settings), its
    clients and its backends, all in memory."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.loop = FakeLoop()
        self.config = config_from_dict(cfg)
        self.codec = TokenCodec(b"k" * 32, self.config.sticky.max_idle, self.config.sticky.max_life)
        self.backends: dict[str, MemoryBackend] = {}
        self.pool = MemoryPool(self.loop, self.backends)
        self.builder = TableBuilder(self.codec)
        self.ctx = ProxyContext(self.config, self.builder.build(self.config.apps, 1), self.pool,
                                self.codec, self.loop)  # type: ignore[arg-type]

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
        if not self.transport.closed:
            self.conn.data_received(data)
        self.wire.loop.run()

    def received(self) -> bytes:
        return bytes(self.transport.data)

    def take(self) -> bytes:
        return self.transport.take()

    @property
    def closed(self) -> bool:
        return self.transport.closed
