"""Messages between processes of the router.

Two kinds of channel:

* **Calls** between the master and its worker processes: length-prefixed pickles over a stream
  socketpair. Both ends are our own code, started together; nothing else speaks on it. The
  master *calls* (``("call", id, kind, *args)``), the worker *replies* (``("reply", id,
  *result)``) in the order it received the calls; the worker also sends *notes* (``("notes",
  [note, ...])``: what its passive health saw, a handover that ended) that need no answer.
  Every call has a deadline on the master's side (docs/workers.md).
* **A** :class:`Channel`: small JSON messages with open file descriptors attached (SCM_RIGHTS),
  one datagram each, over a Unix ``SOCK_SEQPACKET`` socket. Listening sockets and client
  connections travel this way: between a router and its successor (``router.process.handoff``,
  docs/upgrade.md) and between a master and its workers. JSON rather than pickle: the two ends
  of a handoff may run different versions of the router.
"""

from __future__ import annotations

import array
import asyncio
import errno
import json
import os
import pickle
import socket
import struct
from typing import Any, Callable, Sequence

_LEN = struct.Struct(">I")

# One message: a JSON object of a few hundred bytes (a batch of connections carries only their
# descriptors). A datagram larger than this is refused as a protocol error.
MAX_MESSAGE = 64 * 1024
# Descriptors per message: the kernel takes up to 253 (SCM_MAX_FD); batches stay well below.
MAX_FDS = 64
_UCRED = struct.Struct("3i")


def post(writer: asyncio.StreamWriter, msg: Any) -> None:
    """Queue ``msg`` for sending without waiting (the transport buffers it)."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)) + data)


async def send(writer: asyncio.StreamWriter, msg: Any) -> None:
    post(writer, msg)
    await writer.drain()


async def recv(reader: asyncio.StreamReader) -> Any:
    """The next message; raises asyncio.IncompleteReadError when the other end is gone."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(n))


class ChannelClosed(ConnectionError):
    """The other end of a channel is gone (or sent something that is not a message)."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket (SO_PEERCRED:
    taken by the kernel when it connected, not claimed by the peer)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """JSON messages with file descriptors over a connected ``SOCK_SEQPACKET`` Unix socket.

    ``send`` passes the descriptors on (the kernel holds a reference while they are in flight);
    the caller still owns its own and closes them when it no longer needs them. ``recv`` returns
    the message and the new descriptors it brought, which are the caller's (opened close-on-exec).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._waiting: set[asyncio.Future[None]] = set()
        self.closed = False

    @classmethod
    def pair(cls) -> "tuple[Channel, socket.socket]":
        """A channel and the other end's socket (for a child process to inherit)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(mine), theirs

    def fileno(self) -> int:
        return self.sock.fileno()

    async def send(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Send one message; ChannelClosed if the other end is gone."""
        data = json.dumps(msg, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE or len(fds) > MAX_FDS:
            raise ValueError(f"message too large ({len(data)} bytes, {len(fds)} descriptors)")
        async with self._send_lock:
            while True:
                if self.closed:
                    raise ChannelClosed("channel closed")
                try:
                    if fds:
                        socket.send_fds(self.sock, [data], list(fds))
                    else:
                        self.sock.send(data)
                    return
                except (BlockingIOError, InterruptedError):
                    await self._ready(self._loop.add_writer, self._loop.remove_writer)
                except OSError as e:
                    if e.errno == errno.ETOOMANYREFS:  # too many descriptors in flight: wait
                        await asyncio.sleep(0.01)
                        continue
                    raise ChannelClosed(f"channel: {e.strerror or e}") from None

    async def recv(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and its descriptors; ChannelClosed when the other end is gone."""
        async with self._recv_lock:
            while True:
                if self.closed:
                    raise ChannelClosed("channel closed")
                try:
                    data, ancdata, flags, _ = self.sock.recvmsg(
                        MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
                    break
                except (BlockingIOError, InterruptedError):
                    await self._ready(self._loop.add_reader, self._loop.remove_reader)
                except OSError as e:
                    raise ChannelClosed(f"channel: {e.strerror or e}") from None
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if not data and not fds:
            raise ChannelClosed("the other end closed the channel")
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            close_fds(fds)
            raise ChannelClosed("a message or its descriptors were cut short")
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError as e:
            close_fds(fds)
            raise ChannelClosed(f"not a message: {e}") from None
        return msg, fds

    async def _ready(self, add: Any, remove: Any) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()
        add(fd, lambda: fut.done() or fut.set_result(None))
        self._waiting.add(fut)
        try:
            await fut
        finally:
            self._waiting.discard(fut)
            if not self.closed:
                remove(fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        for fut in self._waiting:
            if not fut.done():
                fut.set_exception(ChannelClosed("channel closed"))
        self.sock.close()


class Courier:
    """Passes descriptors over a channel in the background, in batches of up to ``MAX_FDS``, each
    as the message ``{"op": op, "count": n}``. ``post`` never waits (the data plane calls it
    between two events); a descriptor is closed here once passed on, or handed to ``fallback``
    (which then owns it) if the channel is gone."""

    def __init__(self, channel: Channel, op: str, fallback: Callable[[list[int]], None]) -> None:
        self.channel = channel
        self.op = op
        self.fallback = fallback
        self.sent = 0
        self._queue: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def post(self, fds: list[int]) -> None:
        self._queue.extend(fds)
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_FDS], self._queue[MAX_FDS:]
            try:
                await self.channel.send({"op": self.op, "count": len(batch)}, batch)
            except (ChannelClosed, OSError):
                self.fallback(batch)
                continue
            close_fds(batch)
            self.sent += len(batch)

    async def flush(self) -> None:
        """Wait until everything posted so far is passed on (or given to the fallback)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
