"""Safety before persistence, and lines of states, with the real StateManager on a store the
test cuts off: a rollback made while the store cannot be written is in effect at once, shown as
not stored, refused nothing else's 503, and stored -- run again on whatever the store holds by
then -- once it answers; the lines that name states after a data loss, and the conflicts they
reveal (``router.control.manager``, docs/etcd.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from router.control import manager
from router.control import state as ops
from router.config import config_from_dict
from router.errors import PreconditionFailed, Unavailable
from router.control.history import ROUTER, Actor
from router.control.manager import StateManager
from router.control.ramp import RampAction
from router.control.store import Store, StoreConflict, StoreUnavailable
from router.control.transition import next_state
from tests.processes import until

# The manager's retry period for changes the store has not taken (a second in the product).
RETRY = 0.02


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager, "STORE_RETRY", RETRY)

APPS = {"shop": {"routes": ["shop.test"], "services": {"web": {"backends": ["10.0.0.1:80"]}}},
        "blog": {"routes": ["blog.test"], "services": {"web": {"backends": ["10.0.0.3:80"]}}}}


def released() -> ops.State:
    """shop with an open release of web-v2 at 20%, ready."""
    s = ops.State.initial(config_from_dict({"apps": APPS}).apps)
    for op in (ops.start("shop", {"service": "web-v2", "backends": ["10.0.0.2:80"]}),
               ops.mark_ready("shop", "web-v2"),
               ops.set_weights("shop", {"web": 80, "web-v2": 20})):
        s = next_state(s, op, None, None, ROUTER)
    return s


class Shared:
    """One document with a version, as etcd keeps it, for several replicas."""

    def __init__(self) -> None:
        self.data: dict[str, Any] | None = None
        self.version = 0
        self.history: list[dict[str, Any]] = []
        self.conflicts: dict[str, Any] = {}


class Replica(Store):
    """A replica's connection to :class:`Shared`; ``down`` cuts it off."""

    name = "shared"
    shared = True

    def __init__(self, shared: Shared) -> None:
        self.s = shared
        self.down = False
        self.saves = 0

    def _check(self) -> None:
        if self.down:
            self.up = False
            raise StoreUnavailable("the store is unreachable: cut off")
        self.up = True

    async def load(self) -> Any:
        self._check()
        return json.loads(json.dumps(self.s.data)), self.s.version

    async def save(self, data: Any, expected_version: int, entry: Any = None,
                   resolves: str | None = None) -> int:
        self.saves += 1
        self._check()
        if expected_version != self.s.version:
            raise StoreConflict("moved", (json.loads(json.dumps(self.s.data)), self.s.version))
        self.s.data, self.s.version = json.loads(json.dumps(data)), self.s.version + 1
        if resolves is not None:
            self.s.conflicts.pop(resolves, None)
        if entry is not None:
            self.s.history.insert(0, entry)
        return self.s.version

    async def history(self) -> list[Any]:
        self._check()
        return list(self.s.history)

    async def secret(self) -> bytes:
        return b"k" * 32

    # What etcd does after a data loss (router.control.store.etcd), less the wait for the others.
    async def reseed(self, data: Any, secret: Any, write_over: Any) -> Any:
        self._check()
        if self.s.data is None or write_over(self.s.data):
            self.s.data, self.s.version = json.loads(json.dumps(data)), self.s.version + 1
        return json.loads(json.dumps(self.s.data)), self.s.version

    async def conflicts(self) -> list[Any]:
        self._check()
        return [r for r, _ in self.s.conflicts.values()]

    async def keep_conflict(self, name: str, record: Any, entry: Any) -> None:
        self._check()
        self.s.conflicts.setdefault(name, (record, entry))

    async def drop_conflict(self, name: str) -> None:
        self._check()
        self.s.conflicts.pop(name, None)


async def replicas(n: int, state: ops.State | None = None) -> tuple[Shared, list[tuple[StateManager, Replica, list[ops.State]]]]:
    shared = Shared()
    state = state or released()
    shared.data, shared.version = state.to_dict(), 1
    out = []
    for _ in range(n):
        store = Replica(shared)
        applied: list[ops.State] = []
        out.append((StateManager(state, store, applied.append, 1), store, applied))
    return shared, out


def weights(state: ops.State, app: str = "shop") -> dict[str, int]:
    return {s.name: s.weight for s in state.app(app).services}


