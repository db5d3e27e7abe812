"""Applying operations to the routing state: ``StateManager`` owns the current state, runs one
operation at a time, and persists, then applies, then answers.

``StateManager.change`` checks ``If-Match``, computes the next state
(``router.control.transition.next_state``), writes it to the store with its history entry, makes it live
in the data plane, and only then answers -- so a rejected call leaves the state exactly as it
was, and an accepted one is stored and serving before the caller hears of it. An operation that
changes nothing is not a change: no new generation, no write, no history entry.

With a store shared by several replicas (etcd), another replica may have changed the state
since this one last read it. The save is conditional on the store's version being the one this
state came from; when it is not, the manager reads the newer state, makes it live, and runs the
operation again on it -- so the operation's checks (and ``If-Match``, which then answers 412)
always judge the state it actually changes, and no replica's update is lost. The generation is
part of the stored state, so every replica shows the same generation for the same state.

**Safety before persistence.** A *safe* operation (a rollback, a ramp's abort or failed
judgement: ``Operation.safe``) that the store cannot take -- a full disk, etcd down or emptied --
takes effect in the data plane at once and is kept *unstored*: it has no generation yet (the
state keeps the stored generation; ``If-Match`` is refused on this replica meanwhile), the API
and ``router_store_pending_changes`` show it, and every second the manager tries to store it by
running it again on the state the store holds then, as a conflict does. Other changes are
refused (503) meanwhile. A restart before it is stored loses it (docs/etcd.md).

**Data loss** (:meth:`StateManager.recover`): the store is written back from what the replicas
hold; a replica whose state holds changes the store's state does not (it was cut off while a
replica that was behind wrote back and took changes) keeps its state as a *conflict* in the
store for an operator to resolve (:meth:`StateManager.resolve`) and follows the store's
(``router.control.dataloss``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import ConfigError
from .dataloss import DataLoss
from ..errors import Conflict, PreconditionFailed, RouterError, Unavailable
from .history import HISTORY_LIMIT, ROUTER, Actor, Change, describe, utc_now
from .state import Operation, State
from .store import Store, StoreConflict, StoreError, StoreLost, StoreUnavailable
from .transition import Unstored, next_state, parse_etag, rerun

log = logging.getLogger("router.admin")


# A change that lost the race against another replica's is run again on the newer state. The
# first retry is immediate; then a random pause of up to 2, 4, ... 64 ms lets a replica that
# keeps losing to one writing back to back (a script looping over changes) get its turn. After
# RETRY_FOR seconds of losing the caller is told (409) rather than kept waiting.
RETRY_FOR = 2.0
_MAX_PAUSE = 0.064


# Seconds between two attempts to store the unstored changes.
STORE_RETRY = 1.0


class StateManager(DataLoss):
    """Owns the current state; serialises changes; persists, then applies, then answers.

    ``state`` is the state in effect; ``stored`` the newest the store is known to hold, and
    ``version`` its version there (0: not stored yet). They differ only while a safe change is
    unstored.
    """

    def __init__(self, state: State, store: Store | None,
                 apply: Callable[[State], Any], version: int = 0) -> None:
        self.state = state
        self.stored = state
        self.version = version
        self._store = store
        self._apply = apply
        self._lock = asyncio.Lock()
        # The history, newest first, when there is no store to keep it.
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LIMIT)
        if store is None and state.change is not None:
            self._history.append(state.change.to_dict())
        self._pending: list[Unstored] = []
        self._store_error = ""  # why the last attempt to store them failed
        # Conflict records not written to the store yet: name -> record.
        self._conflicts: dict[str, dict[str, Any]] = {}
        self._retry: asyncio.Task[None] | None = None
        self._closed = False
        #: Conflicts this replica found (router_store_conflicts_total).
        self.conflicts_found = 0
        #: This process, as conflict records name the replica that found them.
        self.replica = f"{socket.gethostname()} pid {os.getpid()}"

    async def change(self, op: Operation, if_match: str | None = None,
                     etag_app: str | None = None, actor: Actor = ROUTER) -> State:
        """Run ``op`` (see :meth:`run`); the state after it."""
        return (await self.run(op, if_match, etag_app, actor))[0]

    async def run(self, op: Operation, if_match: str | None = None, etag_app: str | None = None,
                  actor: Actor = ROUTER, resolves: str | None = None) -> tuple[State, Change | None]:
        """Run ``op`` as asked by ``actor``: the state after it, and the history entry it added
        (None: it changed nothing, and the state and its generation are as they were).
        ``resolves``: the conflict record this change settles, removed with its save."""
        async with self._lock:
            if self._pending or self._conflicts:
                await self._store_pending()
            if self._pending:
                return await self._run_unstored(op, if_match, etag_app, actor)
            deadline = asyncio.get_running_loop().time() + RETRY_FOR
            lost = 0
            while True:
                new = next_state(self.state, op, if_match, etag_app, actor)
                if new is self.state:
                    return new, None
                assert new.change is not None
                if self._store is None:
                    self._history.appendleft(new.change.to_dict())
                    break
                try:
                    extra = {"resolves": resolves} if resolves is not None else {}
                    version = await self._store.save(new.to_dict(), self.version,
                                                     new.change.to_dict(), **extra)
                except StoreConflict as e:
                    # Another replica's change: make it live here, then run op again on it.
                    await self._reload(e.current)
                    if asyncio.get_running_loop().time() > deadline:
                        raise Conflict(f"other replicas changed the routing state {lost + 1} times "
                                       "while this call was being applied; try again", None) from None
                    if lost:
                        await asyncio.sleep(random.uniform(0, min(_MAX_PAUSE, 0.001 * 2 ** lost)))
                    lost += 1
                    continue
                except StoreError as e:
                    if not op.safe or resolves is not None:
                        raise self._unavailable(e) from None
                    self._store_error = str(e)
                    return await self._keep_unstored(op, actor, new)
                except Exception as e:
                    raise self._unavailable(e) from None
                self.version = version
                break
            self.state = self.stored = new
            await self._make_live(new)
            log.info("generation %d: %s", new.generation, new.change.summary())
            return new, new.change

    async def _run_unstored(self, op: Operation, if_match: str | None, etag_app: str | None,
                            actor: Actor) -> tuple[State, Change | None]:
        """``op`` while changes are in effect that the store has not taken: a safe one joins
        them; any other is refused (503), as the store cannot take it either."""
        new = next_state(self.state, op, None, etag_app, actor)
        if new is self.state:
            return new, None
        if if_match is not None and parse_etag(if_match) is not None:
            # The state in effect has no generation: no ETag names it.
            raise PreconditionFailed(
                f"If-Match: this replica serves {self._unstored_text()} on top of generation "
                f"{self.stored.generation}; no generation names that state until the store has "
                "taken them", "If-Match")
        if not op.safe:
            raise Unavailable(f"{self._store_error or 'the routing-state store cannot be written'}; "
                              f"changes are refused until it answers again (in effect but not "
                              f"stored yet: {self._unstored_text()})")
        return await self._keep_unstored(op, actor, new)

    async def _keep_unstored(self, op: Operation, actor: Actor, new: State) -> tuple[State, Change]:
        """Make ``new`` (``op`` run on the state in effect) live without storing it."""
        assert new.change is not None
        self._pending.append(Unstored(op, actor, self.state, new.change, utc_now()))
        live = self._in_effect(new)
        self.state = live
        await self._make_live(live)
        log.warning("%s: in effect, NOT STORED (%s); stored as soon as the store answers; lost if "
                    "this process stops before", new.change.summary(), self._store_error)
        self._schedule_retry()
        return live, new.change

    def _in_effect(self, state: State) -> State:
        """``state`` (the stored state with the unstored changes run on it) as it is served:
        under the stored generation and ETags, which are the last that name a state."""
        if not self._pending:
            return state
        return replace(state, generation=self.stored.generation,
                       app_generations=self.stored.app_generations)

    def _unstored_text(self) -> str:
        n = len(self._pending)
        return (f"{n} change{'s' if n > 1 else ''} not stored yet ("
                + "; ".join(p.summary() for p in self._pending) + ")")

    def unstored(self, app: str | None = None) -> list[dict[str, Any]]:
        """The changes in effect that the store has not taken (of ``app``), oldest first."""
        return [p.to_dict() for p in self._pending if app is None or app in p.change.apps]

    def unstored_rollback(self, app: str) -> dict[str, Any] | None:
        """The release of ``app`` that an unstored change closed (a rollback: only safe changes
        wait for the store), as the API shows it until it is stored: ``rolled_back``,
        ``"stored": false``, its ramp too, with the change."""
        release = self.stored.releases.get(app)
        if release is None or app in self.state.releases:
            return None
        unstored = self.unstored(app)
        if not unstored:
            return None
        shown = {**release.to_dict(), "status": "rolled_back", "stored": False,
                 "unstored": unstored}
        if release.ramp is not None:
            shown["ramp"] = {**release.ramp.to_dict(), "status": "rolled_back",
                             "reason": unstored[-1].get("reason") or release.ramp.reason}
        return shown

    def _schedule_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        while self._pending or self._conflicts:
            await asyncio.sleep(STORE_RETRY)
            try:
                async with self._lock:
                    await self._store_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storing the changes not stored yet failed")

    async def _store_pending(self) -> None:
        """Store what waits for the store, oldest first, each run again on the state the store
        holds (a conflict brings it); then serve the stored state with what is left on it."""
        assert self._store is not None
        for name, record in list(self._conflicts.items()):
            try:
                await self._store.keep_conflict(name, record["record"], record["entry"])
            except StoreError as e:
                self._store_error = str(e)
                break
            del self._conflicts[name]
        while self._pending:
            p = self._pending[0]
            try:
                new = rerun(p, self.stored)
            except RouterError as e:
                self._pending.pop(0)
                _dropped(p, e)
                continue
            if new is None:
                self._pending.pop(0)
                log.info("%s: already in the stored state (%s)", p.summary(), self.stored.name)
                continue
            assert new.change is not None
            try:
                version = await self._store.save(new.to_dict(), self.version, new.change.to_dict())
            except StoreConflict as e:
                await self._reload(e.current, live=False)
                continue
            except (StoreError, Unavailable) as e:
                self._store_error = str(e)
                break
            self.stored, self.version = new, version
            self._pending.pop(0)
            log.warning("generation %d: %s; stored", new.generation, new.change.summary())
        await self._refresh()

    async def _refresh(self) -> None:
        """Serve the stored state with the unstored changes run on it (a change that no longer
        applies is dropped, and said so)."""
        state, kept = self.stored, []
        for p in self._pending:
            try:
                new = rerun(p, state)
            except RouterError as e:
                _dropped(p, e)
                continue
            if new is None:
                log.info("%s: already in the stored state (%s)", p.summary(), self.stored.name)
                continue
            kept.append(p)
            state = new
        self._pending = kept
        live = self._in_effect(state)
        if live != self.state:
            self.state = live
            await self._make_live(live)

    def close(self) -> None:
        """The process stops: what the store has not taken is lost; say so."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._pending:
            log.error("stopping with %s: they are LOST; the store holds %s without them (a ramp "
                      "that judged its version failing judges it again and rolls it back again; "
                      "an operator's rollback or abort must be made again)", self._unstored_text(),
                      self.stored.name)
        for name in self._conflicts:
            log.error("stopping before conflict %s was written to %s: its state is LOST",
                      name, self.store_name)

    def preview(self, op: Operation, if_match: str | None = None,
                etag_app: str | None = None) -> State:
        """The state ``op`` would make of the current one, changing nothing (a dry run); the
        current state itself if it would change nothing."""
        return next_state(self.state, op, if_match, etag_app, ROUTER)

    async def history(self, app: str | None = None,
                      limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        """The newest ``limit`` history entries, newest first; only those of ``app`` if given.
        Changes in effect but not stored come first, without a generation."""
        if self._store is None:
            entries = list(self._history)
        else:
            try:
                entries = await self._store.history()
            except Exception as e:
                raise self._unavailable(e) from None
        entries = [p.to_dict() for p in reversed(self._pending)] + entries
        if app is not None:
            entries = [e for e in entries if app in e.get("apps", ())]
        return entries[:limit]

    async def adopt(self, data: dict[str, Any], version: int) -> bool:
        """A state another replica stored (from the store's watch); False if not newer."""
        async with self._lock:
            if version <= self.version:
                return False  # our own save coming back, or one a reload already brought
            try:
                state = State.from_dict(data, self.store_name)
            except ConfigError as e:
                log.error("ignored the stored state at version %d: %s", version, e)
                return False
            await self._switch(state, version)
            return True

    # -- following the store ------------------------------------------------------------------
    async def follow(self, secret: bytes | None) -> None:
        """Make every change another replica stores live here (a shared store); write back the
        newest state this replica holds if the store lost its data (with ``secret``, the sticky
        secret, if it came from the store). Runs until cancelled, or the store is closed."""
        store = self._store
        assert store is not None
        while not self._closed:
            try:
                async for data, version in store.watch(self.version):
                    await self.adopt(data, version)
                return  # the store has nothing to watch, or was closed
            except asyncio.CancelledError:
                raise
            except StoreLost:
                await self.recover(secret)
            except Exception:
                log.exception("following %s failed; starting again", store.name)
                await asyncio.sleep(1)

    async def _reload(self, current: tuple[dict[str, Any] | None, int] | None = None,
                      live: bool = True) -> None:
        """Take the store's state (``current`` if the conflict brought it); make it live unless
        ``live`` is False."""
        assert self._store is not None
        if current is not None:
            data, version = current
        else:
            try:
                data, version = await self._store.load()
            except Exception as e:
                raise self._unavailable(e) from None
        if data is None:
            # The state was deleted from the store: the next save writes ours again.
            self.version = 0
            return
        if version <= self.version:
            return
        try:
            state = State.from_dict(data, self.store_name)
        except ConfigError as e:
            raise Unavailable(f"the state in {self.store_name} is not valid: {e}") from None
        if live:
            await self._switch(state, version)
        else:
            self.stored, self.version = state, version

    async def _switch(self, state: State, version: int) -> None:
        self.stored, self.version = state, version
        if self._pending:
            await self._refresh()  # the unstored changes stay in effect on top of it
        else:
            self.state = state
            await self._make_live(state)
        what = state.change.summary() if state.change is not None else "-"
        log.info("generation %d from %s (version %d): %s", state.generation, self.store_name,
                 version, what)

    async def _make_live(self, state: State) -> None:
        result = self._apply(state)
        if asyncio.iscoroutine(result):
            await result

    @property
    def store_name(self) -> str:
        return self._store.name if self._store is not None else "memory"

    def _unavailable(self, e: Exception) -> Unavailable:
        if isinstance(e, StoreLost):
            reason = str(e)
        elif isinstance(e, StoreUnavailable):
            reason = f"{e}; changes are refused until it answers again"
        else:
            reason = f"cannot persist the routing state: {e}"
        return Unavailable(f"{reason} (the data plane keeps serving generation "
                           f"{self.state.generation})")


# How long a starting router waits for an unreachable shared store before giving up (exit 1):
# long enough for etcd and the routers to be started together, short enough that a wrong
# address is reported rather than waited on forever. A router never serves a state it could
# not read: the configuration's apps may be older than what the replicas serve.
STORE_START_TIMEOUT = 10.0
# Reading the store at start is part of the router's start (its logger, not the admin API's).
_start_log = logging.getLogger("router")


async def load_state(store: Store, initial: State, source: str | None) -> tuple[State, int, bool]:
    """The stored state, its version, and whether it was there before; ``initial`` (the apps of
    the configuration file ``source``) seeds an empty store. Once the store has a state, it wins
    over the configuration (``docs/state.md``)."""
    deadline = asyncio.get_running_loop().time() + STORE_START_TIMEOUT
    waited = False
    while True:
        try:
            data, version = await store.load()  # StoreError: refuse to start on a bad state
            if data is None:
                # Seed it, so that every replica serves one state from the start; if another
                # replica seeded it first, its state wins.
                assert initial.change is not None
                try:
                    saved = await store.save(initial.to_dict(), 0, initial.change.to_dict())
                except StoreConflict:
                    continue
                _start_log.info("seeded %s from %s: generation 1, %d apps", store.name,
                                source or "the defaults", len(initial.apps))
                return initial, saved, False
            break
        except StoreUnavailable as e:
            if asyncio.get_running_loop().time() > deadline:
                raise
            if not waited:
                _start_log.warning("waiting up to %.0f s for the routing-state store: %s",
                                   STORE_START_TIMEOUT, e)
            waited = True
            await asyncio.sleep(0.5)
    state = State.from_dict(data, store.name)
    _start_log.info("routing state from %s: generation %d", store.name, state.generation)
    return state, version, True


def _dropped(p: Unstored, e: RouterError) -> None:
    log.error("%s: not stored and no longer in effect: %s", p.summary(), e.message)


class StateCollector:
    """The routing state's own series: unstored changes, conflicts found, a stale secret."""

    def __init__(self, manager: StateManager, store: Store) -> None:
        self._manager = manager
        self._store = store

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "router_store_pending_changes", "Changes in effect in the data plane that the store "
            "has not taken yet (a rollback or abort made while it could not be written)")
        pending.add_metric([], len(self._manager.unstored()))
        conflicts = CounterMetricFamily(
            "router_store_conflicts", "States with changes the store no longer had, found by "
            "this replica after the store lost its data and kept as conflicts to resolve")
        conflicts.add_metric([], self._manager.conflicts_found)
        stale = GaugeMetricFamily(
            "router_sticky_secret_stale", "1 if this replica signs and checks cookies with another "
            "secret than the one in the shared store (it started while the store was empty): "
            "restart it")
        stale.add_metric([], 1 if self._store.secret_stale else 0)
        yield from (pending, conflicts, stale)
