"""The etcd store: one routing state shared by several router replicas (docs/etcd.md).

Layout under the prefix (``/router`` unless the URL names another)::

    <prefix>/state    the routing state, JSON (the same mapping the file store writes as YAML)
    <prefix>/secret   the cookie-signing secret, hex; created once by whichever replica asks first
    <prefix>/history/<generation, 12 digits>
                      the history entry of each change (router.control.history), the newest
                      HISTORY_LIMIT, written in the transaction that writes its state
    <prefix>/lead/<role>
                      who holds a role among the replicas (``lead``: the replica that drives
                      the guarded ramps), attached to that replica's lease: it disappears
                      when the replica stops or stops refreshing it
    <prefix>/conflicts/<generation>-<line>
                      a state a replica held after a data loss that the re-seeded store did not
                      have (router.control.dataloss: ``recover``), until an operator resolves it

The whole state is one key, so one compare covers it: a save is the transaction
``if mod_revision(state) == <the revision this state was built on> then put``. Two replicas
changing the state at once both build on revision R; etcd applies the first transaction and
refuses the second, whose replica reloads and tries again on the new state -- no update is lost.
The version the rest of the router sees is that ``mod_revision``.

Every replica watches the prefix from the revision its state came from. A watch that breaks (etcd
restarted, connection lost) is created again from the revision after the last event seen, so
etcd replays whatever happened meanwhile; if etcd has compacted that history away, the store
reads the current state instead. Either way no change is missed and none is applied twice.

**Data loss.** An etcd restarted with an empty (or older) data directory answers as if nothing
had happened, and its revisions start again from 1. Every answer's header is checked: a cluster
ID that changes, or a revision lower than one already seen, means the data is gone; so does the
state key vanishing, or being created anew, under a running replica. The store then says so
(``router_store_up`` 0, a log line naming the cause), refuses changes (:class:`StoreLost`), and
the replicas write back what they hold (:meth:`EtcdStore.reseed`, in ``router.control.store.etcdloss``):
each offers its state and the sticky secret, a state that has every change of the one there
replaces it, and after ``RESEED_HOLD`` (every replica has noticed and offered by then) all of
them serve what etcd holds and accept changes again; a replica whose state has changes that one
lacks keeps it as a conflict record. docs/etcd.md walks through it.

The client is ``aetcd`` (asyncio over gRPC); see the README for why. Its calls fail fast while
etcd is down (the gRPC channel is in TRANSIENT_FAILURE), and the channel's reconnect backoff is
capped at one second so that a replica notices etcd's return within about a second. While
watching, a probe reads a small key every second, so that ``up`` (the ``router_store_up`` gauge)
also turns 0 when etcd hangs without closing the connection, and 1 again when it answers.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import os
from typing import Any, AsyncGenerator, AsyncIterator, Callable
from urllib.parse import urlsplit

# gRPC's fork handlers are for children that go on using gRPC; ours (--workers) exec a fresh
# interpreter at once, and the handlers only log "skipping fork() handlers" at each start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import aetcd  # noqa: E402  (after the environment above: gRPC reads it when loaded)
from aetcd.exceptions import ClientError, RevisionCompactedError, WatchTimeoutError  # noqa: E402
from aetcd.rtypes import EventKind  # noqa: E402

from ..history import HISTORY_LIMIT
from .base import Store, StoreConflict, StoreError, StoreUnavailable
from .etcdloss import EtcdDataLoss, cancel_quietly

__all__ = ["DEFAULT_PREFIX", "EtcdStore", "parse_etcd_url"]

log = logging.getLogger("router.store")

DEFAULT_PREFIX = "/router"
DEFAULT_PORT = 2379  # etcd's client port
# Per call. etcd on a healthy network answers in milliseconds; a call that hangs this long is
# treated as "etcd unreachable" (the admin call gets 503) rather than holding the admin API.
CALL_TIMEOUT = 3.0
# Between two attempts to re-create a broken watch.
RETRY_INTERVAL = 0.25
# Between two reachability probes while watching: a watch stream that is merely quiet says
# nothing about whether etcd would answer a change (it may hang, or have lost its quorum), and
# router_store_up should say so within about a second, in both directions.
PROBE_INTERVAL = 1.0
_CHANNEL_OPTIONS = {
    # gRPC's defaults back off up to 120 s between reconnects; a replica must catch up with etcd
    # within about a second of its return.
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Find a silently dead connection (a partition, not a closed socket) in ~15 s. etcd refuses
    # pings more often than every 5 s (--grpc-keepalive-min-time).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
}


def parse_etcd_url(url: str) -> tuple[str, int, str]:
    """``etcd://HOST[:PORT][/prefix]`` -> (host, port, prefix); ``ValueError`` with the reason."""
    parts = urlsplit(url)
    if parts.scheme != "etcd":
        raise ValueError(f"not an etcd:// URL: {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: etcd://HOST:PORT[/prefix] takes no user, query or fragment")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number 1..65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: etcd://HOST:PORT[/prefix] needs a host")
    prefix = parts.path.rstrip("/") or DEFAULT_PREFIX
    return host, port, prefix


