"""The master's side of ``router serve --workers N``: the worker processes, a deadline on every
exchange with them, a watchdog that replaces one that dies or stops answering, and the counters
of the ones replaced (docs/workers.md has the design, its messages and its bounds).

Every worker serves on the listening sockets the master made and passed down, so a worker that
hangs holds no queue of its own: new connections wait in the one shared queue for a worker that
calls accept(). What a hung worker had already accepted is stranded until the watchdog kills
it: at most ``PING_INTERVAL + timeouts.worker`` after it stopped answering.
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
from .counters import Stats

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
    """The worker's pipe closed before it answered."""


class WorkerProcess:
    """The master's handle on one worker process (one slot: a replacement reuses it)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.up = False  # serving, and answering the master
        self.stats: Stats | None = None  # its counters at the last scrape
        self.killed: str | None = None  # why the master killed it
        self._pending: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self, fds: list[int], init: tuple[Any, ...],
                    on_notes: Callable[[list[Any]], None]) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.worker", str(child.fileno()), *map(str, fds),
                pass_fds=[child.fileno(), *fds])
        finally:
            child.close()
        reader, self.writer = await asyncio.open_connection(sock=parent)
        ipc.post(self.writer, init)
        reply = await asyncio.wait_for(ipc.recv(reader), START_TIMEOUT)
        if reply != ("ready",):
            raise RuntimeError(f"worker {self.index}: unexpected {reply!r}")
        self._reader = asyncio.get_running_loop().create_task(self._read(reader, on_notes))

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
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(WorkerGone(f"worker {self.index} is gone"))
            self._pending.clear()

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
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.killed = None


class Supervisor:
    """N worker processes serving the shared listening sockets ``socks``.

    ``init()`` is the first message of a new worker, ``sync()`` the current (config, apps,
    generation, health) it gets just before it starts serving; ``on_notes`` receives what the
    workers' passive health sees; ``timeout()`` is the deadline of an exchange
    (``timeouts.worker``).
    """

    def __init__(self, count: int, socks: list[socket.socket], init: Callable[[], tuple[Any, ...]],
                 sync: Callable[[], tuple[Any, ...]], on_notes: Callable[[list[Any]], None],
                 timeout: Callable[[], float]) -> None:
        self.workers = [WorkerProcess(i) for i in range(count)]
        self.retired = Stats()  # the counters of workers that are gone
        self.restarts: Counter[str] = Counter()  # by reason: "exited", "hung"
        self._socks = socks
        self._init = init
        self._sync = sync
        self._on_notes = on_notes
        self._timeout = timeout
        # Held while workers' tables change (a state, health, a reload's settings) and while a
        # new worker catches up, so that no worker starts serving with a table older than the
        # one the others just acknowledged.
        self._lock = asyncio.Lock()
        self._slots: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def up(self) -> int:
        return sum(1 for w in self.workers if w.up)

    async def start(self) -> None:
        """Start every worker; raises if one cannot start (the router then exits 1)."""
        loop = asyncio.get_running_loop()
        first = [loop.create_future() for _ in self.workers]
        self._slots = [loop.create_task(self._slot(w, f)) for w, f in zip(self.workers, first)]
        await asyncio.gather(*first)

    async def _slot(self, w: WorkerProcess, first: asyncio.Future[None]) -> None:
        """Keep one worker running: start it, watch it, replace it."""
        failed = 0
        while not self._closing:
            try:
                await self._start(w)
            except Exception as e:
                await self._kill(w, f"did not start: {e!r}")
                await self._reap(w)
                if not first.done():
                    first.set_exception(RuntimeError(f"worker {w.index} did not start: {e!r}"))
                    return
                failed += 1
                log.error("worker %d did not start: %r", w.index, e)
                await asyncio.sleep(min(RESTART_BACKOFF[0] * 2 ** (failed - 1), RESTART_BACKOFF[1]))
                continue
            failed = 0
            if not first.done():
                first.set_result(None)
            why = await self._watch(w)
            if self._closing:
                return
            self.restarts["hung" if w.killed else "exited"] += 1
            self._retire(w)
            log.error("worker %d %s; starting a new one with the current state", w.index, why)

    async def _start(self, w: WorkerProcess) -> None:
        await w.spawn([s.fileno() for s in self._socks], self._init(), self._on_notes)
        async with self._lock:
            await w.call(START_TIMEOUT, "sync", *self._sync())
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
            if exited.done() or self._closing:
                break
            timeout = self._timeout()
            try:
                await w.call(timeout, "ping")
            except (TimeoutError, WorkerGone):
                if not exited.done():
                    await self._kill(w, f"did not answer a ping within {timeout:g} s")
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

    # -- talking to every worker ------------------------------------------------------------
    async def broadcast(self, kind: str, *args: Any) -> None:
        """Make every serving worker take a call (a new state, health, settings); one that does
        not answer within ``timeouts.worker`` is killed, and its replacement starts from the
        current state. Returns once each has answered or is dead."""
        async with self._lock:
            timeout = self._timeout()
            targets = [w for w in self.workers if w.up]
            replies = await asyncio.gather(*(w.call(timeout, kind, *args) for w in targets),
                                           return_exceptions=True)
            late = [w for w, r in zip(targets, replies) if isinstance(r, BaseException)]
            await asyncio.gather(*(self._kill(w, f"did not take a new {kind} within {timeout:g} s")
                                   for w in late))

    async def stats(self) -> Stats:
        """Every counter summed: the retired workers', and each worker's latest (a worker that
        does not answer within STATS_TIMEOUT counts with its previous answer)."""
        targets = [w for w in self.workers if w.up]
        timeout = min(STATS_TIMEOUT, self._timeout())
        replies = await asyncio.gather(*(w.call(timeout, "stats") for w in targets),
                                       return_exceptions=True)
        for w, r in zip(targets, replies):
            if not isinstance(r, BaseException):
                w.stats = r[0]
        total = Stats()
        total.add(self.retired)
        for w in self.workers:
            if w.stats is not None:
                total.add(w.stats)
        return total

    def keep(self, services: set[tuple[str, str]], backends: set[tuple[str, str, str]]) -> None:
        """The retired counters of services and backends no longer routed are dropped with them."""
        self.retired.keep(services, backends)

    async def stop(self, grace: float) -> None:
        """Graceful stop of every worker; those that do not stop in time are killed."""
        self._closing = True
        for s in self._socks:
            s.close()  # the workers' copies are the last: the port closes with the last of them
        await asyncio.gather(*(self._stop(w, grace) for w in self.workers))
        for t in self._slots:
            t.cancel()

    async def _stop(self, w: WorkerProcess, grace: float) -> None:
        proc = w.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await w.call(grace + 5, "stop", grace)
        except (TimeoutError, WorkerGone) as e:
            log.warning("worker %d did not stop cleanly: %r", w.index, e)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 5)
        except TimeoutError:
            await self._kill(w, "did not exit after its graceful stop")
        w.close()
