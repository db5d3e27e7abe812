"""A router hands itself over to its successor: listening sockets, state store and idle client
connections, over a Unix socket (docs/upgrade.md has the protocol, what goes when, and the
failure cases).

Every router listens for a successor on its *handoff socket* (``handoff.sock`` in the state
directory unless ``handoff.socket`` names another path; mode 0600, and a peer of another uid is
refused whatever the file's mode). ``router serve --takeover`` connects there. The messages are
JSON objects, one ``SOCK_SEQPACKET`` datagram each, with descriptors attached where they carry
sockets (``router.process.ipc.Channel``):

====================  ==========================================================================
successor → old       old → successor
====================  ==========================================================================
``hello``             ``listeners`` + the listening sockets (data plane, admin, handoff), or
                      ``refused`` with the reason
``release``           ``released``: the old router answered its admin requests in flight, stopped
                      its providers, ramps and release checks and let go of the store (the file
                      store's lock, the etcd leases)
``serving``           ``handing-over``: the old router accepts no more connections; then
                      ``connections`` + descriptors as its connections turn idle, and ``done``
``abort`` (any time)  ``abort`` (any time before ``handing-over``)
====================  ==========================================================================

Either side that sees the other go away, refuse or time out before the end undoes its part: the
old router takes its store back and accepts again, and serves on; a successor that loses its
predecessor after it has the listening sockets carries on alone.

:class:`HandoffServer` is the old router's side, :class:`Takeover` the successor's;
:class:`StateLock` is the file store's lock, which makes a takeover the only way to replace a
router that writes a state file.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import time
from typing import Any, Awaitable, Callable, Protocol

from .. import version
from .ipc import Channel, ChannelClosed, Courier, close_fds, peer_credentials

log = logging.getLogger("router")

# The protocol's version: a successor speaking another is refused (and says so). Messages may
# gain fields; a change of meaning is a new version.
PROTOCOL = 1
# The handoff socket's name in the state directory.
SOCKET_NAME = "handoff.sock"
# A successor says hello at once after connecting.
HELLO_TIMEOUT = 5.0
# Each of the successor's start steps (reading the state, starting its workers: as
# supervisor.START_TIMEOUT) and the old router's release of its store (admin requests in flight
# answered: a state change waits at most timeouts.worker for the workers).
STEP_TIMEOUT = 30.0
# The successor waits this long for the old router's lock on the state file, once released.
LOCK_WAIT = 10.0
# A Unix socket's path is at most 107 bytes on Linux (sun_path).
MAX_PATH = 107


class TakeoverError(Exception):
    """A takeover that cannot go on; the message says why (and is logged by both sides)."""


class NoPredecessor(TakeoverError):
    """Nobody listens at the handoff socket: there is no router to take over from."""


class StateLock:
    """The file store's lock: one router at a time serves a state file (``<file>.lock``, an
    ``flock`` held from start to exit). A router hands it to its successor with the store; a
    second router started on the same file without ``--takeover`` exits naming the holder."""

    def __init__(self, state_path: str) -> None:
        self.path = state_path + ".lock"
        self.state_path = state_path
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> None:
        """Take it now, or ``TakeoverError`` naming the router that holds it."""
        if self._fd >= 0:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise TakeoverError(f"{self.path}: cannot open the state lock: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TakeoverError(f"{self.state_path} is in use by another router (pid {holder}); "
                                "`router serve --takeover` replaces a running router") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    async def wait(self, timeout: float) -> None:
        """Take it as soon as it is free, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.acquire()
                return
            except TakeoverError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.02)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # the flock goes with the last descriptor
            self._fd = -1


