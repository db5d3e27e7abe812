"""A worker process of `router serve --workers N`.

The master starts it with one end of a socketpair and sends it the configuration, the
sticky secret, the routing state and the backends' health. The worker serves the data plane
on the shared port (SO_REUSEPORT) and answers the master's messages:

``("state", apps, generation, health)``  swap in a new table, then acknowledge: the admin
                                         call that caused it answers only after every worker has
``("health", health)``                   backends' health as the master's checks see it
``("config", config)``                   a reload's settings
``("stats",)``                           the counters, summed by the master for /metrics
``("stop", grace)``                      graceful stop, then exit

When the master goes away (the socket closes) the worker stops the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import uvloop

from . import ipc
from .dataplane import DataPlane

log = logging.getLogger("router")


async def run(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    kind, config, secret, apps, generation, health, port = await ipc.recv(reader)
    assert kind == "init", kind
    plane = DataPlane(config, secret, apps, generation)
    plane.rebuild(health)
    await plane.listen(config.listen_host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the master decides
    await ipc.send(writer, ("ready",))
    grace = config.timeouts.grace
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
        kind = msg[0]
        if kind == "state":
            plane.apply(msg[1], msg[2], msg[3])
            await ipc.send(writer, ("ok", msg[2]))
        elif kind == "health":
            plane.rebuild(msg[1])
            await ipc.send(writer, ("ok",))
        elif kind == "config":
            plane.reconfigure(msg[1])
            grace = msg[1].timeouts.grace
            await ipc.send(writer, ("ok",))
        elif kind == "stats":
            await ipc.send(writer, ("stats", plane.stats()))
        elif kind == "stop":
            grace = msg[1]
            break
    if recv_task is not None and not recv_task.done():
        recv_task.cancel()
    await plane.drain(grace)
    try:
        await ipc.send(writer, ("stopped",))
    except (ConnectionError, RuntimeError):
        pass
    writer.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(int(sys.argv[1])))


if __name__ == "__main__":
    main()
