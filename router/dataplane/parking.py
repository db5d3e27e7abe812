"""Idle client connections parked outside uvloop.

A keep-alive connection that has rested (``router.dataplane.client.REST_AFTER``: idle, nothing
read or left to write, its parser and idle timer already let go) still holds uvloop's transport
and libuv's handle, about 1.4 KiB, and its ``ClientConnection``. Parked, it holds its socket
(a descriptor: the kernel's), one registration in this data plane's ``select.epoll`` and a
``ParkedConnection`` of five fields (docs/performance.md, "Memory per idle connection").

- The loop watches the one epoll with one ``add_reader``. A parked socket that turns readable
  leaves the epoll: if the client sent bytes they wait in the kernel, and the socket is served
  again as a new connection (``loop.connect_accepted_socket``, what a successor router does with
  the connections it takes over): its request is read and answered as on a fresh connection,
  pipelined requests too. One the client closed (a FIN, a reset) is closed.
- A parked connection stays in the context's set of connections: it counts toward
  ``limits.max_connections``, is evicted first at the cap (idle the longest), and drains, stops
  and hands over as an idle connection does (``ClientBase``).
- Its idle timeout is checked by the data plane's sweep (every half second): a connection is
  parked only while that timeout is further than ``client.TIMER_AHEAD`` away.
- The sweep after the one that parked a connection makes its record again (``Parking.pack``):
  made while the other connections were open, it would keep a pool of their freed objects.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import socket
import sys
import termios
from typing import cast

from .client import ClientConnection
from .context import ClientBase, ProxyContext

# What a parked socket is watched for: bytes, or the client's end (EPOLLRDHUP: a FIN even when
# nothing else comes).
WATCH = select.EPOLLIN | select.EPOLLRDHUP
# The most readiness events taken from the epoll in one call of the loop.
EVENTS_AT_ONCE = 256


class ParkedConnection(ClientBase):
    """A parked client connection: its descriptor, when it became idle and when its idle
    timeout closes it (loop time), and whether it has had a request yet."""

    __slots__ = ("parking", "fd", "idle_at", "deadline", "served")

    def __init__(self, parking: Parking, fd: int, idle_at: float, deadline: float,
                 served: bool) -> None:
        self.parking = parking
        self.fd = fd
        self.idle_at = idle_at
        self.deadline = deadline
        self.served = served

    def idle_since(self) -> float:
        return self.idle_at if self.fd >= 0 else -1.0

    def rest(self, now: float) -> None:
        if self.fd >= 0 and now >= self.deadline:
            self.parking.close(self)  # timeouts.client_idle

    def stuck_since(self) -> float:
        return -1.0

    def shutdown(self) -> bool:
        self.parking.close(self)  # a FIN: this is the socket's only descriptor
        return False

    def abort(self) -> None:
        self.parking.close(self)

    def broken(self, err: Exception) -> None:
        self.parking.close(self)

    def unread(self) -> int:
        if self.fd < 0:
            return 0
        try:
            return int.from_bytes(fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"),
                                  sys.byteorder)
        except OSError:
            return 0

    def detach(self) -> int:
        fd = self.fd
        if fd >= 0:
            self.parking.release(self)
        return fd


class Parking:
    """The parked connections of one data plane and the epoll that watches them."""

    __slots__ = ("ctx", "poll", "by_fd", "adopting", "parked", "fresh")

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.poll: select.epoll | None = None  # made, and watched, at the first park
        # The parked connection of each descriptor (a list: 8 bytes a descriptor).
        self.by_fd: list[ParkedConnection | None] = []
        # Connections being served again, until their protocol has them.
        self.adopting: set[asyncio.Task[None]] = set()
        self.parked = 0  # connections parked, counted up until the data plane's sweep reads it
        self.fresh: list[ParkedConnection] = []  # parked since the last pack()

    def sweep(self, connections: set[ClientBase], now: float) -> None:
        """What the data plane's sweep does with its connections: the records of those parked
        by the last sweep are packed (``pack``), each rests (``ClientBase.rest``: a parked one's
        idle timeout), and those that can are parked."""
        self.pack()
        ctx = self.ctx
        park = ctx.handoff is None and ctx.accepting
        for conn in list(connections):
            conn.rest(now)
            if park and isinstance(conn, ClientConnection) and conn.parkable(now):
                self.park(conn)

    def park(self, conn: ClientConnection) -> None:
        idle_at = conn.idle_at
        deadline = idle_at + self.ctx.client_idle_timeout
        served = not conn.first_request
        fd = conn.detach()  # its transport closed, the connection kept open by the duplicate
        if fd < 0:
            return
        poll = self.poll
        if poll is None:
            poll = self.poll = select.epoll()
            self.ctx.loop.add_reader(poll.fileno(), self._ready)
        try:
            poll.register(fd, WATCH)
        except OSError:
            os.close(fd)
            return
        rec = ParkedConnection(self, fd, idle_at, deadline, served)
        self.parked += 1
        by_fd = self.by_fd
        if fd >= len(by_fd):
            by_fd.extend([None] * (fd + 1 - len(by_fd)))
        by_fd[fd] = rec
        self.ctx.connections.add(rec)
        self.fresh.append(rec)

    def pack(self) -> None:
        """The records parked since the last call made again, one after the other, and the
        first ones dropped. A record made at its park takes a free block of its size between
        those of the connections still open (bound methods are of the same size), and keeps the
        pool it is in from being given back once they are freed too: a burst of connections
        parked leaves one record in each of hundreds of pools. Made again half a second later
        (the transports of the connections parked are freed by then, and the next trim gives
        back the pools emptied: ``router.process.trim``), they fill the free blocks at the head
        of their size's pools, next to each other."""
        fresh = self.fresh
        if not fresh:
            return
        self.fresh = []
        by_fd = self.by_fd
        connections = self.ctx.connections
        for old in fresh:  # all made before any is dropped: not into the blocks just left
            fd = old.fd
            if fd >= 0:
                rec = ParkedConnection(self, fd, old.idle_at, old.deadline, old.served)
                by_fd[fd] = rec
                connections.add(rec)
        for old in fresh:
            if old.fd >= 0:
                connections.discard(old)
                old.fd = -1

    def release(self, rec: ParkedConnection) -> None:
        """``rec`` leaves the parking, its descriptor still open (the caller's)."""
        fd = rec.fd
        rec.fd = -1
        self.by_fd[fd] = None
        self.ctx.connections.discard(rec)
        poll = self.poll
        if poll is not None:
            try:
                poll.unregister(fd)
            except OSError:
                pass

    def close(self, rec: ParkedConnection) -> None:
        fd = rec.fd
        if fd >= 0:
            self.release(rec)
            os.close(fd)

    def _ready(self) -> None:
        """The epoll is readable: every parked socket that is leaves the parking."""
        poll = self.poll
        if poll is None:
            return
        by_fd = self.by_fd
        for fd, _ in poll.poll(0, EVENTS_AT_ONCE):
            rec = by_fd[fd] if fd < len(by_fd) else None
            if rec is None:
                continue
            self.release(rec)
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            try:
                sent = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = b"?"  # nothing after all: served again, it waits as any connection
            except OSError:
                sent = b""  # reset
            if not sent:
                sock.close()  # the client closed it
                continue
            task = self.ctx.loop.create_task(self._adopt(sock, rec.served))
            self.adopting.add(task)
            task.add_done_callback(self.adopting.discard)

    async def _adopt(self, sock: socket.socket, served: bool) -> None:
        def protocol() -> asyncio.Protocol:
            conn = ClientConnection(self.ctx)
            # A connection that has had a request may reuse an idle backend connection as it
            # did before it was parked (upstream.reuse: safe): its next one is not its first.
            conn.first_request = not served
            return cast("asyncio.Protocol", conn)

        try:
            await self.ctx.loop.connect_accepted_socket(protocol, sock=sock)
        except OSError:
            sock.close()

    def stop(self) -> None:
        """No more parking (a stop or a handover is over): the epoll closed; what is still
        parked is closed with it."""
        self.fresh = []
        for rec in list(self.by_fd):
            if rec is not None:
                self.close(rec)
        poll = self.poll
        if poll is not None:
            self.poll = None
            self.ctx.loop.remove_reader(poll.fileno())
            poll.close()