async def test_a_rollback_is_in_effect_while_the_store_is_down_and_stored_when_it_returns() -> None:
    shared, [(mgr, store, applied)] = await replicas(1)
    store.down = True
    state, change = await mgr.run(ops.rollback("shop"), actor=Actor("10.1.2.3"))
    # In effect: the data plane has it, at once.
    assert applied[-1] is state and weights(state) == {"web": 100} and "shop" not in state.releases
    # Not stored: no generation of its own, shown as such, the release shown as rolled back.
    assert state.generation == mgr.stored.generation == 4 and shared.version == 1
    assert change is not None and change.operation == "rollback_release"
    [entry] = mgr.unstored("shop")
    assert entry["generation"] is None and entry["stored"] is False
    assert entry["changes"] == ["service web-v2 deleted", "weights web 80->100",
                                "release of web-v2 rolled back (web-v2 deleted)"]
    shown = mgr.unstored_rollback("shop")
    assert shown["new"] == "web-v2" and shown["status"] == "rolled_back"
    assert shown["stored"] is False and shown["unstored"] == [entry]
    # Anything else is refused as before (the store cannot take it), with what is pending.
    with pytest.raises(Unavailable, match="not stored yet .*rollback_release of shop"):
        await mgr.change(ops.set_weights("blog", {"web": 50}))
    # No ETag names the state in effect.
    with pytest.raises(PreconditionFailed, match="no generation names that state"):
        await mgr.change(ops.set_weights("blog", {"web": 50}), if_match='"4"')

    store.down = False
    await until(lambda: not mgr.unstored(), 5, "the rollback stored")
    assert shared.version == 2 and mgr.state is mgr.stored and mgr.state.generation == 5
    assert weights(mgr.state) == {"web": 100} and "shop" not in mgr.state.releases
    stored = shared.history[0]
    assert stored["generation"] == 5 and stored["operation"] == "rollback_release"
    assert stored["client"] == "10.1.2.3"
    assert stored["reason"].startswith(f"in effect since {entry['time']}, while the store")
    assert [e["generation"] for e in await mgr.history("shop", 2)] == [5]
    mgr.close()


async def test_a_ramp_rollback_is_stored_on_top_of_another_replicas_change() -> None:
    """Cut off, one replica's ramp rolls back; meanwhile another moves the ramp on and changes
    another app. Once back, the rollback is run again on that newer state: both are kept."""
    s = released()
    s = next_state(s, ops.set_weights("shop", {"web": 100, "web-v2": 0}), None, None, ROUTER)
    s = next_state(s, ops.ramp_start("shop", {"steps": [10, 50, 100], "interval": "1s"}),
                   None, None, ROUTER)
    s = next_state(s, ops.ramp_decision("shop", "web-v2", 0, RampAction.ADVANCE, "first"),
                   None, None, ROUTER)
    shared, [(a, store_a, _), (b, _, _)] = await replicas(2, s)
    store_a.down = True
    fail = ops.ramp_decision("shop", "web-v2", 1, RampAction.FAIL, "step 1: errors out of bounds")
    live = await a.change(fail)
    assert weights(live) == {"web": 100} and a.unstored("shop")[0]["operation"] == "ramp_rollback"
    # B (it took the lease) judged step 1 fine: step 2; and changed blog.
    await b.change(ops.ramp_decision("shop", "web-v2", 1, RampAction.ADVANCE, "fine"))
    await b.change(ops.set_weights("blog", {"web": 7}))
    assert b.state.releases["shop"].ramp.step == 2 and shared.version == 3
    store_a.down = False
    await until(lambda: not a.unstored(), 5, "the rollback stored")
    stored = ops.State.from_dict(shared.data, "shared")
    # A version judged failing does not get its traffic back for the step guard's sake.
    assert "shop" not in stored.releases and weights(stored) == {"web": 100}
    assert weights(stored, "blog") == {"web": 7}
    assert stored.change.operation == "ramp_rollback"
    assert stored.change.reason.startswith("step 1: errors out of bounds; in effect since")
    assert a.state == stored and a.state.generation == 10
    a.close()


