"""Data loss in the etcd store, a part of ``router.control.store.etcd.EtcdStore``: noticing it in every
answer (another cluster, a revision gone back, the state key vanished or created anew), refusing
changes meanwhile, writing back what the replicas hold (``reseed``) and the conflict records
(``conflicts``, ``keep_conflict``, ``drop_conflict``). docs/etcd.md walks through it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from aetcd.exceptions import ClientError

from .base import StoreError, StoreLost

log = logging.getLogger("router.store")

# After a data loss, how long a replica refuses changes after noticing it: every replica notices
# within about two probes of etcd's return (a reconnect of at most 1 s, then a probe), and
# offers its state at once; the state with the highest generation is the one served after.
RESEED_HOLD = 3.0


class EtcdDataLoss:
    """A mixin of ``EtcdStore``: its client, keys and what it has seen of etcd."""

    def _seen(self, header: Any, floor: int) -> None:
        """Every answer's header: another cluster, or a revision below ``floor`` -- the newest
        revision known when the request was sent -- is a data loss. (Answers to requests sent
        at the same time may arrive in any order: only one sent after a revision was seen must
        be at or above it.)"""
        if self.lost is not None or header is None:
            return
        if not header.cluster_id:
            pass  # the header of an operation inside a transaction carries only the revision
        elif self._cluster is None:
            self._cluster = header.cluster_id
        elif header.cluster_id != self._cluster:
            self._lose(f"etcd's cluster ID changed from {self._cluster:x} to {header.cluster_id:x}")
            return
        if header.revision < floor:
            self._lose(f"etcd's revision went back from {floor} to {header.revision} "
                       "(restarted with an empty or older data directory?)")
            return
        self._revision = max(self._revision, header.revision)

    def _seen_state(self, created: int) -> None:
        """The state key's create_revision (0: absent) as an answer showed it."""
        if self.lost is not None:
            return
        if created == 0 and self._state_created:
            self._lose(f"the state key {self._key.decode()} vanished")
        elif created and self._state_created and created != self._state_created:
            self._lose(f"the state key {self._key.decode()} was created anew at revision "
                       f"{created} (it was created at {self._state_created})")
        elif created:
            self._state_created = created

    def _lose(self, cause: str) -> None:
        self.lost = cause
        self.up = False
        self._lost_at = asyncio.get_running_loop().time()
        log.error("%s: data loss: %s; changes are refused until the replicas have written back "
                  "the newest state they hold", self.name, cause)
        if self._watching is not None:
            # The watch waits for revisions of the lost history: end it, so that the router
            # re-seeds (StoreLost from watch()).
            asyncio.get_running_loop().create_task(cancel_quietly(self._watching))

    def _refused(self) -> StoreLost:
        return StoreLost(f"the routing-state store {self.name} lost its data ({self.lost}); "
                         "changes are refused until the replicas have written back the newest "
                         "state they hold")

    async def reseed(self, data: dict[str, Any], secret: bytes | None,
                     write_over: Callable[[dict[str, Any]], bool]) -> tuple[dict[str, Any], int]:
        """Write back ``data`` (and ``secret``, the sticky secret this replica got from etcd;
        None: it uses its own file) when etcd holds no state, one that is not valid, or one
        ``write_over`` says ours replaces; then, RESEED_HOLD after the loss was noticed, the
        state etcd holds and its version. Retries while etcd is unreachable."""
        generation = data.get("generation", 0)
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        tx = self._client.transactions
        puts = [tx.put(self._key, payload)]
        if secret is not None:
            puts.append(tx.put(self._secret_key, secret))
        if isinstance(data.get("change"), dict) and data["change"].get("generation") == generation:
            # The entry of the change that made it: the history starts again from there.
            puts.append(tx.put(self._history_key(generation), json.dumps(data["change"]).encode()))
        while True:
            got = await self._read_state()
            kv = next((kv for kv in got if kv.key == self._key), None)
            if kv is not None:
                try:
                    held = self._decode(kv.value, kv.mod_revision)
                except StoreError as e:
                    log.error("%s: %s; writing ours over it", self.name, e)
                else:
                    if not write_over(held):
                        log.info("%s: holds generation %s, which ours (%s) does not replace",
                                 self.name, held.get("generation"), generation)
                        break
            try:
                ok, _ = await self._client.transaction(
                    compare=[tx.mod(self._key) == (kv.mod_revision if kv is not None else 0)],
                    success=puts, failure=[])
            except (ClientError, asyncio.TimeoutError) as e:
                self._unreachable(e)
                await self._pause()
                continue
            if ok:
                log.warning("%s: wrote back generation %d%s", self.name, generation,
                            " and the sticky secret" if secret is not None else "")
                break
        await self._pause(max(0.0, self._lost_at + RESEED_HOLD - asyncio.get_running_loop().time()))
        got = await self._read_state()
        kv = next((kv for kv in got if kv.key == self._key), None)
        if kv is None:  # lost again meanwhile: offer again
            return await self.reseed(data, secret, write_over)
        state = self._decode(kv.value, kv.mod_revision)
        # A new history: what is seen from now on is compared with this.
        self._cluster, self._revision = got.header.cluster_id, got.header.revision
        self._state_created = kv.create_revision
        cause, self.lost = self.lost, None
        self._reached()
        log.warning("%s: re-seeded after the data loss (%s): generation %s at revision %d; "
                    "changes are accepted again", self.name, cause, state.get("generation"),
                    kv.mod_revision)
        return state, kv.mod_revision

    async def conflicts(self) -> list[dict[str, Any]]:
        got = await self._call(lambda: self._client.get_prefix(self._conflict_prefix))
        records = []
        for kv in got:
            try:
                record = json.loads(kv.value)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                records.append(record)
            else:
                log.error("%s: %s is not a conflict record; skipped", self.name, kv.key.decode())
        return records

    async def keep_conflict(self, name: str, record: dict[str, Any],
                            entry: dict[str, Any] | None) -> None:
        if self.lost is not None:
            raise self._refused()
        tx = self._client.transactions
        key = self._conflict_prefix + name.encode()
        # Create-if-absent, each: the replicas that held the same state write it once.
        await self._call(lambda: self._client.transaction(
            compare=[tx.create(key) == 0], success=[tx.put(key, json.dumps(record).encode())],
            failure=[]))
        if entry is not None:
            history = self._history_key(int(entry["generation"]))
            await self._call(lambda: self._client.transaction(
                compare=[tx.create(history) == 0],
                success=[tx.put(history, json.dumps(entry).encode())], failure=[]))

    async def drop_conflict(self, name: str) -> None:
        await self._call(lambda: self._client.delete(self._conflict_prefix + name.encode()))


async def cancel_quietly(watch: Any) -> None:
    try:
        await watch.cancel()
    except Exception:  # the stream is already gone
        pass
