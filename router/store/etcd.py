"""The etcd store: one routing state shared by several router replicas (SPEC 6).

Layout under the prefix (``/router`` unless the URL names another)::

    <prefix>/state    the routing state, JSON (the same mapping the file store writes as YAML)
    <prefix>/secret   the cookie-signing secret, hex; created once by whichever replica asks first
    <prefix>/history/<generation, 12 digits>
                      the history entry of each change (router.history), the newest
                      HISTORY_LIMIT, written in the transaction that writes its state

The whole state is one key, so one compare covers it: a save is the transaction
``if mod_revision(state) == <the revision this state was built on> then put``. Two replicas
changing the state at once both build on revision R; etcd applies the first transaction and
refuses the second, whose replica reloads and tries again on the new state -- no update is lost.
The version the rest of the router sees is that ``mod_revision``.

Every replica watches the prefix from the revision its state came from. A watch that breaks (etcd
restarted, connection lost) is created again from the revision after the last event seen, so
etcd replays whatever happened meanwhile; if etcd has compacted that history away, the store
reads the current state instead. Either way no change is missed and none is applied twice.

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
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

# gRPC's fork handlers are for children that go on using gRPC; ours (--workers) exec a fresh
# interpreter at once, and the handlers only log "skipping fork() handlers" at each start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import aetcd  # noqa: E402  (after the environment above: gRPC reads it when loaded)
from aetcd.exceptions import ClientError, RevisionCompactedError, WatchTimeoutError  # noqa: E402
from aetcd.rtypes import EventKind  # noqa: E402

from ..history import HISTORY_LIMIT
from .base import Store, StoreConflict, StoreError, StoreUnavailable

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


class EtcdStore(Store):
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
        self._client = aetcd.Client(shown, port, timeout=timeout, options=_CHANNEL_OPTIONS)
        self._closed = asyncio.Event()

    @classmethod
    def from_url(cls, url: str) -> "EtcdStore":
        return cls(*parse_etcd_url(url))

    def __repr__(self) -> str:
        return f"EtcdStore({self.name!r})"

    # -- reachability ------------------------------------------------------------------------
    def _reached(self) -> None:
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
            got = await self._client.get_prefix(self._key)
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        revision = got.header.revision
        for kv in got:
            if kv.key == self._key:
                return self._decode(kv.value, kv.mod_revision), kv.mod_revision, revision
        return None, 0, revision

    async def save(self, data: dict[str, Any], expected_version: int,
                   entry: dict[str, Any] | None = None) -> int:
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        tx = self._client.transactions
        writes = [tx.put(self._key, payload)]
        if entry is not None:
            # In the same transaction: the entry exists exactly when its state does. The one
            # HISTORY_LIMIT generations older goes (generations grow by one per change).
            generation = int(entry["generation"])
            writes += [tx.put(self._history_key(generation), json.dumps(entry).encode()),
                       tx.delete(self._history_key(generation - HISTORY_LIMIT))]
        try:
            # mod_revision of a key that does not exist is 0: expected_version 0 creates. On a
            # conflict the same transaction reads the newer state: one round trip, not two, before
            # the caller can try again -- which keeps a replica from losing every race to one
            # that is writing back to back.
            ok, responses = await self._client.transaction(
                compare=[tx.mod(self._key) == expected_version],
                success=writes,
                failure=[tx.get(self._key)],
            )
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        if ok:
            return int(responses[0].response_put.header.revision)
        current: tuple[dict[str, Any] | None, int] | None = (None, 0)
        for value, kv in responses[0] if responses else ():
            try:
                current = self._decode(value, kv.mod_revision), kv.mod_revision
            except StoreError:
                current = None  # let the caller load it and see the error
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
            ok, responses = await self._client.transaction(
                compare=[tx.create(self._secret_key) == 0],
                success=[tx.put(self._secret_key, fresh)],
                failure=[tx.get(self._secret_key)],
            )
        except (ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from None
        self._reached()
        if ok:
            log.info("%s: created the sticky secret", self.name)
            return fresh
        value = bytes(responses[0][0][0]).strip()
        if len(value) < 16:
            raise StoreError(f"{self.name}: {self._secret_key.decode()}: the sticky secret is "
                             "shorter than 16 bytes")
        return value

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
                # A linearizable read of a small key: answered only with a quorum behind it.
                await self._client.get(self._secret_key)
            except (ClientError, asyncio.TimeoutError) as e:
                self._unreachable(e)
            else:
                self._reached()
            await self._pause(PROBE_INTERVAL)

    async def _watch(self, from_version: int) -> AsyncIterator[tuple[dict[str, Any], int]]:
        seen = from_version      # the version of the newest document delivered (or started from)
        resume = from_version + 1  # the first revision not yet read
        compacted = False
        while not self._closed.is_set():
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
            try:
                async for event in watch:
                    kv = event.kv
                    resume = kv.mod_revision + 1
                    if kv.key != self._key:
                        continue
                    if event.kind == EventKind.DELETE:
                        log.warning("%s: the state was deleted from etcd; serving the last one "
                                    "until a new one is written", self.name)
                        continue
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
                await _cancel_quietly(watch)

    async def close(self) -> None:
        self._closed.set()
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


async def _cancel_quietly(watch: Any) -> None:
    try:
        await watch.cancel()
    except Exception:  # the stream is already gone
        pass


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
