"""The Docker provider: apps, versions and backends from the containers (or Swarm services)
that carry ``aliyun.routing.port_<P>`` labels, followed through the Engine's event stream.

One task keeps a session with the Engine: it opens the event stream, lists what runs, and
reconciles the routing state with it (``reconcile``) after every event that matters and every
``refresh``. A container being stopped is taken out of rotation on its ``kill`` event, before
it exits, so its requests drain instead of failing. When the Engine cannot be reached the
router keeps serving what it knows, says so in the log and in ``router_docker_up``, and tries
again. docs/docker.md has the whole design.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import DockerProviderConfig, HealthCheckConfig, split_hostport
from ..errors import Conflict, RouterError, Unavailable
from ..health import probe
from ..state import Operation, State, Step
from .discovery import Listing, Version, from_containers, from_swarm
from .engine import DockerClient, DockerError
from .reconcile import Found, NothingToDo, reconcile

if TYPE_CHECKING:
    from ..manager import StateManager

log = logging.getLogger("router.docker")

# Signals that stop a container (``docker stop`` sends the image's STOPSIGNAL, SIGTERM unless
# set; ``docker kill`` SIGKILL). Other signals (SIGHUP to reload) leave it in rotation.
STOP_SIGNALS = {str(int(s)) for s in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT,
                                      signal.SIGQUIT)} | {"SIGTERM", "SIGKILL", "SIGINT",
                                                          "SIGQUIT", "TERM", "KILL", "INT",
                                                          "QUIT"}
# A container sent a stop signal that is still running this long after is routed again (it
# ignored the signal and nobody followed with SIGKILL): Docker's default stop timeout is 10 s.
STOPPING_FOR = 60.0
# Waits between attempts to reach an Engine that does not answer: quick at first (a restart of
# dockerd takes a few seconds), then every 5 s.
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
# A container without a Docker health check is routed once a TCP connect to it succeeds.
_PROBE = HealthCheckConfig(timeout=1.0)
_REPROBE = 0.5


class DockerProvider:
    """Discovery from one Engine, written into the routing state through ``manager``."""

    def __init__(self, config: DockerProviderConfig, domain: str | None,
                 manager: "StateManager") -> None:
        self.config = config
        self.domain = domain
        self._manager = manager
        self.client = DockerClient(config.endpoint)
        self.up = False
        self.errors = 0
        self.swarm = False
        self._listing: Listing | None = None
        self._stopping: dict[str, float] = {}  # container id -> when its stop signal came
        self._probed: set[tuple[str, str]] = set()  # (container, address) that accepted a connect
        self._probing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._relist = True
        self._notes: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._probing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    def state_changed(self) -> None:
        """The routing state changed (an operator, another replica): a release closed may let
        the next version in."""
        self._wake.set()

    async def _change(self, op: Step, name: str = "discover") -> State:
        """Every change discovery makes goes through here, recorded in the history as the
        router's own under ``name``."""
        return await self._manager.change(Operation(name, op))

    # -- the session with the Engine ---------------------------------------------------------
    async def _run(self) -> None:
        pause = RETRY_FIRST
        failing = False
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors += 1
                if self.up:
                    pause = RETRY_FIRST
                if self.up or not failing:
                    if isinstance(e, DockerError):
                        log.warning("Docker at %s unreachable: %s; serving what is known, "
                                    "retrying", self.config.endpoint, e)
                    else:
                        log.exception("Docker provider failed; serving what is known, retrying")
                failing = True
                self.up = False
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    async def _session(self) -> None:
        info = await self.client.get("/info")
        swarm = info.get("Swarm") or {}
        manager = swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))
        self.swarm = manager if self.config.swarm is None else self.config.swarm
        opened = asyncio.Event()
        follow = asyncio.get_running_loop().create_task(self._follow(opened))
        try:
            await self._until(opened.wait(), follow, 10.0)
            self._relist = True
            log.info("Docker at %s: following %s", self.config.endpoint,
                     "Swarm services" if self.swarm else "containers")
            while True:
                # Cleared before the work, not after: an event that comes meanwhile (a kill
                # while the state is being written) wakes the next round at once.
                self._wake.clear()
                if self._relist:
                    self._relist = False
                    await self._list()
                    self.up = True
                await self._reconcile()
                await self._until(self._wake.wait(), follow, self._next_wait())
        finally:
            follow.cancel()

    async def _until(self, waiting: Any, follow: asyncio.Task[None], timeout: float) -> None:
        """Wait for ``waiting`` at most ``timeout`` (then list again); the event stream
        breaking ends the session."""
        task = asyncio.ensure_future(waiting)
        done, _ = await asyncio.wait({task, follow}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        if follow in done:
            error = follow.exception()
            raise error if isinstance(error, DockerError) else DockerError("event stream ended")
        if not done:
            self._relist = True

    def _next_wait(self) -> float:
        wait = self.config.refresh
        if self._stopping:  # look again when the oldest stop mark expires
            wait = min(wait, max(0.1, min(self._stopping.values()) + STOPPING_FOR - time.monotonic()))
        return wait

    async def _follow(self, opened: asyncio.Event) -> None:
        filters = {"type": ["container", "service", "node"]}
        async for event in self.client.events(filters, opened):
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        kind, action = event.get("Type"), str(event.get("Action", ""))
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        if kind == "container":
            routed = any(k.startswith("aliyun.routing.port_") for k in attributes) or (
                self.swarm and "com.docker.swarm.service.id" in attributes)  # labels on the service
            if action.startswith("exec_") or not routed:
                return  # health-check runs, and containers that are not routed
            if action == "kill" and attributes.get("signal") in STOP_SIGNALS:
                # Out of rotation now, from the listing at hand: it may exit any moment.
                self._stopping.setdefault(actor.get("ID", ""), time.monotonic())
                log.info("container %s is stopping: out of rotation", attributes.get("name"))
            else:
                self._relist = True
        elif kind in ("service", "node"):
            self._relist = True
        self._wake.set()

    # -- what runs -------------------------------------------------------------------------
    async def _list(self) -> None:
        if self.swarm:
            services, tasks, nodes = await asyncio.gather(
                self.client.get("/services"), self.client.get("/tasks"),
                self.client.get("/nodes"))
            listing = from_swarm(services, tasks, nodes, self.config, self.domain)
        else:
            containers = await self.client.get("/containers/json")
            listing = from_containers(containers, self.config, self.domain)
        running = {i.container for v in listing.versions for i in v.instances}
        now = time.monotonic()
        self._stopping = {c: t for c, t in self._stopping.items()
                          if c in running and now - t < STOPPING_FOR}
        self._probed = {p for p in self._probed if p[0] in running}
        self._listing = listing

    def _ready(self, version: Version, routed: set[str]) -> tuple[str, ...]:
        """The addresses of ``version``'s instances that take traffic. Without a Docker health
        check, one that is ``routed`` already stays (a restarted router does not take its
        backends out while it probes them); a new one is probed first."""
        ready = []
        for inst in version.instances:
            if inst.address is None or inst.container in self._stopping:
                continue
            if inst.health == "healthy" or inst.health is None and (
                    inst.address in routed or (inst.container, inst.address) in self._probed):
                ready.append(inst.address)
            elif inst.health is None:
                self._probe(inst.container, inst.address)
        return tuple(sorted(set(ready)))

    def _probe(self, container: str, address: str) -> None:
        key = (container, address)
        if key in self._probing:
            return

        async def run() -> None:
            try:
                host, port = split_hostport(address)
                while key[0] not in self._stopping and self._listed(key):
                    if await probe(host, port, _PROBE):
                        self._probed.add(key)
                        self._wake.set()
                        return
                    await asyncio.sleep(_REPROBE)
            finally:
                self._probing.pop(key, None)
        self._probing[key] = asyncio.get_running_loop().create_task(run())

    def _listed(self, key: tuple[str, str]) -> bool:
        return self._listing is not None and any(
            (i.container, i.address) == key for v in self._listing.versions for i in v.instances)

    async def _reconcile(self) -> None:
        listing = self._listing
        if listing is None:
            return
        state = self._manager.state
        routed = {b for a in state.apps if a.name in state.discovered
                  for s in a.services for b in s.backends}
        found = [Found(v, self._ready(v, routed)) for v in listing.versions]
        health_check = self.config.health_check
        notes = list(listing.skipped)
        if reconcile(state, found, health_check, notes) is not None:
            done: list[str] = []

            def op(state: State) -> Any:
                done.clear()  # run again on a newer state after a lost race
                outcome = reconcile(state, found, health_check, [], done)
                if outcome is None:
                    raise NothingToDo("the routing state already matches Docker")
                return outcome
            try:
                await self._change(op)
                for line in done:
                    log.info("%s", line)
            except NothingToDo:
                pass
            except Unavailable as e:
                notes.append(f"changes wait for the routing-state store: {e.message}")
                self._relist = True  # try again at the next wake or refresh
            except RouterError as e:
                notes.append(f"not applied: {e.message}")
        for note in sorted(set(notes) - self._notes):
            log.warning("%s", note)
        self._notes = set(notes)

    # -- confirm and roll back with removal ----------------------------------------------
    def check_removable(self, app: str) -> None:
        """Conflict (409) unless ``app`` came from Docker (checked before a release step, so
        that a refused call changes nothing)."""
        if app not in self._manager.state.discovered:
            raise Conflict(f"app {app!r} was not discovered from Docker: there are no "
                           "containers to remove", "remove")

    async def remove(self, app: str, services: tuple[str, ...]) -> list[str]:
        """Stop and remove the containers (in Swarm mode: the services) of these versions of
        ``app``; the names of what was removed. ``DockerError`` if the Engine refuses."""
        known = self._manager.state.discovered.get(app)
        if known is None:
            return []
        await self._list()
        assert self._listing is not None
        removed: list[str] = []
        stops = []
        for v in self._listing.versions:
            if v.project != known.project or v.name not in services:
                continue
            if v.swarm_service is not None:
                await self.client.request("DELETE", f"/services/{v.swarm_service}")
                removed.append(f"service {v.project}_{v.name}")
                continue
            for inst in v.instances:
                stops.append(self._stop_and_remove(inst.container))
                removed.append(f"container {inst.container[:12]}")
        await asyncio.gather(*stops)
        log.info("app %s: removed %s", app, ", ".join(removed) or "nothing (none running)")
        self._relist = True
        self._wake.set()
        return removed

    async def _stop_and_remove(self, container: str) -> None:
        # Docker's own stop: the stop signal, the container's stop timeout, then SIGKILL.
        try:
            await self.client.request("POST", f"/containers/{container}/stop", timeout=None)
            await self.client.request("DELETE", f"/containers/{container}")
        except DockerError as e:
            if e.status != 404:  # gone already
                raise

    # -- metrics ---------------------------------------------------------------------------
    def collector(self) -> "DockerCollector":
        return DockerCollector(self)


class DockerCollector:
    """``router_docker_up`` and ``router_docker_errors_total``."""

    def __init__(self, provider: DockerProvider) -> None:
        self._provider = provider

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        p = self._provider
        up = GaugeMetricFamily("router_docker_up", "1 while the Docker Engine API answers and "
                               "its event stream is followed, else 0", labels=["endpoint"])
        up.add_metric([p.config.endpoint], 1 if p.up else 0)
        errors = CounterMetricFamily("router_docker_errors", "Sessions with the Docker Engine "
                                     "that failed (unreachable, stream broken)",
                                     labels=["endpoint"])
        errors.add_metric([p.config.endpoint], p.errors)
        yield up
        yield errors
