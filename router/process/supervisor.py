"""The master's side of ``router serve --workers N``: the worker processes, a deadline on every
exchange with them, a watchdog that replaces one that dies or stops answering, the counters of
the ones replaced, and the client connections handed to them or by them in a takeover
(docs/workers.md has the design, its messages and its bounds; docs/upgrade.md the takeover).

Every worker serves on the listening sockets the master made and passed down, so a worker that
hangs holds no queue of its own: new connections wait in the one shared queue for a worker that
calls accept(). What a hung worker had already accepted is stranded until the watchdog kills
it: at most ``PING_INTERVAL + timeouts.worker`` after it stopped answering.

A :class:`WorkerProcess` is one process, from its start to its exit; a replacement is a new
one in the same slot. Whatever the master does to a worker (a call, a kill) it does to one
process, so a process that exits is never mistaken for one that hangs, and the kill meant for a
process can never reach its replacement.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sys
from collections import Counter
from typing import Any, Callable

from . import ipc
from ..config import Config
from ..dataplane.counters import Stats
from ..dataplane.health import BackendKey, Health
from .ipc import Channel, ChannelClosed, close_fds
from ..control.state import State

log = logging.getLogger("router")

# The watchdog pings every worker this often; one that does not answer within timeouts.worker
# is killed. A worker that stops answering is thus replaced within PING_INTERVAL +
# timeouts.worker (+ the start of its replacement).
PING_INTERVAL = 1.0
# A new worker: the interpreter starting and importing the data plane (a fraction of a second
# on an idle machine; much more on a loaded one).
START_TIMEOUT = 30.0
# After SIGKILL a process exits at once; this only bounds a kernel that is stuck itself.
KILL_WAIT = 5.0
# /metrics asks every worker for its counters and answers with what came back within this
# (a hung worker's last counters are used): well inside Prometheus' default 10 s scrape timeout.
STATS_TIMEOUT = 1.0
# Between two failed starts of a worker: doubling from the first to the last.
RESTART_BACKOFF = (0.25, 5.0)


class WorkerGone(Exception):
    """The worker's pipe closed before it answered: it exited (or is exiting)."""


class _NotNeeded(Exception):
    """A worker started while the router began to stop or hand over: it is not to serve."""


