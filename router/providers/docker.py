"""The Docker provider: apps, versions and backends from the containers (or Swarm services)
that carry ``aliyun.routing.port_<P>`` labels, followed through the Engine's event stream.

One task keeps a session with the Engine: it opens the event stream, lists what runs, and
reconciles the routing state with it (``reconcile``) after every event that matters and every
``refresh``. A container being stopped is taken out of rotation on its ``kill`` event, before
it exits, so its requests drain instead of failing; one whose process exits by itself on its
``die`` event, without waiting for the Engine's listing to agree. A backend is a container, not
only an address: an address passes from one container to another only through a routing state
without it. Swarm tasks have no events: while one is on its way to running the provider lists
again, quickly, until it runs. When the Engine cannot be reached the router keeps serving what
it knows, says so in the log and in ``router_docker_up``, and tries again. docs/docker.md has
the whole design.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import DockerProviderConfig, HealthCheckConfig, split_hostport
from ..errors import Conflict, RouterError, Unavailable
from ..dataplane.health import probe
from ..control.state import Discovered, DiscoveryOutcome, Operation, State, Step
from .container import container_id, read_mounts
from .discovery import Listing, Version, from_containers, from_swarm
from .engine import DockerClient, DockerError
from .reconcile import Found, NothingToDo, reconcile, version_check

if TYPE_CHECKING:
    from ..control.manager import StateManager

log = logging.getLogger("router.docker")

# Signals that stop a container (``docker stop`` sends the image's STOPSIGNAL, SIGTERM unless
# set; ``docker kill`` SIGKILL). Other signals (SIGHUP to reload) leave it in rotation.
STOP_SIGNALS = {str(int(s)) for s in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT,
                                      signal.SIGQUIT)} | {"SIGTERM", "SIGKILL", "SIGINT",
                                                          "SIGQUIT", "TERM", "KILL", "INT",
                                                          "QUIT"}
# A container sent a stop signal (or that ran out of memory) that is still running this long
# after is routed again: it ignored the signal and nobody followed with SIGKILL, or the kernel
# killed one of its processes but not its main one. Docker's default stop timeout is 10 s.
STOPPING_FOR = 60.0
# Waits between attempts to reach an Engine that does not answer: quick at first (a restart of
# dockerd takes a few seconds), then every 5 s.
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
# A container without a Docker health check is routed once a TCP connect to it (an HTTP check of
# its health-check path, if it has one) succeeds.
_PROBE_TIMEOUT = 1.0
_REPROBE = 0.5
# While a Swarm task is on its way to running: list again after 0.1 s, doubling up to 1 s (a
# task that is pulling its image), so that a task is routed within about 1 s of running.
CONVERGE_FIRST, CONVERGE_MAX = 0.1, 1.0
# Removal on confirm or rollback: a container's own stop timeout (Docker's default 10 s) plus
# this for the SIGKILL, the exit and the network's teardown; the call answers after at most
# REMOVE_ANSWER and the rest goes on in the background (the log says how it ended).
DEFAULT_STOP_TIMEOUT = 10.0
REMOVE_MARGIN = 15.0
REMOVE_ANSWER = 30.0


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
        self._sessions = 0  # sessions begun: from the second on, a change of mode is logged
        self._listing: Listing | None = None
        self._stopping: dict[str, float] = {}  # container id -> when its stop signal came
        # Containers whose process exited (``die``): out of rotation until they start again or
        # the listing stops showing them running (it lags behind the event by a few 100 ms).
        self._dead: set[str] = set()
        # Routed address -> the containers it is routed for. An address routed for a container
        # that is gone is taken out before another container there is routed (docs/docker.md).
        self._owners: dict[str, frozenset[str]] = {}
        self._candidates: dict[str, frozenset[str]] = {}  # the same, from the round at hand
        self._probed: set[tuple[str, str]] = set()  # (container, address) that accepted a connect
        self._probing: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Bookkeeping (``discovered``) that changed alone: written with the next real change
        # rather than as a generation of its own. (the state's discovered it was computed
        # from, the discovered it makes)
        self._pending: tuple[Mapping[str, Discovered], Mapping[str, Discovered]] | None = None
        self._wake = asyncio.Event()
        self._relist = True
        self._recheck = False  # ask the Engine whether it joined or left a Swarm
        self._converge = 0  # listings in a row with Swarm tasks on their way to running
        self._own_id = container_id(read_mounts())  # the router's container, if it is in one
        self._shared: frozenset[str] = frozenset()  # the networks of the router's container
        self._removals: set[asyncio.Task[None]] = set()
        self._notes: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._probing.values(), *self._removals)
                 if t is not None]
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
                continue  # the Engine joined or left a Swarm: a new session, in the other mode
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

    async def _swarm_mode(self) -> bool:
        if self.config.swarm is not None:
            return self.config.swarm
        swarm = (await self.client.get("/info")).get("Swarm") or {}
        return swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))

    async def _own_networks(self) -> frozenset[str]:
        """The networks of the router's own container; none outside a container, or when this
        Engine does not run it."""
        if self._own_id is None:
            return frozenset()
        try:
            info = await self.client.get(f"/containers/{self._own_id}/json")
        except DockerError as e:
            if e.status == 404:
                return frozenset()
            raise
        return frozenset((info.get("NetworkSettings") or {}).get("Networks") or {})

    async def _session(self) -> None:
        """Returns when the Engine joined or left a Swarm (with ``swarm: auto``); raises when
        the Engine cannot be reached."""
        swarm = await self._swarm_mode()
        if self._sessions and swarm != self.swarm:
            # Logged here, not where the change was noticed: a session can also end on a
            # 503 or a broken event stream while the Engine is still half-way out of a Swarm.
            log.info("Docker at %s %s a Swarm: following %s from now on", self.config.endpoint,
                     "left" if self.swarm else "joined",
                     "containers" if self.swarm else "Swarm services")
        self.swarm = swarm
        self._sessions += 1
        self._shared = await self._own_networks()
        # What was learnt from the events of a broken session may be stale: the listing rules.
        self._dead.clear()
        opened = asyncio.Event()
        follow = asyncio.get_running_loop().create_task(self._follow(opened))
        try:
            await self._until(opened.wait(), follow, 10.0)
            self._relist = True
            log.info("Docker at %s: following %s", self.config.endpoint,
                     "Swarm services" if self.swarm else "containers")
            refresh_at = time.monotonic() + self.config.refresh
            while True:
                # Cleared before the work, not after: an event that comes meanwhile (a kill
                # while the state is being written) wakes the next round at once.
                self._wake.clear()
                if time.monotonic() >= refresh_at:
                    refresh_at = time.monotonic() + self.config.refresh
                    self._relist = True
                    self._recheck = self.config.swarm is None
                    self._shared = await self._own_networks()
                if self._recheck:
                    self._recheck = False
                    if await self._switched():
                        return
                if self._relist:
                    self._relist = False
                    try:
                        await self._list()
                    except DockerError as e:
                        # 503 "This node is not a swarm manager": it left the Swarm.
                        if e.status == 503 and self.swarm and await self._switched():
                            return
                        raise
                    self.up = True
                await self._reconcile()
                await self._until(self._wake.wait(), follow, self._next_wait(refresh_at))
        finally:
            follow.cancel()

    async def _switched(self) -> bool:
        """Whether the Engine joined or left a Swarm since the session began (``swarm: auto``)."""
        return await self._swarm_mode() != self.swarm

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
            if self._listing is not None and self._listing.converging:
                self._converge += 1

    def _next_wait(self, refresh_at: float) -> float:
        now = time.monotonic()
        wait = refresh_at - now
        if self._stopping:  # look again when the oldest stop mark expires
            wait = min(wait, min(self._stopping.values()) + STOPPING_FOR - now)
        if self._listing is not None and self._listing.converging:
            wait = min(wait, CONVERGE_FIRST * 2 ** min(self._converge, 10), CONVERGE_MAX)
        return max(0.05, wait)

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
            cid, name = actor.get("ID", ""), attributes.get("name")
            if action == "kill" and attributes.get("signal") in STOP_SIGNALS:
                # Out of rotation now, from the listing at hand: it may exit any moment. In
                # Swarm mode a new listing too: the task replacing it (start-first) runs by
                # now, and both changes go in one generation.
                if cid not in self._stopping:
                    self._stopping[cid] = time.monotonic()
                    log.info("container %s is stopping: out of rotation", name)
                self._relist = self._relist or self.swarm
                self._wake.set()
                return
            self._relist = True
            if action == "die":
                # Its process exited by itself (or was killed): out now, whatever the listing
                # says, which still shows it running for a while.
                self._dead.add(cid)
                log.info("container %s exited (code %s): out of rotation", name,
                         attributes.get("exitCode", "?"))
            elif action == "oom" and cid not in self._stopping:
                self._stopping[cid] = time.monotonic()
                log.info("container %s ran out of memory: out of rotation", name)
            elif action == "start":
                self._dead.discard(cid)
                self._stopping.pop(cid, None)
        elif kind in ("service", "node"):
            self._relist = True
            # A service or node event while following containers: the Engine is a Swarm
            # manager now (docker swarm init); with swarm: auto, switch.
            self._recheck = self._recheck or (not self.swarm and self.config.swarm is None)
        self._converge = 0
        self._wake.set()

    # -- what runs -------------------------------------------------------------------------
    async def _list(self) -> None:
        if self.swarm:
            services, tasks, nodes = await asyncio.gather(
                self.client.get("/services"), self.client.get("/tasks"),
                self.client.get("/nodes"))
            listing = from_swarm(services, tasks, nodes, self.config, self.domain, self._shared)
        else:
            # Stopped containers too: they keep their version (and app) present.
            containers = await self.client.get("/containers/json", all="1")
            listing = from_containers(containers, self.config, self.domain, self._shared)
        running = {i.container for v in listing.versions for i in v.instances}
        now = time.monotonic()
        self._stopping = {c: t for c, t in self._stopping.items()
                          if c in running and now - t < STOPPING_FOR}
        self._dead &= running
        self._probed = {p for p in self._probed if p[0] in running}
        self._listing = listing

    def _ready(self, version: Version, routed: set[str]) -> tuple[str, ...]:
        """The addresses of ``version``'s instances that take traffic. Without a Docker health
        check, one that is ``routed`` already for the same container stays (a restarted router
        does not take its backends out while it probes them); a new one is probed first. An
        address routed for a container that is gone is held out: the state drops it first."""
        at: dict[str, set[str]] = {}  # address -> the ready containers there
        for inst in version.instances:
            if (inst.address is None or inst.container in self._stopping
                    or inst.container in self._dead):
                continue
            owners = self._owners.get(inst.address)
            kept = inst.address in routed and (owners is None or inst.container in owners)
            if inst.health == "healthy" or inst.health is None and (
                    kept or (inst.container, inst.address) in self._probed):
                at.setdefault(inst.address, set()).add(inst.container)
            elif inst.health is None:
                self._probe(inst.container, inst.address, version)
        # A task Swarm is shutting down serves until its replacement is ready (start-first),
        # or until its container's stop signal.
        leaving = {i.container for i in version.instances if i.leaving}
        if any(not containers <= leaving for containers in at.values()):
            at = {a: c - leaving for a, c in at.items() if c - leaving}
        ready = []
        for address, containers in at.items():
            owners = self._owners.get(address)
            if address in routed and owners is not None and owners.isdisjoint(containers):
                continue  # routed for another container, which is gone
            ready.append(address)
            self._candidates[address] = self._candidates.get(address, frozenset()) | containers
        return tuple(sorted(ready))

    def _probe(self, container: str, address: str, version: Version) -> None:
        key = (container, address)
        if key in self._probing:
            return
        path = (version_check(version, self.config.health_check) or HealthCheckConfig()).path
        check = HealthCheckConfig(path=path, timeout=_PROBE_TIMEOUT)

        async def run() -> None:
            try:
                host, port = split_hostport(address)
                while (key[0] not in self._stopping and key[0] not in self._dead
                       and self._listed(key)):
                    if await probe(host, port, check):
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

    def _with_pending(self, state: State) -> State:
        """``state`` with the bookkeeping not written yet, if it was computed from this state's."""
        if self._pending is None or self._pending[0] != state.discovered:
            self._pending = None
            return state
        return replace(state, discovered=self._pending[1])

    def _outcome(self, state: State, found: list[Found], notes: list[str],
                 done: list[str] | None) -> DiscoveryOutcome | None:
        """What discovery changes in ``state``: None when neither apps nor releases change
        (bookkeeping alone waits for the next real change, in ``_pending``)."""
        base = self._with_pending(state)
        outcome = reconcile(base, found, self.config.health_check, notes, done,
                            self.config.empty_apps == "delete")
        if outcome is None:
            return None
        if outcome[0] == state.apps and outcome[1] == state.releases:
            self._pending = (state.discovered, outcome[2])
            return None
        return outcome

    async def _reconcile(self) -> None:
        listing = self._listing
        if listing is None:
            return
        state = self._manager.state
        routed = _routed(state)
        self._candidates = {}
        found = [Found(v, self._ready(v, routed)) for v in listing.versions]
        notes = list(listing.skipped)
        if self._outcome(state, found, notes, None) is not None:
            done: list[str] = []

            def op(state: State) -> Any:
                done.clear()  # run again on a newer state after a lost race
                outcome = self._outcome(state, found, [], done)
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
        # Who each routed address is routed for, from now on.
        owners = {**self._owners, **self._candidates}
        self._owners = {a: owners[a] for a in _routed(self._manager.state) if a in owners}
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
        ``app``; the names of what was removed, or is being removed. Waits REMOVE_ANSWER at
        most: a removal that takes longer finishes in the background. ``DockerError``, saying
        why, if the Engine refuses one."""
        known = self._manager.state.discovered.get(app)
        if known is None:
            return []
        await self._list()
        assert self._listing is not None
        removed: list[str] = []
        stops: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for v in self._listing.versions:
            if v.project != known.project or v.name not in services:
                continue
            if v.swarm_service is not None:
                await self.client.request("DELETE", f"/services/{v.swarm_service}")
                removed.append(f"service {v.project}_{v.name}" if v.project else
                               f"service {v.name}")
                continue
            for cid in (*(i.container for i in v.instances), *v.stopped):
                what = f"container {cid[:12]}"
                stops.append(loop.create_task(self._stop_and_remove(cid), name=what))
                removed.append(what)
        errors: list[str] = []
        pending: set[asyncio.Task[None]] = set()
        if stops:
            done, pending = await asyncio.wait(stops, timeout=REMOVE_ANSWER)
            for task in pending:
                self._removals.add(task)
                task.add_done_callback(self._removed_later)
            errors = [str(e) for t in done if (e := t.exception()) is not None]
        self._relist = True
        self._wake.set()
        if errors:
            raise DockerError("; ".join(errors))
        if pending:
            log.warning("app %s: removing %s; %d still stopping after %g s, finishing in the "
                        "background", app, ", ".join(removed), len(pending), REMOVE_ANSWER)
        else:
            log.info("app %s: removed %s", app, ", ".join(removed) or "nothing (none running)")
        return removed

    def _removed_later(self, task: asyncio.Task[None]) -> None:
        self._removals.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("removal in the background failed: %s", task.exception())
        else:
            log.info("%s stopped and removed (in the background)", task.get_name())
        self._relist = True
        self._wake.set()

    async def _stop_and_remove(self, container: str) -> None:
        """Docker's own stop (the stop signal, the container's stop timeout, then SIGKILL),
        then removal. ``DockerError`` naming the container and the reason."""
        try:
            info = await self.client.get(f"/containers/{container}/json")
            timeout = (info.get("Config") or {}).get("StopTimeout")
            grace = float(timeout) if isinstance(timeout, int) and timeout >= 0 else (
                DEFAULT_STOP_TIMEOUT)
            await self.client.request("POST", f"/containers/{container}/stop",
                                      timeout=grace + REMOVE_MARGIN)
            await self.client.request("DELETE", f"/containers/{container}", {"force": "1"})
        except DockerError as e:
            if e.status == 404:
                return  # gone already
            name = container[:12]
            raise DockerError(f"container {name}: {e}", e.status) from None

    # -- metrics ---------------------------------------------------------------------------
    def collector(self) -> "DockerCollector":
        return DockerCollector(self)


def _routed(state: State) -> set[str]:
    """The backends of the apps discovery made."""
    return {b for a in state.apps if a.name in state.discovered
            for s in a.services for b in s.backends}


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