def bind_handoff(path: str) -> socket.socket:
    """The handoff socket, listening at ``path`` (mode 0600). A file left there by a router that
    is gone is replaced; a router that still answers there means ``TakeoverError``."""
    if len(os.fsencode(path)) > MAX_PATH:
        raise TakeoverError(f"handoff socket {path}: longer than {MAX_PATH} bytes (a Unix "
                            "socket's limit); set handoff.socket to a shorter path")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            sock.bind(path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody listens: left by a router that is gone
                sock.bind(path)
            else:
                raise TakeoverError(f"handoff socket {path}: another router listens there; "
                                    "`router serve --takeover` replaces it") from None
            finally:
                probe.close()
        os.chmod(path, 0o600)
        sock.listen(4)
    except OSError as e:
        sock.close()
        raise TakeoverError(f"handoff socket {path}: {e.strerror or e}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class OldRouter(Protocol):
    """What a takeover asks of the router being replaced (``router.process.server.Server``)."""

    store_name: str
    stopping: bool

    def handoff_sockets(self) -> tuple[list[dict[str, Any]], list[socket.socket]]:
        """The listening sockets and, for each, ``{"role": data|admin|handoff, "address": ...}``."""

    async def release_state(self) -> int:
        """Answer the admin requests in flight, stop everything that changes the state, let go
        of the store; the generation served."""

    async def reclaim_state(self) -> None:
        """The successor failed after ``release_state``: take the store back and serve on."""

    async def stop_accepting(self) -> None:
        """No new data-plane connection from here on (the sockets stay open)."""

    async def resume_accepting(self) -> None:
        """After a handover that failed: accept and serve as before."""

    async def hand_over(self, post: Callable[[list[int]], None]) -> tuple[int, int]:
        """Every client connection to ``post`` as it turns idle; (handed over, closed)."""

    def take_back(self, fds: list[int]) -> None:
        """Connections on their way to a successor that went away: serve them here again."""

    async def handed_over(self, successor: int) -> None:
        """All done: exit (or, for an upgrade in place, run the new code)."""


class HandoffServer:
    """The old router's side: accepts successors on the handoff socket, one at a time."""

    def __init__(self, sock: socket.socket, router: OldRouter) -> None:
        self.sock = sock
        self.path = sock.getsockname()
        self.router = router
        self.busy: int | None = None  # the pid of the successor taking over now
        self.succeeded = False
        self._task: asyncio.Task[None] | None = None
        self._session: asyncio.Task[None] | None = None  # the takeover under way
        self._current: _Handover | None = None
        self._abort = asyncio.Event()

    @property
    def handing_over(self) -> bool:
        """Past the point of no return: the successor serves, the connections are leaving."""
        return self._current is not None and self._current.stopped

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def finished(self) -> None:
        """Wait for the takeover under way, if any, to end (after ``abort``: at once)."""
        while self._session is not None:
            await asyncio.wait([self._session])

    def close(self) -> None:
        """Stop accepting successors (the socket itself is the caller's)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def abort(self) -> None:
        """Call off a takeover that has not reached ``handing-over`` (this router is stopping)."""
        self._abort.set()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                log.error("handoff socket: %s", e)
                await asyncio.sleep(1)
                continue
            loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        channel = Channel(conn)
        try:
            pid, uid, _ = peer_credentials(conn)
            try:
                async with asyncio.timeout(HELLO_TIMEOUT):
                    hello, fds = await channel.recv()
                close_fds(fds)
            except (ChannelClosed, TimeoutError):
                return
            if hello.get("op") == "abort":
                log.error("a successor (pid %d) could not start: %s", pid,
                          hello.get("reason", "?"))
                return
            why = (f"a process of uid {uid} (pid {pid}): a successor must run as this "
                   f"router's user (uid {os.geteuid()})" if uid != os.geteuid()
                   else f"a second successor (pid {pid}): a takeover by pid {self.busy} is "
                        "running" if self.busy is not None
                   else f"a successor (pid {pid}): this router is stopping"
                   if self.router.stopping or self.succeeded else None)
            if why is not None:
                log.warning("handoff socket: refused %s", why)
                await _refuse(channel, why.split(": ", 1)[1])
                return
            self.busy = pid
            self._abort.clear()
            self._session = asyncio.current_task()
            self._current = _Handover(channel, pid, self.router, self._abort)
            try:
                self.succeeded = await self._current.run(hello)
            finally:
                self.busy = None
                self._session = None
                self._current = None
            if self.succeeded:
                await self.router.handed_over(pid)
        finally:
            channel.close()


class _Handover:
    """One takeover, the old router's side (the steps of the module's table)."""

    def __init__(self, channel: Channel, pid: int, router: OldRouter, abort: asyncio.Event) -> None:
        self.channel = channel
        self.pid = pid
        self.router = router
        self.abort = abort
        self.step = "start"
        self.released = False
        self.stopped = False

    async def _recv(self, timeout: float, *ops: str) -> dict[str, Any]:
        """The next message, one of ``ops``; TakeoverError for anything else, a timeout, or an
        abort from either side."""
        recv = asyncio.ensure_future(self.channel.recv())
        stop = asyncio.ensure_future(self.abort.wait())
        try:
            done, _ = await asyncio.wait([recv, stop], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not recv.done():
                recv.cancel()
        if stop in done or self.abort.is_set():
            if recv in done and recv.exception() is None:
                close_fds(recv.result()[1])
            await _send_quietly(self.channel, {"op": "abort", "reason": "the old router is stopping"})
            raise TakeoverError("called off: this router is stopping")
        if recv in done:
            msg, fds = recv.result()
            close_fds(fds)
            if msg.get("op") == "abort":
                raise TakeoverError(f"it gave up: {msg.get('reason', '?')}")
            if msg.get("op") not in ops:
                raise TakeoverError(f"protocol error: {msg.get('op')!r} where {'/'.join(ops)} "
                                    "was expected")
            return msg
        # It holds the sockets, maybe the store: not for long. (Pid 0: in a PID namespace this
        # one cannot see; it then has to go by itself.)
        if self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise TakeoverError(f"no answer within {timeout:g} s at step {self.step}: killed it")

    async def run(self, hello: dict[str, Any]) -> bool:
        """True once the successor serves everything; False if the takeover failed (this router
        then serves on, as before)."""
        router = self.router
        try:
            if hello.get("op") != "hello":
                raise TakeoverError(f"protocol error: {hello.get('op')!r} where hello was expected")
            theirs = hello.get("protocol")
            if theirs != PROTOCOL:
                raise _Refusal(f"it speaks handoff protocol {theirs}, this router {PROTOCOL} "
                               f"(router {version()})")
            if hello.get("store") != router.store_name:
                raise _Refusal(f"its routing state is in {hello.get('store')}, this router's in "
                               f"{router.store_name}: a takeover keeps the state where it is")
            log.info("takeover by pid %d (router %s) begins", self.pid, hello.get("version", "?"))
            info, socks = router.handoff_sockets()
            await self.channel.send({"op": "listeners", "protocol": PROTOCOL, "version": version(),
                                     "pid": os.getpid(), "sockets": info},
                                    [s.fileno() for s in socks])
            self.step = "start"
            await self._recv(STEP_TIMEOUT, "release")
            self.step = "store"
            generation = await router.release_state()  # undone by itself if it fails
            self.released = True
            await self.channel.send({"op": "released", "generation": generation})
            await self._recv(STEP_TIMEOUT, "serving")
            self.step = "connections"
            self.stopped = True
            await router.stop_accepting()
            await self.channel.send({"op": "handing-over"})
            handed, closed = await self._connections()
            await self.channel.send({"op": "done", "handed": handed, "closed": closed})
            log.info("takeover by pid %d done: %d connection%s handed over, %d closed here; "
                     "exiting", self.pid, handed, "" if handed == 1 else "s", closed)
            return True
        except _Refusal as e:
            log.error("takeover by pid %d refused: %s", self.pid, e)
            await _refuse(self.channel, str(e))
        except (TakeoverError, ChannelClosed) as e:
            why = "it went away" if isinstance(e, ChannelClosed) else str(e)
            log.error("takeover by pid %d failed at step %s: %s; this router serves on",
                      self.pid, self.step, why)
            # Said before the close: a successor that only saw the close would take this router
            # for gone and carry on alone.
            await _send_quietly(self.channel, {"op": "abort", "reason": f"old router: {why}"})
        except Exception as e:
            log.exception("takeover by pid %d failed at step %s; this router serves on",
                          self.pid, self.step)
            await _send_quietly(self.channel, {"op": "abort", "reason": f"old router: {e!r}"})
        if self.stopped:
            await router.resume_accepting()
        if self.released:
            await router.reclaim_state()
        return False

    async def _connections(self) -> tuple[int, int]:
        """Hand over every connection as it turns idle, watching the successor meanwhile: if it
        goes away, what is still on its way comes back here (``take_back``)."""
        router = self.router
        courier = Courier(self.channel, "connections", router.take_back)
        hand = asyncio.ensure_future(router.hand_over(courier.post))
        watch = asyncio.ensure_future(self.channel.recv())
        try:
            await asyncio.wait([hand, watch], return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                hand.cancel()
                await asyncio.gather(hand, return_exceptions=True)
                msg, fds = watch.result()  # ChannelClosed if it went away
                close_fds(fds)
                raise TakeoverError(f"it gave up while taking the connections: "
                                    f"{msg.get('reason', msg.get('op'))}")
            handed, closed = hand.result()
            await courier.flush()
            return handed, closed
        finally:
            if not watch.done():
                watch.cancel()


class _Refusal(TakeoverError):
    """Refused before anything was handed over."""


async def _refuse(channel: Channel, reason: str) -> None:
    """Say no, then wait (briefly) for the other end to hang up: a Unix socket closed with a
    message still unread would reset the connection before the refusal is read."""
    await _send_quietly(channel, {"op": "refused", "reason": reason})
    try:
        async with asyncio.timeout(1.0):
            while True:
                _, fds = await channel.recv()
                close_fds(fds)
    except (ChannelClosed, TimeoutError):
        pass


async def _send_quietly(channel: Channel, msg: dict[str, Any]) -> None:
    try:
        await asyncio.wait_for(channel.send(msg), 1.0)
    except (ChannelClosed, OSError, TimeoutError):
        pass


class Takeover:
    """The successor's side of a takeover (``router serve --takeover``): the steps of the
    module's table, each a method that the starting router calls in turn."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.channel: Channel | None = None
        self.pid = 0  # the old router's, as it says (in its own PID namespace)
        self.version = "?"
        self.sockets: list[tuple[dict[str, Any], socket.socket]] = []
        self.gone = False  # the old router went away before the end: carry on alone

    async def connect(self, store: str) -> None:
        """Say hello; receive the listening sockets. TakeoverError if refused or unreachable."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.path)
        except OSError as e:
            sock.close()
            kind = NoPredecessor if e.errno in (errno.ENOENT, errno.ECONNREFUSED) else TakeoverError
            raise kind(f"no router to take over at {self.path}: {e.strerror or e}") from None
        # The peer's credentials are those of the process that made the listening socket: the
        # first router of a line of takeovers, same user. The old router's pid is what it says.
        pid, uid, _ = peer_credentials(sock)
        self.channel = Channel(sock)
        if uid != os.geteuid():
            self.close()
            raise TakeoverError(f"{self.path}: served by uid {uid} (pid {pid}), not this user")
        await self.channel.send({"op": "hello", "protocol": PROTOCOL, "version": version(),
                                 "pid": os.getpid(), "store": store})
        got = await self._recv(HELLO_TIMEOUT, "listeners")
        assert got is not None  # no sockets yet: a closed channel raised
        msg, fds = got
        self.pid = int(msg.get("pid", 0))
        self.version = str(msg.get("version", "?"))
        info = msg.get("sockets", [])
        if len(info) != len(fds):
            close_fds(fds)
            raise TakeoverError("protocol error: the sockets do not match their description")
        self.sockets = [(i, socket.socket(fileno=fd)) for i, fd in zip(info, fds)]
        log.info("taking over from pid %d (router %s): %d listening sockets received",
                 self.pid, self.version, len(fds))

    def role(self, name: str) -> list[socket.socket]:
        return [s for i, s in self.sockets if i.get("role") == name]

    async def release(self) -> int:
        """Ask for the store; the generation the old router served (-1: it went away, and with
        it its hold on the store)."""
        if await self._send({"op": "release"}):
            got = await self._recv(STEP_TIMEOUT, "released")
            if got is not None:
                return int(got[0].get("generation", 0))
        log.warning("the old router (pid %d) went away before it released the state store; "
                    "carrying on alone", self.pid)
        return -1

    async def serving(self) -> None:
        """Tell it this router serves; once it returns the old one accepts no more."""
        if not await self._send({"op": "serving"}) or await self._recv(
                STEP_TIMEOUT, "handing-over") is None:
            log.warning("the old router (pid %d) went away during the takeover; carrying on "
                        "alone", self.pid)

    async def connections(self, adopt: Callable[[list[int]], Awaitable[Any]],
                          within: float) -> None:
        """Serve every connection the old router hands over (``adopt``), until ``done`` (the
        old router's ``timeouts.grace`` is over by ``within`` seconds)."""
        handed = 0
        deadline = time.monotonic() + within
        while True:
            try:
                got = await self._recv(max(0.0, deadline - time.monotonic()), "connections",
                                       "done")
            except TakeoverError as e:
                log.error("taking over from pid %d: %s", self.pid, e)
                break
            if got is None:
                log.warning("the old router (pid %d) went away while handing over its "
                            "connections (%d taken)", self.pid, handed)
                break
            msg, fds = got
            if msg["op"] == "done":
                log.info("took over from pid %d: %d connection%s handed over, %s closed by it",
                         self.pid, handed, "" if handed == 1 else "s", msg.get("closed", "?"))
                break
            handed += len(fds)
            await adopt(fds)
        self.close()

    async def abort(self, reason: str) -> None:
        if self.channel is not None and not self.gone:
            await _send_quietly(self.channel, {"op": "abort", "reason": reason})
        self.close()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    async def _send(self, msg: dict[str, Any]) -> bool:
        assert self.channel is not None
        if self.gone:
            return False
        try:
            await self.channel.send(msg)
            return True
        except ChannelClosed:
            self.gone = True
            return False

    async def _recv(self, timeout: float | None,
                    *ops: str) -> tuple[dict[str, Any], list[int]] | None:
        """The next message, one of ``ops``; None once the old router went away after it sent
        the sockets (``gone``: the caller carries on alone). A refusal, an abort, a timeout or
        anything else is a TakeoverError."""
        assert self.channel is not None
        try:
            async with asyncio.timeout(timeout):
                msg, fds = await self.channel.recv()
        except ChannelClosed:
            if not self.sockets:
                raise TakeoverError(f"the router at {self.path} closed the handoff "
                                    "connection") from None
            self.gone = True
            return None
        except TimeoutError:
            raise TakeoverError(f"the old router (pid {self.pid or '?'}) did not answer within "
                                f"{timeout:g} s") from None
        op = msg.get("op")
        if op in ("refused", "abort"):
            close_fds(fds)
            what = "refused" if op == "refused" else "called off"
            raise TakeoverError(f"the router at {self.path} {what} the takeover: "
                                f"{msg.get('reason', '?')}")
        if op not in ops:
            close_fds(fds)
            raise TakeoverError(f"protocol error: {op!r} where {'/'.join(ops)} was expected")
        return msg, fds


async def report_failure(path: str, reason: str) -> None:
    """A successor that cannot start (a bad configuration, say) tells the router it was to
    replace, so that both logs say why; best effort."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, path), 1.0)
        await _send_quietly(Channel(sock), {"op": "abort", "pid": os.getpid(), "reason": reason})
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()
