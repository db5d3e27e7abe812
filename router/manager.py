"""Applying operations to the routing state: ``StateManager`` owns the current state, runs one
operation at a time, and persists, then applies, then answers.

``StateManager.change`` checks ``If-Match``, computes the next state (``next_state``), writes it
to the store with its history entry, makes it live in the data plane, and only then answers -- so
a rejected call leaves the state exactly as it was, and an accepted one is stored and serving
before the caller hears of it. An operation that changes nothing is not a change: no new
generation, no write, no history entry.

With a store shared by several replicas (etcd), another replica may have changed the state
since this one last read it. The save is conditional on the store's version being the one this
state came from; when it is not, the manager reads the newer state, makes it live, and runs the
operation again on it -- so the operation's checks (and ``If-Match``, which then answers 412)
always judge the state it actually changes, and no replica's update is lost. The generation is
part of the stored state, so every replica shows the same generation for the same state.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Any, Callable

from .config import ConfigError
from .errors import BadRequest, Conflict, PreconditionFailed, Unavailable
from .history import HISTORY_LIMIT, ROUTER, Actor, Change, describe, utc_now
from .state import Operation, State
from .store import Store, StoreConflict, StoreLost, StoreUnavailable

log = logging.getLogger("router.admin")


def parse_etag(value: str) -> int | None:
    """``"12"`` or ``W/"12"`` -> 12; ``*`` -> None (matches anything)."""
    v = value.strip()
    if v == "*":
        return None
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not v.isdigit():
        raise BadRequest(f"If-Match must be an ETag like \"12\" or * (got {value!r})", "If-Match")
    return int(v)


# A change that lost the race against another replica's is run again on the newer state. The
# first retry is immediate; then a random pause of up to 2, 4, ... 64 ms lets a replica that
# keeps losing to one writing back to back (a script looping over changes) get its turn. After
# RETRY_FOR seconds of losing the caller is told (409) rather than kept waiting.
RETRY_FOR = 2.0
_MAX_PAUSE = 0.064


class StateManager:
    """Owns the current state; serialises changes; persists, then applies, then answers.

    ``version`` is the store's version of ``state`` (0: not stored yet).
    """

    def __init__(self, state: State, store: Store | None,
                 apply: Callable[[State], Any], version: int = 0) -> None:
        self.state = state
        self.version = version
        self._store = store
        self._apply = apply
        self._lock = asyncio.Lock()
        # The history, newest first, when there is no store to keep it.
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LIMIT)
        if store is None and state.change is not None:
            self._history.append(state.change.to_dict())

    async def change(self, op: Operation, if_match: str | None = None,
                     etag_app: str | None = None, actor: Actor = ROUTER) -> State:
        """Run ``op`` (see :meth:`run`); the state after it."""
        return (await self.run(op, if_match, etag_app, actor))[0]

    async def run(self, op: Operation, if_match: str | None = None, etag_app: str | None = None,
                  actor: Actor = ROUTER) -> tuple[State, Change | None]:
        """Run ``op`` as asked by ``actor``: the state after it, and the history entry it added
        (None: it changed nothing, and the state and its generation are as they were)."""
        async with self._lock:
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
                    version = await self._store.save(new.to_dict(), self.version,
                                                     new.change.to_dict())
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
                except Exception as e:
                    raise self._unavailable(e) from None
                self.version = version
                break
            self.state = new
            await self._make_live(new)
            log.info("generation %d: %s", new.generation, new.change.summary())
            return new, new.change

    def preview(self, op: Operation, if_match: str | None = None,
                etag_app: str | None = None) -> State:
        """The state ``op`` would make of the current one, changing nothing (a dry run); the
        current state itself if it would change nothing."""
        return next_state(self.state, op, if_match, etag_app, ROUTER)

    async def history(self, app: str | None = None,
                      limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        """The newest ``limit`` history entries, newest first; only those of ``app`` if given."""
        if self._store is None:
            entries = list(self._history)
        else:
            try:
                entries = await self._store.history()
            except Exception as e:
                raise self._unavailable(e) from None
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

    async def reseeded(self, data: dict[str, Any], version: int) -> None:
        """The store lost its data and was written back: ``data`` at ``version`` is what it
        holds now -- this replica's state, or a newer one another replica offered."""
        async with self._lock:
            try:
                state = State.from_dict(data, self.store_name)
            except ConfigError as e:
                log.error("the re-seeded state at version %d is not valid: %s", version, e)
                self.version = version
                return
            if state != self.state and state.generation >= self.state.generation:
                await self._switch(state, version)
            else:
                self.version = version

    async def _reload(self, current: tuple[dict[str, Any] | None, int] | None = None) -> None:
        """Make the store's state (``current`` if the conflict brought it) live here."""
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
        await self._switch(state, version)

    async def _switch(self, state: State, version: int) -> None:
        self.state, self.version = state, version
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


def next_state(cur: State, op: Operation, if_match: str | None, etag_app: str | None,
                actor: Actor) -> State:
    """The state ``op`` makes of ``cur`` (``cur`` itself if it changes nothing); a RouterError
    if refused."""
    # The operation first: a request that would be refused anyway (bad body, unknown service,
    # conflict) gets that answer rather than a 412.
    outcome = op(cur)
    apps, releases = outcome[0], outcome[1]
    discovered = outcome[2] if len(outcome) == 3 else cur.discovered
    if if_match is not None:
        want = parse_etag(if_match)
        if want is not None:
            have = (cur.app_generations.get(etag_app, cur.generation)
                    if etag_app is not None and cur.has_app(etag_app) else cur.generation)
            if want != have:
                raise PreconditionFailed(
                    f"stale If-Match: {want} is not the current generation {have}", "If-Match")
    if apps == cur.apps and releases == cur.releases and discovered == cur.discovered:
        return cur
    gen = cur.generation + 1
    touched, changes = describe(cur.apps, cur.releases, apps, releases)
    names = {a.name for a in apps}
    app_gens = {n: g for n, g in cur.app_generations.items() if n in names}
    app_gens.update((n, gen) for n in touched if n in names)
    change = Change(gen, utc_now(), actor.client, actor.token, op.name, touched, changes,
                    op.reason)
    return State(gen, apps, dict(releases), app_gens, change, dict(discovered))
