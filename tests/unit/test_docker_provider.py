"""The Docker provider's own rules, between the Engine's answers and the routing state, without
an Engine: the listings are given, the state is a real StateManager's. A container that dies is
out at once though the listing still shows it; an address passes from one container to another
only through a state without it; a task Swarm is shutting down serves until its replacement is
ready; bookkeeping alone makes no generation."""

from __future__ import annotations

from typing import Any

from router.config import DockerProviderConfig, Route
from router.control.manager import StateManager
from router.providers.discovery import Instance, Listing, Version
from router.providers.docker import DockerProvider
from router.control.state import Discovered, Operation, State, delete_app

X, Y, Z = "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"


def provider() -> tuple[DockerProvider, StateManager]:
    manager = StateManager(State(1), None, lambda state: None)
    return DockerProvider(DockerProviderConfig(), "example.test", manager), manager


def listing(*instances: Instance, name: str = "web") -> Listing:
    return Listing([Version("shop", name, (Route("shop.test"),), None, 1.0, instances)], [])


def ready(container: str, address: str, leaving: bool = False) -> Instance:
    # Docker says healthy: no probe of the router's own needed.
    return Instance(container, address, "healthy", leaving)


def backends(manager: StateManager) -> dict[str, tuple[str, ...]]:
    app = next((a for a in manager.state.apps if a.name == "shop"), None)
    return {s.name: s.backends for s in app.services} if app is not None else {}


def event(action: str, container: str, **attributes: str) -> dict[str, Any]:
    return {"Type": "container", "Action": action, "Actor": {"ID": container, "Attributes": {
        "name": container, "aliyun.routing.port_80": "shop", **attributes}}}


async def step(p: DockerProvider, now: Listing | None = None) -> None:
    if now is not None:
        p._listing = now
    await p._reconcile()


async def test_a_container_that_dies_is_out_though_the_listing_still_shows_it():
    p, m = provider()
    await step(p, listing(ready("a", X), ready("b", Y)))
    assert backends(m) == {"web": (X, Y)}
    p._event(event("die", "a", exitCode="1"))
    await step(p)  # the same listing: the Engine's lags behind its own event
    assert backends(m) == {"web": (Y,)}
    p._event(event("start", "a"))  # started again (a restart policy)
    await step(p)
    assert backends(m) == {"web": (X, Y)}


async def test_a_stop_signal_or_running_out_of_memory_takes_it_out_and_a_reload_does_not():
    p, m = provider()
    await step(p, listing(ready("a", X), ready("b", Y)))
    p._event(event("kill", "a", signal="1"))  # SIGHUP: a reload
    await step(p)
    assert backends(m) == {"web": (X, Y)}
    p._event(event("kill", "a", signal="15"))
    p._event(event("oom", "b"))
    await step(p)
    assert backends(m) == {"web": ()}


async def test_an_address_passes_to_another_container_through_a_state_without_it():
    p, m = provider()
    await step(p, listing(ready("a", X), ready("b", Y)))
    generation = m.state.generation
    # a is gone, and c has its address by the time the router lists again.
    await step(p, listing(ready("c", X), ready("b", Y)))
    assert backends(m) == {"web": (Y,)}
    await step(p)
    assert backends(m) == {"web": (X, Y)}
    assert m.state.generation == generation + 2
    await step(p)
    assert m.state.generation == generation + 2


async def test_a_restarted_router_keeps_the_backends_it_finds_running():
    p, m = provider()
    await step(p, listing(ready("a", X)))
    again = DockerProvider(p.config, p.domain, m)  # knows nothing of who was routed
    generation = m.state.generation
    await step(again, listing(ready("c", X)))
    assert backends(m) == {"web": (X,)} and m.state.generation == generation


async def test_a_task_being_shut_down_serves_until_its_replacement_is_ready():
    p, m = provider()
    await step(p, listing(ready("old", X)))
    # Swarm is shutting it down (start-first): its replacement is not ready yet.
    starting = Instance("new", Y, "starting")
    await step(p, listing(ready("old", X, leaving=True), starting))
    assert backends(m) == {"web": (X,)}
    generation = m.state.generation
    await step(p, listing(ready("old", X, leaving=True), ready("new", Y)))
    assert backends(m) == {"web": (Y,)}
    assert m.state.generation == generation + 1  # one change: out and in together


async def test_bookkeeping_alone_waits_for_the_next_real_change():
    p, m = provider()
    await step(p, listing(ready("a", X)))
    await m.change(Operation("delete", delete_app("shop")))
    assert m.state.discovered == {"shop": Discovered("shop", ("web",))}
    generation = m.state.generation
    # Its containers gone: shop is forgotten as Docker's app, but that alone is not written.
    await step(p, Listing([], []))
    assert m.state.generation == generation
    assert m.state.discovered == {"shop": Discovered("shop", ("web",))}
    # Containers of shop again: made as a new app, the forgetting written with it.
    await step(p, listing(ready("b", Z)))
    assert backends(m) == {"web": (Z,)}
    assert m.state.generation == generation + 1
    assert m.state.discovered == {"shop": Discovered("shop", ("web",))}
    assert m.state.change is not None and m.state.change.changes