class WorkerProcess:
    """The master's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.channel: Channel | None = None  # client connections, to it or from it
        self.up = False  # serving, and answering the master
        self.stats: Stats | None = None  # its counters at the last scrape
        self.killed: str | None = None  # why the master killed it
        self.handed: asyncio.Future[tuple[int, int]] | None = None  # its handover, once asked
        self._pending: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._conns: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self, fds: list[int], init: tuple[Any, ...],
                    on_notes: Callable[[list[Any]], None],
                    on_connections: Callable[[list[int]], None]) -> None:
        parent, child = socket.socketpair()
        channel, their_channel = Channel.pair()
        self.channel = channel
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.process.worker", str(child.fileno()),
                str(their_channel.fileno()), *map(str, fds),
                pass_fds=[child.fileno(), their_channel.fileno(), *fds])
        finally:
            child.close()
            their_channel.close()
        reader, self.writer = await asyncio.open_connection(sock=parent)
        ipc.post(self.writer, init)
        reply = await asyncio.wait_for(ipc.recv(reader), START_TIMEOUT)
        if reply != ("ready",):
            raise RuntimeError(f"worker {self.index}: unexpected {reply!r}")
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read(reader, on_notes))
        self._conns = loop.create_task(self._read_connections(on_connections))

    async def _read(self, reader: asyncio.StreamReader, on_notes: Callable[[list[Any]], None]) -> None:
        try:
            while True:
                msg = await ipc.recv(reader)
                if msg[0] == "reply":
                    fut = self._pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(tuple(msg[2:]))
                elif msg[0] == "notes":
                    on_notes(msg[1])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            gone = WorkerGone(f"worker {self.index} (pid {self.pid}) is gone")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(gone)
            self._pending.clear()

    async def _read_connections(self, on_connections: Callable[[list[int]], None]) -> None:
        """Connections the worker gives up in a handover, for the master to pass on; then
        ``handed``, on the same channel, so that it comes after the last of them."""
        assert self.channel is not None
        try:
            while True:
                msg, fds = await self.channel.recv()
                if msg.get("op") == "connections":
                    on_connections(fds)
                    continue
                close_fds(fds)
                if msg.get("op") == "handed" and self.handed is not None and not self.handed.done():
                    self.handed.set_result((int(msg["handed"]), int(msg["closed"])))
        except ChannelClosed:
            if self.handed is not None and not self.handed.done():
                self.handed.set_exception(WorkerGone(f"worker {self.index} is gone"))

    async def call(self, timeout: float, kind: str, *args: Any) -> tuple[Any, ...]:
        """Send a call and wait for its reply: TimeoutError after ``timeout`` seconds,
        WorkerGone if the worker's pipe closes first."""
        if self.writer is None or self.writer.is_closing() or self._reader is None or self._reader.done():
            raise WorkerGone(f"worker {self.index} is gone")
        call_id = next(self._ids)
        fut: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        try:
            ipc.post(self.writer, ("call", call_id, kind, *args))
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(call_id, None)

    def close(self) -> None:
        """Forget the process (it has exited)."""
        self.up = False
        for task in (self._reader, self._conns):
            if task is not None:
                task.cancel()
        self._reader = self._conns = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class Supervisor:
    """N worker processes serving the shared listening sockets ``socks``.

    ``config()`` and ``state()`` are the configuration and the routing state now: what a new
    worker starts from (with the sticky ``secret``), and ``timeouts.worker``, the deadline of
    an exchange. ``health`` is the master's: the workers' passive health reports to it, and
    every worker is told the states it decides. ``on_connections`` receives the connections
    workers give up in a handover (their descriptors, now the receiver's).
    """

    def __init__(self, count: int, socks: list[socket.socket], secret: bytes,
                 config: Callable[[], Config], state: Callable[[], State], health: Health,
                 on_connections: Callable[[list[int]], None] = close_fds) -> None:
        self.slots: list[WorkerProcess | None] = [None] * count
        self.retired = Stats()  # the counters of workers that are gone
        self.restarts: Counter[str] = Counter()  # by reason: "exited", "hung"
        self.on_connections = on_connections
        self._socks = socks
        self._secret = secret
        self._config = config
        self._state = state
        self._health = health
        self._health_task: asyncio.Task[None] | None = None
        self._health_dirty = False
        self._stopped = False
        # Held while workers' tables change (a state, health, a reload's settings) and while a
        # new worker catches up, so that no worker starts serving with a table older than the
        # one the others just acknowledged.
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None] | None] = [None] * count
        self._serving: list[asyncio.Future[None]] = []
        self._go = asyncio.Event()  # workers may serve (a successor's wait for the store)
        self._closing = False  # stopping, or handing over: no worker is replaced
        self._next = 0  # the worker that gets the next connection handed to this router
        self._handing: list[WorkerProcess] = []  # the workers handing over their connections

    @property
    def workers(self) -> list[WorkerProcess]:
        """The current process of every slot."""
        return [w for w in self.slots if w is not None]

    @property
    def up(self) -> int:
        return sum(1 for w in self.slots if w is not None and w.up)

    async def start(self, hold: bool = False) -> None:
        """Start every worker; raises if one cannot start (the router then exits 1). ``hold``:
        each is started but does not serve until :meth:`serve` (a successor holds its workers
        until the state store is its own)."""
        loop = asyncio.get_running_loop()
        ready = [loop.create_future() for _ in self.slots]
        self._serving = [loop.create_future() for _ in self.slots]
        for i, f in enumerate(ready):
            self._tasks[i] = loop.create_task(self._slot(i, f))
        await asyncio.gather(*ready)
        if not hold:
            await self.serve()

    async def serve(self) -> None:
        """Let the started workers serve; returns once every one does (raises if one fails)."""
        self._go.set()
        await asyncio.gather(*self._serving)

    async def _slot(self, index: int, ready: asyncio.Future[None]) -> None:
        """Keep one worker running: start it, watch it, replace it."""
        failed = 0
        serving = self._serving[index]
        while not self._closing:
            w = WorkerProcess(index)
            self.slots[index] = w
            try:
                await self._start(w, ready)
            except _NotNeeded:
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.kill()
                await self._reap(w)
                for first in (ready, serving):
                    if not first.done():
                        first.set_exception(RuntimeError(f"worker {index}: the router stopped"))
                return
            except Exception as e:
                await self._kill(w, f"did not start: {e!r}")
                await self._reap(w)
                for first in (ready, serving):
                    if not first.done():
                        first.set_exception(RuntimeError(f"worker {index} did not start: {e!r}"))
                        return
                failed += 1
                log.error("worker %d did not start: %r", index, e)
                await asyncio.sleep(min(RESTART_BACKOFF[0] * 2 ** (failed - 1), RESTART_BACKOFF[1]))
                continue
            failed = 0
            if not serving.done():
                serving.set_result(None)
            why = await self._watch(w)
            self._retire(w)
            if self._closing:
                return
            self.restarts["hung" if w.killed else "exited"] += 1
            log.error("worker %d %s; starting a new one with the current state", index, why)

    async def _start(self, w: WorkerProcess, ready: asyncio.Future[None]) -> None:
        await w.spawn([s.fileno() for s in self._socks],
                      ("init", self._config(), self._secret, *self._routing()), self._on_notes,
                      self.on_connections)
        if not ready.done():
            ready.set_result(None)
        await self._go.wait()
        async with self._lock:
            if self._closing:
                raise _NotNeeded()
            # What it needs just before it serves: the current everything.
            await w.call(START_TIMEOUT, "sync", self._config(), *self._routing())
            await w.call(self._timeout(), "serve")
            w.up = True
        log.info("worker %d serving (pid %d)", w.index, w.pid)

    async def _watch(self, w: WorkerProcess) -> str:
        """Ping until the worker exits; one that does not answer in time is killed. Why it
        ended."""
        assert w.proc is not None
        exited = asyncio.ensure_future(w.proc.wait())
        while not exited.done():
            await asyncio.wait([exited], timeout=PING_INTERVAL)
            if exited.done():
                break
            if self._closing:
                continue  # stopping or handing over: it answers those calls, not pings
            timeout = self._timeout()
            try:
                await w.call(timeout, "ping")
            except TimeoutError:
                if not exited.done():
                    await self._kill(w, f"did not answer a ping within {timeout:g} s")
            except WorkerGone:
                # It is exiting: its pipe closed first. Not a hang; only one that keeps its
                # process after closing its pipe is killed.
                await asyncio.wait([exited], timeout=KILL_WAIT)
                if not exited.done():
                    await self._kill(w, "closed its pipe to the master but did not exit")
        code = await exited
        w.up = False
        return w.killed or f"exited with status {code}"

    async def _kill(self, w: WorkerProcess, why: str) -> None:
        """SIGKILL (a hung process does not handle SIGTERM), and wait for the exit: then nothing
        it had accepted is served with an old state any more."""
        w.up = False
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        if w.killed is None:
            w.killed = why
            log.error("worker %d (pid %d) %s: killing it", w.index, proc.pid, why)
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT)
        except TimeoutError:
            log.error("worker %d (pid %d) did not exit %g s after SIGKILL", w.index, proc.pid,
                      KILL_WAIT)

    async def _reap(self, w: WorkerProcess) -> None:
        if w.proc is not None and w.proc.returncode is None:
            await w.proc.wait()
        w.close()

    def _retire(self, w: WorkerProcess) -> None:
        """Its counters go on counting in the totals: no counter goes backwards (Prometheus
        would read a drop as a reset)."""
        if w.stats is not None:
            self.retired.add(w.stats, inflight=False)
            w.stats = None
        w.close()

    # -- talking to every worker (router.process.worker lists the messages) ------------------
    def _timeout(self) -> float:
        return self._config().timeouts.worker

    def _routing(self) -> tuple[Any, ...]:
        """What a worker serves: the current routing state and backends' states."""
        state = self._state()
        return state.apps, state.generation, self._health.states(), state.previews()

    async def apply(self, state: State, health: dict[BackendKey, str]) -> None:
        """Every worker serves ``state`` with the backends' states ``health``, or is replaced."""
        self.keep({(a.name, s.name) for a in state.apps for s in a.services}, set(health))
        await self.broadcast("state", state.apps, state.generation, health, state.previews())

    async def reconfigure(self, config: Config) -> None:
        """Every worker takes a reload's settings, or is replaced."""
        await self.broadcast("config", config)

    def _on_notes(self, notes: list[Any]) -> None:
        """What a worker's passive health saw; a worker that took a backend out of its own
        rotation ahead of a decision that did not come is told the decided states again."""
        health = self._health
        resync = False
        for note in notes:
            kind, key = note[0], note[1]
            if kind == "failure":
                resync |= note[3] and not health.failure(key, note[2])
            elif kind == "success":
                health.success(key)
            elif kind == "stalled":
                resync |= note[3] and not health.stalled(key, note[2])
        if resync:
            self.push_health()

    def push_health(self) -> None:
        """Tell the workers the backends' states: one broadcast at a time, with the newest."""
        self._health_dirty = True
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self._send_health())

    async def _send_health(self) -> None:
        while self._health_dirty and not self._stopped:
            self._health_dirty = False
            await self.broadcast("health", self._health.states())

    async def broadcast(self, kind: str, *args: Any) -> None:
        """Make every serving worker take a call (a new state, health, settings); one that does
        not answer within ``timeouts.worker`` is killed, and its replacement starts from the
        current state. One that exits meanwhile is replaced the same way, as exited. Returns
        once each has answered or is dead."""
        async with self._lock:
            timeout = self._timeout()
            targets = [w for w in self.slots if w is not None and w.up]
            replies = await asyncio.gather(*(w.call(timeout, kind, *args) for w in targets),
                                           return_exceptions=True)
            late = [w for w, r in zip(targets, replies) if isinstance(r, TimeoutError)]
            await asyncio.gather(*(self._kill(w, f"did not take a new {kind} within {timeout:g} s")
                                   for w in late))
            gone = [w.proc.wait() for w, r in zip(targets, replies)
                    if isinstance(r, WorkerGone) and w.proc is not None]
            if gone:
                # Dead to the change: it must be gone before the change is called live.
                await asyncio.wait([asyncio.ensure_future(g) for g in gone], timeout=KILL_WAIT)

    async def stats(self) -> Stats:
        """Every counter summed: the retired workers', and each worker's latest (a worker that
        does not answer within STATS_TIMEOUT counts with its previous answer)."""
        targets = [w for w in self.slots if w is not None and w.up]
        timeout = min(STATS_TIMEOUT, self._timeout())
        replies = await asyncio.gather(*(w.call(timeout, "stats") for w in targets),
                                       return_exceptions=True)
        for w, r in zip(targets, replies):
            if not isinstance(r, BaseException):
                w.stats = r[0]
        total = Stats()
        total.add(self.retired)
        for w in self.slots:
            if w is not None and w.stats is not None:
                total.add(w.stats)
        return total

    def keep(self, services: set[tuple[str, str]], backends: set[tuple[str, str, str]]) -> None:
        """The retired counters of services and backends no longer routed are dropped with them."""
        self.retired.keep(services, backends)

    # -- takeovers (docs/upgrade.md) ----------------------------------------------------------
    async def give(self, fds: list[int]) -> None:
        """Connections handed to this router: to the serving workers in turn."""
        serving = [w for w in self.slots if w is not None and w.up and w.channel is not None]
        for attempt in range(len(serving)):
            w = serving[(self._next + attempt) % len(serving)]
            assert w.channel is not None
            try:
                await w.channel.send({"op": "adopt", "count": len(fds)}, fds)
            except ChannelClosed:
                continue
            self._next = (self._next + attempt + 1) % len(serving)
            close_fds(fds)
            return
        log.error("%d connections handed over with no worker to serve them: closed", len(fds))
        close_fds(fds)

    async def begin_handover(self, grace: float) -> None:
        """Every worker stops accepting and starts giving up its connections as they turn idle
        (to ``on_connections``); none is replaced from here on. Returns once each has stopped
        accepting (or is dead)."""
        self._closing = True
        loop = asyncio.get_running_loop()
        self._handing = [w for w in self.slots if w is not None and w.up]
        for w in self._handing:
            w.handed = loop.create_future()
        replies = await asyncio.gather(*(w.call(self._timeout(), "handover", grace)
                                         for w in self._handing), return_exceptions=True)
        for w, r in zip(self._handing, replies):
            if isinstance(r, TimeoutError):
                await self._kill(w, f"did not start its handover within {self._timeout():g} s")

    async def end_handover(self) -> tuple[int, int]:
        """Once every worker has given up all its connections: (handed over, closed), summed."""
        handed = closed = 0
        for w in self._handing:
            assert w.handed is not None
            try:
                h, c = await w.handed
            except WorkerGone:
                log.error("worker %d exited during its handover", w.index)
                continue
            handed += h
            closed += c
        self._handing = []
        return handed, closed

    async def resume(self) -> None:
        """After a handover that failed: every worker serves again, and one that exited
        meanwhile is replaced."""
        self._closing = False
        targets = [w for w in self.slots if w is not None and w.up]
        await asyncio.gather(*(w.call(self._timeout(), "resume") for w in targets),
                             return_exceptions=True)
        loop = asyncio.get_running_loop()
        for i, task in enumerate(self._tasks):
            if task is None or task.done():
                done = loop.create_future()
                done.set_result(None)
                self._tasks[i] = loop.create_task(self._slot(i, done))

    async def stop(self, delay: float, grace: float) -> None:
        """Graceful stop of every worker (``drain_delay``, then ``grace``: the data plane's
        ``drain``); those that do not stop in time are killed."""
        self._closing = self._stopped = True
        await asyncio.gather(*(self._stop(w, delay, grace) for w in self.workers))
        for t in self._tasks:
            if t is not None:
                t.cancel()

    async def _stop(self, w: WorkerProcess, delay: float, grace: float) -> None:
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await w.call(delay + grace + 5, "stop", delay, grace)
        except (TimeoutError, WorkerGone) as e:
            log.warning("worker %d did not stop cleanly: %r", w.index, e)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 5)
        except TimeoutError:
            await self._kill(w, "did not exit after its graceful stop")
        w.close()
