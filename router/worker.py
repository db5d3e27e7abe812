"""A worker process of `router serve --workers N` (docs/workers.md).

The master starts it with one end of a socketpair and the data plane's listening sockets, which
the master made and every worker shares. The worker builds its data plane from the master's
first message, then answers the master's calls in order:

``("sync", config, apps, generation, health, previews)``
                                        everything, just before it starts serving
``("serve",)``                          start accepting on the shared sockets
``("state", apps, generation, health, previews)``
                                        swap in a new table; the admin call that caused it
                                        answers once every worker has replied (or was replaced)
``("health", health)``                  backends' states as the master decided them
``("config", config)``                  a reload's settings
``("stats",)``                          the counters, summed by the master for /metrics
``("ping",)``                           the master's watchdog: a worker that does not answer in
                                        time is killed and replaced
``("stop", grace)``                     graceful stop, then exit

and tells the master what its passive health sees (``notes``): a failure, a success after
failures or from an unproven backend, a stalled backend. When its own requests fail
``passive_health.failures`` times in a row on a backend it takes it out of its own rotation at
once, ahead of the master's decision, which then reaches every worker.

When the master goes away (the socket closes) the worker stops the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from typing import Any

import uvloop

from . import ipc
from .dataplane import DataPlane
from .health import BackendKey

log = logging.getLogger("router")


class MasterReporter:
    """Passive-health observations, sent to the master once per loop turn."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.plane: DataPlane | None = None
        self._notes: list[tuple[Any, ...]] = []

    def failure(self, key: BackendKey, run: int) -> None:
        plane = self.plane
        ejected = (plane is not None and 0 < plane.passive.failures <= run
                   and plane.eject(key))
        self._note(("failure", key, run, ejected))

    def success(self, key: BackendKey) -> None:
        self._note(("success", key))

    def stalled(self, key: BackendKey, reason: str) -> None:
        ejected = self.plane is not None and self.plane.eject(key)
        self._note(("stalled", key, reason, ejected))

    def _note(self, note: tuple[Any, ...]) -> None:
        self._notes.append(note)
        if len(self._notes) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        notes, self._notes = self._notes, []
        if not self.writer.is_closing():
            ipc.post(self.writer, ("notes", notes))


async def run(fd: int, listen_fds: list[int]) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    kind, config, secret, apps, generation, health, previews = await ipc.recv(reader)
    assert kind == "init", kind
    reporter = MasterReporter(writer)
    plane = DataPlane(config, secret, apps, generation, reporter, previews)
    reporter.plane = plane
    plane.rebuild(health)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the master decides
    ipc.post(writer, ("ready",))
    grace = config.timeouts.grace
    stop_id = None
    recv_task = None
    while True:
        recv_task = asyncio.ensure_future(ipc.recv(reader))
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait([recv_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if stop.is_set():
            break
        try:
            msg = recv_task.result()
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("worker: master is gone; stopping")
            break
        _, call_id, kind, *args = msg
        reply: tuple[Any, ...] = ()
        if kind == "state":
            plane.apply(*args)
        elif kind == "health":
            plane.rebuild(args[0])
        elif kind == "config":
            plane.reconfigure(args[0])
            grace = args[0].timeouts.grace
        elif kind == "sync":
            plane.reconfigure(args[0])
            grace = args[0].timeouts.grace
            plane.apply(*args[1:])
        elif kind == "serve":
            for lfd in listen_fds:
                await plane.serve(socket.socket(fileno=lfd))
        elif kind == "stats":
            reply = (plane.stats(),)
        elif kind == "stop":
            grace, stop_id = args[0], call_id
            break
        ipc.post(writer, ("reply", call_id, *reply))
    if recv_task is not None and not recv_task.done():
        recv_task.cancel()
    await plane.drain(grace)
    try:
        if stop_id is not None:
            await ipc.send(writer, ("reply", stop_id))
    except (ConnectionError, RuntimeError):
        pass
    writer.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(int(sys.argv[1]), [int(a) for a in sys.argv[2:]]))


if __name__ == "__main__":
    main()
