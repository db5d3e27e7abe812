"""Backend reads into the pool's buffer: bodies go to the client as views of it, and a buffer
a client's transport still holds is never read into again. Through the real protocols, in
memory (tests/memory.py reads as uvloop does, into get_buffer's buffer)."""

from __future__ import annotations

from router.dataplane.client import ClientConnection
from router.dataplane.upstream import BUFFERED_BODY
from tests.memory import MemoryTransport, Wire

BODY = BUFFERED_BODY * 2
REQUEST = b"GET /x HTTP/1.1\r\nHost: shop.test\r\n\r\n"


def _of_buffer(data: bytes | memoryview) -> bool:
    """A view of a read buffer (views of a read's bytes are immutable: anyone may keep them)."""
    return isinstance(data, memoryview) and isinstance(data.obj, bytearray)


class HoldingTransport(MemoryTransport):
    """A client socket that, once ``hold`` is set, takes nothing: it keeps what it is given
    (views as they are, as uvloop does with what it cannot write at once) and says so."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: list[bytes | memoryview] = []

    def write(self, data: bytes | memoryview) -> None:
        if self.hold:
            self.held.append(data)
            self.buffered += len(data)
        else:
            super().write(data)


def _response(fill: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY + fill * BODY


def _setup() -> tuple[Wire, ClientConnection, HoldingTransport]:
    wire = Wire({"apps": {"shop": {"session_sticky": False, "routes": ["shop.test"],
                                   "services": {"web": {"backends": ["127.0.0.1:1"]}}}}})
    client = ClientConnection(wire.ctx)
    sock = HoldingTransport()
    client.connection_made(sock)  # type: ignore[arg-type]
    return wire, client, sock


def _exchange(wire: Wire, client: ClientConnection, response: bytes, pieces: int = 1) -> None:
    """One request, and ``response`` from the backend in ``pieces`` reads."""
    client.data_received(REQUEST)
    wire.loop.run()
    backend = wire.backend("127.0.0.1:1").connections[-1].transport
    assert isinstance(backend, MemoryTransport)
    step = -(-len(response) // pieces)
    for i in range(0, len(response), step):
        backend.receive(response[i:i + step])
    wire.loop.run()


def test_long_bodies_are_read_into_one_buffer_and_passed_on_as_views():
    wire, client, sock = _setup()
    _exchange(wire, client, _response(b"a"))  # read as bytes; from now on, into the buffer
    up = wire.backend("127.0.0.1:1").connections[-1]
    backend = up.transport
    assert isinstance(backend, MemoryTransport)
    assert backend.protocol is not up
    buf = wire.pool.read_buf
    for fill in (b"b", b"c"):
        _exchange(wire, client, _response(fill), pieces=3)
    assert wire.pool.read_buf is buf  # nothing kept it: the same buffer, every read
    out = sock.take()
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3
    bodies = [out.split(b"\r\n\r\n")[i + 1][:BODY] for i in range(3)]
    assert bodies == [fill * BODY for fill in (b"a", b"b", b"c")]
    # A short body: bytes again.
    _exchange(wire, client, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert backend.protocol is up
    assert sock.take().endswith(b"\r\n\r\nok")
    assert len(wire.backend("127.0.0.1:1").connections) == 1


def test_a_buffer_the_client_transport_holds_is_not_read_into_again():
    wire, client, sock = _setup()
    _exchange(wire, client, _response(b"a"))
    sock.take()
    buf = wire.pool.read_buf
    sock.hold = True  # the client reads nothing from now on
    _exchange(wire, client, _response(b"b"))
    assert any(_of_buffer(d) for d in sock.held)  # a view of the buffer...
    assert wire.pool.read_buf is not buf  # ...which the pool no longer reads into
    first = b"".join(bytes(d) for d in sock.held)
    # The next response reaches a client with bytes unsent: it is given copies.
    before = len(sock.held)
    _exchange(wire, client, _response(b"c"), pieces=2)
    later = sock.held[before:]
    assert later and not any(_of_buffer(d) for d in later)
    # What the client holds of the second response is intact, read after the third.
    assert b"".join(bytes(d) for d in sock.held[:before]) == first
    assert first.endswith(b"\r\n\r\n" + b"b" * BODY)
    assert b"".join(bytes(d) for d in later).endswith(b"c" * BODY)