class EtcdStore(EtcdDataLoss, Store):
    shared = True

    def __init__(self, host: str, port: int, prefix: str = DEFAULT_PREFIX,
                 timeout: float = CALL_TIMEOUT) -> None:
        shown = f"[{host}]" if ":" in host else host
        self.name = f"etcd://{shown}:{port}{prefix}"
        self.up = False  # until the first answer
        self._prefix = (prefix + "/").encode()
        self._key = self._prefix + b"state"
        self._secret_key = self._prefix + b"secret"
        self._history_prefix = self._prefix + b"history/"
        self._conflict_prefix = self._prefix + b"conflicts/"
        self._secret: bytes | None = None  # the sticky secret this process took from etcd
        self._client = aetcd.Client(shown, port, timeout=timeout, options=_CHANNEL_OPTIONS)
        self._closed = asyncio.Event()
        # What has been seen of this etcd: a data loss shows as one of them going back.
        self._cluster: int | None = None
        self._revision = 0
        self._state_created = 0  # create_revision of the state key; 0: not seen yet
        self.lost: str | None = None  # why the store counts as having lost its data
        self._lost_at = 0.0
        self._watching: Any = None
        self._leases: dict[str, Any] = {}  # role -> the aetcd lease this replica holds it by

    @classmethod
    def from_url(cls, url: str) -> "EtcdStore":
        return cls(*parse_etcd_url(url))

    def __repr__(self) -> str:
        return f"EtcdStore({self.name!r})"

    # -- reachability ------------------------------------------------------------------------
    def _reached(self) -> None:
        if self.lost is not None:
            return  # reachable, but not up until the replicas have re-seeded it
        if not self.up:
            log.info("%s: reachable", self.name)
        self.up = True

    def _unreachable(self, exc: BaseException) -> StoreUnavailable:
        if self.up:
            log.warning("%s: unreachable: %s", self.name, _reason(exc))
        self.up = False
        return StoreUnavailable(f"the routing-state store {self.name} is unreachable: {_reason(exc)}")

    # -- the interface -----------------------------------------------------------------------
    async def load(self) -> tuple[dict[str, Any] | None, int]:
        data, version, _ = await self._load()
        return data, version

    async def _load(self) -> tuple[dict[str, Any] | None, int, int]:
        """The document, its version, and the store's revision at the time of reading."""
        try:
            # A range read, not a get: its header carries the store revision even when the
            # state key does not exist yet, and the watch resumes after that revision.
            floor = self._revision
            got = await self._client.get_prefix(self._key)
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        self._seen(got.header, floor)
        revision = got.header.revision
        for kv in got:
            if kv.key == self._key:
                self._seen_state(kv.create_revision)
                return self._decode(kv.value, kv.mod_revision), kv.mod_revision, revision
        self._seen_state(0)
        return None, 0, revision

    async def save(self, data: dict[str, Any], expected_version: int,
                   entry: dict[str, Any] | None = None, resolves: str | None = None) -> int:
        if self.lost is not None:
            raise self._refused()
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        tx = self._client.transactions
        writes = [tx.put(self._key, payload)]
        if entry is not None:
            # In the same transaction: the entry exists exactly when its state does. The one
            # HISTORY_LIMIT generations older goes (generations grow by one per change).
            generation = int(entry["generation"])
            writes += [tx.put(self._history_key(generation), json.dumps(entry).encode()),
                       tx.delete(self._history_key(generation - HISTORY_LIMIT))]
        if resolves is not None:
            writes.append(tx.delete(self._conflict_prefix + resolves.encode()))
        try:
            # mod_revision of a key that does not exist is 0: expected_version 0 creates. On a
            # conflict the same transaction reads the newer state: one round trip, not two, before
            # the caller can try again -- which keeps a replica from losing every race to one
            # that is writing back to back.
            floor = self._revision
            ok, responses = await self._client.transaction(
                compare=[tx.mod(self._key) == expected_version],
                success=writes,
                # The secret too: its header shows a data loss even when the state is gone.
                failure=[tx.get(self._key), tx.get(self._secret_key)],
            )
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        if ok:
            header = responses[0].response_put.header
            self._seen(header, floor)
            if expected_version == 0:
                self._seen_state(header.revision)  # created by this put
            return int(header.revision)
        current: tuple[dict[str, Any] | None, int] | None = (None, 0)
        state = responses[0] if responses else []
        for _, kv in state + (responses[1] if len(responses) > 1 else []):
            self._seen(kv.header, floor)
        if expected_version and not state:
            self._seen_state(0)  # built on a state that is not there any more
        for value, kv in state:
            self._seen_state(kv.create_revision)
            try:
                current = self._decode(value, kv.mod_revision), kv.mod_revision
            except StoreError:
                current = None  # let the caller load it and see the error
        if self.lost is not None:
            raise self._refused()
        raise StoreConflict(f"{self.name}: the state changed after revision {expected_version}",
                            current)

    def _history_key(self, generation: int) -> bytes:
        # Zero-padded: the keys sort as the generations do.
        return self._history_prefix + b"%012d" % generation

    async def history(self) -> list[dict[str, Any]]:
        try:
            got = await self._client.get_prefix(self._history_prefix, sort_order="descend")
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        entries = []
        for kv in got:
            try:
                entries.append(json.loads(kv.value))
            except ValueError:
                log.error("%s: %s is not a history entry; skipped", self.name, kv.key.decode())
        return entries[:HISTORY_LIMIT]

    async def secret(self) -> bytes:
        fresh = binascii.hexlify(os.urandom(32))
        tx = self._client.transactions
        try:
            # Create if absent, else read: replicas starting together all end with the winner's.
            floor = self._revision
            ok, responses = await self._client.transaction(
                compare=[tx.create(self._secret_key) == 0],
                success=[tx.put(self._secret_key, fresh)],
                failure=[tx.get(self._secret_key)],
            )
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        if ok:
            self._seen(responses[0].response_put.header, floor)
            log.info("%s: created the sticky secret", self.name)
            self._secret = fresh
            return fresh
        self._seen(responses[0][0][1].header, floor)
        value = bytes(responses[0][0][0]).strip()
        if len(value) < 16:
            raise StoreError(f"{self.name}: {self._secret_key.decode()}: the sticky secret is "
                             "shorter than 16 bytes")
        self._secret = value
        return value

    def _secret_written(self, value: bytes) -> None:
        """The watch saw the secret key written: another replica wrote its secret back after a
        data loss. A process that created the one it uses while etcd was empty now differs."""
        if self._secret is None or bytes(value).strip() == self._secret or self.secret_stale:
            return
        self.secret_stale = True
        log.error("%s: the sticky secret was replaced (written back by another replica after "
                  "etcd lost its data): this replica keeps the one it took when it started, so "
                  "cookies it issues are not honoured by the other replicas and theirs not here "
                  "(router_sticky_secret_stale 1); restart it to take the shared one", self.name)

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        key = self._prefix + b"lead/" + role.encode()
        tx = self._client.transactions
        try:
            lease = self._leases.pop(role, None)
            if lease is not None:
                reply = await self._client.refresh_lease(lease.id)
                if reply is not None and reply.TTL > 0:
                    self._leases[role] = lease
                    self._reached()
                    return True  # the key lives as long as the lease
                # Expired (this replica stalled, or etcd lost it): taken afresh below.
            if await self._client.get(key) is not None:
                self._reached()
                return False  # another replica holds it
            # Create-if-absent with a fresh lease: of replicas asking at once, one wins.
            lease = await self._client.lease(max(1, round(ttl)))
            ok, _ = await self._client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, holder.encode(), lease=lease)],
                failure=[],
            )
            if not ok:
                await self._client.revoke_lease(lease.id)
                self._reached()
                return False
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        self._leases[role] = lease
        log.info("%s: %s holds %s", self.name, holder, role)
        return True

    async def watch(self, from_version: int) -> AsyncIterator[tuple[dict[str, Any], int]]:
        probe = asyncio.get_running_loop().create_task(self._probe())
        events = self._watch(from_version)
        try:
            async for item in events:
                yield item
        finally:
            probe.cancel()
            await events.aclose()

    async def _probe(self) -> None:
        while not self._closed.is_set():
            try:
                # A linearizable read, answered only with a quorum behind it: the state key
                # without its value, whose header and create_revision show a data loss.
                floor = self._revision
                got = await self._client.get_prefix(self._key, keys_only=True)
            except (ClientError, asyncio.TimeoutError) as e:
                self._unreachable(e)
            else:
                self._reached()
                self._seen(got.header, floor)
                self._seen_state(next((kv.create_revision for kv in got if kv.key == self._key), 0))
            await self._pause(PROBE_INTERVAL)

    async def _watch(self, from_version: int) -> AsyncGenerator[tuple[dict[str, Any], int], None]:
        seen = from_version      # the version of the newest document delivered (or started from)
        resume = from_version + 1  # the first revision not yet read
        compacted = False
        while not self._closed.is_set():
            if self.lost is not None:
                raise self._refused()
            if compacted:
                # The history from ``resume`` on is gone: read the current state instead, and
                # watch from the revision of that read.
                try:
                    data, version, revision = await self._load()
                except StoreUnavailable:
                    await self._pause()
                    continue
                log.info("%s: history compacted; read the state at revision %d", self.name, revision)
                compacted = False
                resume = revision + 1
                if data is not None and version > seen:
                    seen = version
                    yield data, version
            try:
                watch = await self._client.watch_prefix(self._prefix, start_revision=resume)
            except (RevisionCompactedError, WatchTimeoutError):
                # A timeout too: etcd may be hanging, or may have refused a compacted start
                # revision in a way aetcd reports only as a timeout. Reading the state tells
                # which, and is right either way.
                compacted = True
                continue
            except (ClientError, asyncio.TimeoutError) as e:
                self._unreachable(e)
                await self._pause()
                continue
            self._reached()
            self._watching = watch
            try:
                if self.lost is not None:
                    # Lost while the watch was being created, when _lose had no watch to end:
                    # this one would wait for revisions of the lost history, for ever.
                    continue
                async for event in watch:
                    kv = event.kv
                    resume = kv.mod_revision + 1
                    if (kv.key == self._secret_key and event.kind != EventKind.DELETE
                            and kv.version > 1):
                        # Written over (a created one is version 1: in an etcd that lost its
                        # data, the secret a replica started meanwhile made).
                        self._secret_written(kv.value)
                    if kv.key != self._key:
                        continue
                    if event.kind == EventKind.DELETE:
                        self._seen_state(0)
                        break
                    self._seen_state(kv.create_revision)
                    # The newest revision known: an etcd that comes back empty answers below it.
                    self._revision = max(self._revision, kv.mod_revision)
                    if self.lost is not None:
                        break
                    try:
                        data = self._decode(kv.value, kv.mod_revision)
                    except StoreError as e:
                        log.error("%s: ignored: %s", self.name, e)
                        continue
                    seen = kv.mod_revision
                    yield data, seen
            except RevisionCompactedError:
                # etcd creates the watch, then cancels it with the compaction revision.
                compacted = True
            except (ClientError, asyncio.TimeoutError) as e:
                if not self._closed.is_set():
                    self._unreachable(e)
                    await self._pause()
            finally:
                self._watching = None
                await cancel_quietly(watch)

    async def _call(self, call: Callable[[], Any]) -> Any:
        """One request to etcd: StoreUnavailable if it cannot be reached."""
        try:
            result = await call()
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        return result

    async def _read_state(self) -> Any:
        """The state key's range read, retried until etcd answers (StoreUnavailable once the
        store is closed)."""
        while not self._closed.is_set():
            try:
                return await self._client.get_prefix(self._key)
            except (ClientError, asyncio.TimeoutError) as e:
                self._unreachable(e)
                await self._pause()
        raise StoreUnavailable(f"{self.name}: closed")

    async def close(self) -> None:
        self._closed.set()
        for lease in list(self._leases.values()):
            try:
                # Another replica takes the role at once rather than after the lease's TTL.
                await self._client.revoke_lease(lease.id)
            except Exception as e:
                log.debug("%s: revoking a lease: %r", self.name, e)
        self._leases.clear()
        try:
            await self._client.close()
        except Exception as e:  # closing a broken channel: nothing left to release
            log.debug("%s: close: %r", self.name, e)

    # -- helpers -------------------------------------------------------------------------------
    async def _pause(self, seconds: float = RETRY_INTERVAL) -> None:
        try:
            await asyncio.wait_for(self._closed.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _decode(self, value: bytes, revision: int) -> dict[str, Any]:
        try:
            data = json.loads(value)
        except ValueError as e:
            raise StoreError(f"{self.name}: the state at revision {revision} is not valid JSON: "
                             f"{e}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.name}: the state at revision {revision} must be a JSON "
                             f"object, not {type(data).__name__}")
        return data


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
