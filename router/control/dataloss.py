"""Data loss in a shared store, a part of ``router.control.manager.StateManager``: the store is written
back from what the replicas hold (``recover``); a replica whose state holds changes the store's
does not keeps it as a *conflict* record in the store, which an operator reads (``conflicts``)
and settles (``resolve``). docs/etcd.md tells the story.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal

from ..config import ConfigError
from ..errors import Conflict, NotFound
from .history import ROUTER, Actor, Change, describe, utc_now
from .state import State, keep_state
from .store import StoreError

log = logging.getLogger("router.admin")


class DataLoss:
    """A mixin of ``StateManager``: its store, lock, state and unstored changes."""

    async def recover(self, secret: bytes | None) -> None:
        """The store lost its data (``StoreLost``): offer the stored state this replica holds
        (written back unless the store holds one that has every change of it), then follow
        what the store holds once every replica had the time to offer. If that lacks changes of
        ours, ours is kept in the store as a conflict (docs/etcd.md)."""
        store = self._store
        assert store is not None
        mine = self.stored
        cause = getattr(store, "lost", None) or "the store lost its data"

        def write_over(held: dict[str, Any]) -> bool:
            try:
                theirs = State.from_dict(held, store.name)
            except ConfigError as e:
                log.error("%s: the state it holds is not valid (%s); writing ours over it",
                          store.name, e)
                return True
            if theirs.holds(mine):
                return False
            return mine.holds(theirs) or theirs.bare_seed

        offer = replace(mine, written_back=utc_now())
        data, version = await store.reseed(offer.to_dict(), secret, write_over)
        async with self._lock:
            try:
                theirs = State.from_dict(data, store.name)
            except ConfigError as e:
                log.error("the re-seeded state at version %d is not valid: %s", version, e)
                self.version = version
                return
            mine = self.stored
            if not theirs.holds(mine) and not mine.bare_seed:
                self._found_conflict(mine, theirs, cause)
            await self._switch(theirs, version)
            if self._pending or self._conflicts:
                await self._store_pending()

    def _found_conflict(self, mine: State, theirs: State, cause: str) -> None:
        name = f"{mine.generation}-{mine.line}"
        self.conflicts_found += 1
        record = {"name": name, "state": mine.to_dict(), "found_at": utc_now(),
                  "found_by": self.replica, "cause": cause,
                  "store": {"generation": theirs.generation, "line": theirs.line}}
        entry = None
        if mine.change is not None and mine.change.generation == mine.generation:
            entry = {**mine.change.to_dict(), "conflict": name}
        self._conflicts[name] = {"record": record, "entry": entry}
        what = mine.change.summary() if mine.change is not None else "-"
        log.error("CONFLICT after %s lost its data (%s): this replica holds %s (last change: %s), "
                  "whose changes %s does not have: it holds %s, made since by a replica that was "
                  "behind. This replica now serves the store's state and keeps its own as conflict "
                  "%s: `routerctl conflicts` shows it, `routerctl conflicts resolve %s --keep "
                  "conflict` (or `--keep store`) chooses", self.store_name, cause, mine.name, what,
                  self.store_name, theirs.name, name, name)
        self._schedule_retry()

    async def _conflict_records(self) -> dict[str, tuple[dict[str, Any], bool]]:
        """name -> (record, whether the store has it)."""
        records: dict[str, tuple[dict[str, Any], bool]] = {}
        if self._store is not None and self._store.shared:
            async with self._lock:
                if self._conflicts:
                    await self._store_pending()
            try:
                for record in await self._store.conflicts():
                    records[record["name"]] = (record, True)
            except StoreError as e:
                raise self._unavailable(e) from None
        for name, held in self._conflicts.items():
            records.setdefault(name, (held["record"], False))
        return records

    async def conflicts(self) -> list[dict[str, Any]]:
        """The conflict records, each with what keeping it would change."""
        out = []
        for name, (record, stored) in sorted((await self._conflict_records()).items()):
            shown = {k: record.get(k) for k in ("name", "found_at", "found_by", "cause", "store")}
            shown["stored"] = stored
            try:
                kept = State.from_dict(record.get("state"), f"conflict {name}")
            except ConfigError as e:
                out.append({**shown, "error": str(e)})
                continue
            touched, differs = describe(self.state.apps, self.state.releases, kept.apps,
                                        kept.releases)
            if len(touched) == 1:  # describe names the apps only when there are several
                differs = tuple(f"{touched[0]}: {line}" for line in differs)
            out.append({**shown, "generation": kept.generation, "line": kept.line,
                        "change": kept.change.to_dict() if kept.change is not None else None,
                        "keeping_it_changes": list(differs)})
        return out

    async def resolve(self, name: str, keep: Literal["conflict", "store"],
                      if_match: str | None = None,
                      actor: Actor = ROUTER) -> tuple[State, Change | None]:
        """Settle conflict ``name``: ``keep="conflict"`` makes its state the current one (one
        change, ``keep_conflict``, that removes the record in the same step); ``keep="store"``
        removes the record and changes nothing."""
        records = await self._conflict_records()
        if name not in records:
            raise NotFound(f"no conflict {name!r}", "conflict")
        record, stored = records[name]
        if keep == "conflict":
            try:
                kept = State.from_dict(record.get("state"), f"conflict {name}")
            except ConfigError as e:
                raise Conflict(f"conflict {name}: its state is not valid: {e}", "conflict") from None
            op = replace(keep_state(kept), reason=(
                f"kept {kept.name}, held by {record.get('found_by')} when "
                f"{record.get('cause')}, in place of {self.state.name}"))
            state, change = await self.run(op, if_match, None, actor,
                                           resolves=name if stored else None)
            if change is not None:
                self._conflicts.pop(name, None)
                log.warning("conflict %s resolved by %s: its state kept, as generation %d", name,
                            actor.client, state.generation)
                return state, change
            # Its state is the current one already: only the record goes.
        async with self._lock:
            self._conflicts.pop(name, None)
            if stored:
                assert self._store is not None
                try:
                    await self._store.drop_conflict(name)
                except StoreError as e:
                    raise self._unavailable(e) from None
        log.warning("conflict %s resolved by %s: the store's state kept (%s); the conflict's "
                    "state is dropped", name, actor.client, self.state.name)
        return self.state, None
