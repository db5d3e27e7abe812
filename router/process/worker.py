"""A worker process of `router serve --workers N` (docs/workers.md).

The master starts it with one end of a socketpair for calls, one end of a channel for client
connections (``router.process.ipc.Channel``) and the data plane's listening sockets, which the master
made and every worker shares. The worker builds its data plane from the master's first message,
then answers the master's calls in order:

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
``("handover", grace)``                 a successor takes over (docs/upgrade.md): stop accepting
                                        and give every connection to the master as it turns
                                        idle, then ``handed`` (on the channel, after them)
``("resume",)``                         the successor failed: serve as before
``("stop", delay, grace)``              graceful stop (the data plane's ``drain``), then exit

and tells the master what its passive health sees (``notes``): a failure, a success after
failures or from an unproven backend, a stalled backend. When its own requests fail
``passive_health.failures`` times in a row on a backend it takes it out of its own rotation at
once, ahead of the master's decision, which then reaches every worker. On its channel it takes
the connections a predecessor handed to this router (``adopt``).

Signals are the master's: a worker ignores SIGHUP, SIGINT, SIGTERM and SIGUSR2, so that a
signal sent to the whole process group (a closed terminal, Ctrl-C, ``pkill``, systemd's
``KillMode=control-group``) acts once, through the master. When the master goes away (the
socket closes) the worker stops gracefully.
"""

from __future__ import annotations

import signal

# The master's signals (see above): set first, before the imports, in the process the master
# starts (a signal to the group may come while it starts), not in one that imports this module.
SIGNALS_OF_THE_MASTER = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
if __name__ == "__main__":
    for _sig in SIGNALS_OF_THE_MASTER:
        signal.signal(_sig, signal.SIG_IGN)

import asyncio  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import uvloop  # noqa: E402

from .. import eventlog  # noqa: E402
from . import ipc  # noqa: E402
from .dataplane import DataPlane  # noqa: E402
from ..dataplane.health import BackendKey  # noqa: E402
from .ipc import Channel, ChannelClosed, Courier, close_fds  # noqa: E402

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


async def _adopt(channel: Channel, plane: DataPlane) -> None:
    """Connections handed to this router, that the master gives this worker."""
    try:
        while True:
            msg, fds = await channel.recv()
            if msg.get("op") == "adopt":
                await plane.adopt(fds)
            else:
                close_fds(fds)
    except ChannelClosed:
        pass


async def _hand_over(plane: DataPlane, channel: Channel, grace: float) -> None:
    """Every connection to the master as it turns idle; a batch the master can no longer take
    comes back to this data plane."""
    loop = asyncio.get_running_loop()

    def take_back(fds: list[int]) -> None:
        loop.create_task(plane.adopt(fds))

    courier = Courier(channel, "connections", take_back)
    handed, closed = await plane.hand_over(courier.post, grace)
    await courier.flush()
    # On the channel, after the last connection: the master then has them all.
    await channel.send({"op": "handed", "handed": handed, "closed": closed})


async def run(fd: int, channel_fd: int, listen_fds: list[int]) -> None:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    channel = Channel(socket.socket(fileno=channel_fd))
    listeners = [socket.socket(fileno=lfd) for lfd in listen_fds]
    kind, config, secret, apps, generation, health, previews = await ipc.recv(reader)
    assert kind == "init", kind
    reporter = MasterReporter(writer)
    plane = DataPlane(config, secret, apps, generation, reporter, previews)
    reporter.plane = plane
    plane.rebuild(health)
    loop = asyncio.get_running_loop()
    adopting = loop.create_task(_adopt(channel, plane))
    handing: asyncio.Task[None] | None = None
    ipc.post(writer, ("ready",))
    delay, grace = 0.0, config.timeouts.grace
    stop_id = None
    while True:
        try:
            msg = await ipc.recv(reader)
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
            await plane.serve(listeners)
        elif kind == "stats":
            reply = (plane.stats(),)
        elif kind == "handover":
            handing = loop.create_task(_hand_over(plane, channel, args[0]))
        elif kind == "resume":
            if handing is not None:
                handing.cancel()
                await asyncio.gather(handing, return_exceptions=True)
                handing = None
                plane.resume()
                await plane.serve(listeners)
        elif kind == "stop":
            delay, grace, stop_id = args[0], args[1], call_id
            break
        ipc.post(writer, ("reply", call_id, *reply))
    if handing is not None:
        await asyncio.gather(handing, return_exceptions=True)
    await plane.drain(delay, grace)
    adopting.cancel()
    channel.close()
    try:
        if stop_id is not None:
            await ipc.send(writer, ("reply", stop_id))
    except (ConnectionError, RuntimeError):
        pass
    writer.close()


def main() -> None:
    eventlog.setup(worker=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(int(sys.argv[1]), int(sys.argv[2]), [int(a) for a in sys.argv[3:]]))


if __name__ == "__main__":
    main()
