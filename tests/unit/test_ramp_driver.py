"""The ramp driver with a real StateManager, counters the test makes and a clock it sets: the
moves it applies, what it counts, and what it does when the store is down or another replica
drives."""

from __future__ import annotations

from typing import Any

from router.control import state as ops
from router.config import config_from_dict
from router.dataplane.counters import Stats
from router.control.history import ROUTER
from router.control.manager import StateManager
from router.control.transition import next_state
from router.control.rampdriver import Leadership, RampCollector, RampDriver
from router.control.ramp import RampStatus
from router.control.store import Store, StoreUnavailable
from tests.unit.test_ramp import Traffic

RAMP = {"steps": [10, 50, 100], "interval": "1s", "min_requests": 10}


def released() -> ops.State:
    shop = {"routes": ["shop.test"], "services": {"web": {"backends": ["10.0.0.1:80"]}}}
    s = ops.State.initial(config_from_dict({"apps": {"shop": shop}}).apps)
    for op in (ops.start("shop", {"service": "web-v2", "backends": ["10.0.0.2:80"]}),
               ops.mark_ready("shop", "web-v2"), ops.ramp_start("shop", RAMP)):
        s = next_state(s, op, None, None, ROUTER)
    return s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def driver(manager: StateManager, traffic: Traffic, clock: Clock,
           leadership: Leadership | None = None) -> RampDriver:
    async def stats() -> Stats:
        return traffic.stats
    return RampDriver(manager, stats, leadership, clock)


def ramp_of(manager: StateManager) -> Any:
    release = manager.state.releases.get("shop")
    return release.ramp if release is not None else None


def weights(manager: StateManager) -> dict[str, int]:
    return {s.name: s.weight for s in manager.state.app("shop").services}


async def test_drives_a_ramp_to_its_end_and_counts_its_decisions() -> None:
    manager = StateManager(released(), None, lambda s: None)
    t, clock = Traffic(), Clock()
    d = driver(manager, t, clock)
    await d.tick()  # the first step at once; its window starts after it
    assert ramp_of(manager).step == 1 and weights(manager) == {"web": 90, "web-v2": 10}
    t.add("web", 90)
    t.add("web-v2", 5)
    clock.now += 1.0
    await d.tick()  # too little of web-v2: one more interval
    assert (ramp_of(manager).step, ramp_of(manager).waits) == (1, 1)
    t.add("web-v2", 10)
    clock.now += 1.0
    await d.tick()
    assert ramp_of(manager).step == 2 and weights(manager) == {"web": 50, "web-v2": 50}
    assert d.last["shop"].new.requests == 15 and d.last["shop"].seconds == 2.0
    t.add("web", 50)
    t.add("web-v2", 50)
    clock.now += 1.0
    await d.tick()
    assert ramp_of(manager).step == 3 and weights(manager) == {"web": 0, "web-v2": 100}
    # The last step is judged too: web has no traffic at 100%, so against what it did at 2.
    t.add("web-v2", 100)
    clock.now += 1.0
    await d.tick()
    assert ramp_of(manager).status is RampStatus.DONE and weights(manager) == {"web": 0,
                                                                               "web-v2": 100}
    assert "web at step 2 0.0% errors (0 of 50)" in d.last["shop"].reason
    assert d.decided == {("shop", "advance"): 4, ("shop", "wait"): 1}
    entries = await manager.history("shop", limit=5)
    assert [e["operation"] for e in entries] == ["ramp_step", "ramp_step", "ramp_step",
                                                 "ramp_wait", "ramp_step"]
    assert all(e["client"] == "router" and e["reason"] for e in entries)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in RampCollector(d).collect() for s in m.samples}
    assert samples[("router_ramp_decisions_total", (("app", "shop"), ("decision", "rollback")))] == 0
    assert samples[("router_ramp_driver", ())] == 1


async def test_a_failing_version_is_rolled_back_and_forgotten() -> None:
    manager = StateManager(released(), None, lambda s: None)
    t, clock = Traffic(), Clock()
    d = driver(manager, t, clock)
    await d.tick()
    t.add("web", 90)
    t.add("web-v2", 10, errors=3)
    clock.now += 1.0
    await d.tick()
    assert "shop" not in manager.state.releases and weights(manager) == {"web": 100}
    assert d.decided[("shop", "rollback")] == 1
    await d.tick()
    assert d.last == {}  # what it measured goes with the release


class DownStore(Store):
    """A store that cannot be reached: every save fails, and is counted."""

    name = "down"

    def __init__(self) -> None:
        self.saves = 0

    async def load(self) -> Any:
        return None, 0

    async def save(self, data: Any, expected_version: int, entry: Any = None) -> int:
        self.saves += 1
        raise StoreUnavailable("down")

    async def history(self) -> list[Any]:
        return []

    async def secret(self) -> bytes:
        return b"k" * 32


async def test_a_store_that_is_down_is_asked_again_a_second_later_not_at_every_tick() -> None:
    store = DownStore()
    manager = StateManager(released(), store, lambda s: None)
    t, clock = Traffic(), Clock()
    d = driver(manager, t, clock)
    await d.tick()
    assert store.saves == 1 and ramp_of(manager).step == 0
    for _ in range(9):
        clock.now += 0.1
        await d.tick()
    assert store.saves == 1
    clock.now += 0.11
    await d.tick()
    assert store.saves == 2


async def test_a_replica_without_the_lease_decides_nothing() -> None:
    manager = StateManager(released(), None, lambda s: None)
    held = [False]

    async def campaign() -> bool:
        return held[0]

    t, clock = Traffic(), Clock()
    d = driver(manager, t, clock, Leadership(campaign, every=0.0, clock=clock))
    await d.tick()
    assert ramp_of(manager).step == 0 and d.decided == {}
    held[0] = True
    await d.tick()
    assert ramp_of(manager).step == 1