async def test_an_unstored_rollback_of_a_release_closed_meanwhile_is_dropped_and_said() -> None:
    shared, [(a, store_a, applied), (b, _, _)] = await replicas(2)
    store_a.down = True
    await a.change(ops.rollback("shop"))
    await b.change(ops.confirm("shop", False))  # someone confirmed it through B
    # A learns of it from the watch first: the rollback no longer applies; the confirm is served.
    await a.adopt(shared.data, shared.version)
    assert not a.unstored() and a.state == a.stored
    assert weights(applied[-1]) == {"web-v2": 20}
    store_a.down = False
    # Time is the subject: retry periods pass, and nothing is written.
    await asyncio.sleep(RETRY * 5)
    assert shared.version == 2 and store_a.saves == 1
    a.close()


async def test_stopping_with_an_unstored_change_says_it_is_lost(caplog) -> None:
    _, [(mgr, store, _)] = await replicas(1)
    store.down = True
    await mgr.change(ops.rollback("shop"))
    mgr.close()
    assert "stopping with 1 change not stored yet (rollback_release of shop" in caplog.text
    assert "they are LOST" in caplog.text


# -- lines ----------------------------------------------------------------------------------------
def test_the_first_change_to_a_written_back_state_starts_a_line_no_state_can_share() -> None:
    s = released()
    assert s.forks == () and s.holds(s) and s.generation == 4
    back = ops.State.from_dict({**s.to_dict(), "written_back": "2026-01-01T00:00:00Z"}, "t")
    assert back.holds(s) and s.holds(back)  # the same state
    nxt = next_state(back, ops.set_weights("blog", {"web": 3}), None, None, ROUTER)
    assert nxt.line != s.line and nxt.forks == ((s.line, 4),) and nxt.written_back is None
    assert nxt.generation > 1_700_000_000_000  # the clock, in milliseconds
    assert nxt.holds(s) and not s.holds(nxt)
    after = next_state(nxt, ops.set_weights("blog", {"web": 4}), None, None, ROUTER)
    assert after.generation == nxt.generation + 1 and after.line == nxt.line
    # A state the old line went on to (held by a replica that was cut off) is not in it.
    other = next_state(s, ops.set_weights("shop", {"web": 1}), None, None, ROUTER)
    assert other.generation == 5 and not after.holds(other) and not other.holds(after)
    assert ops.State.from_dict(after.to_dict(), "t") == after


async def test_after_a_data_loss_the_newest_state_is_written_back_and_a_lost_change_kept() -> None:
    """C was behind (generation 4), A holds 5; the store lost everything. C writes back first and
    A's newer state replaces it: nothing lost. Then C takes a change on it while A is away; A
    holds generation 6, which that line does not have: a conflict, kept and resolved."""
    base = released()
    shared, [(a, _, _), (c, _, _)] = await replicas(2, base)
    await a.change(ops.set_weights("blog", {"web": 5}))  # 5: C (no watch here) misses it
    shared.data, shared.version = None, 0  # lost
    await c.recover(b"k" * 32)
    await a.recover(b"k" * 32)  # A's 5 holds C's 4: written over it
    await c.adopt(shared.data, shared.version)
    assert c.state == a.state and weights(c.state, "blog") == {"web": 5} and not a.conflicts_found
    first = c.state.generation

    await a.change(ops.set_weights("blog", {"web": 6}))  # A's next change: a new line
    assert a.state.generation > 1_700_000_000_000 and a.state.forks == ((base.line, first),)
    held = a.state
    shared.data, shared.version = None, 0  # lost again; C (behind again) writes back first
    await c.recover(b"k" * 32)
    # A line starts in the clock's millisecond: etcd's replicas refuse changes 3 s after a loss.
    await asyncio.sleep(0.01)
    await c.change(ops.set_weights("blog", {"web": 7}))  # acknowledged, on a line of its own
    assert c.state.generation != held.generation
    await a.recover(b"k" * 32)
    assert a.conflicts_found == 1 and a.state == c.state  # A follows the store...
    [conflict] = await a.conflicts()  # ...and its change is kept
    assert conflict["name"] == f"{held.generation}-{held.line}"
    assert conflict["keeping_it_changes"] == ["blog: weights web 7->6"]
    with pytest.raises(PreconditionFailed):  # the generation A's client saw names no other state
        await c.change(ops.set_weights("blog", {"web": 1}), if_match=f'"{held.generation}"')
    state, change = await c.resolve(conflict["name"], "conflict", actor=Actor("10.9.9.9"))
    assert weights(state, "blog") == {"web": 6} and change.operation == "keep_conflict"
    assert change.reason.startswith(f"kept generation {held.generation} (line {held.line})")
    assert shared.conflicts == {} and await c.conflicts() == []
    a.close()
    c.close()
