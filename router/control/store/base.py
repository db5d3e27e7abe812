"""The one interface every store of the routing state offers (docs/state.md).

The state manager, the admin API and the data plane see only this; which store is behind it --
a file on this machine or etcd shared by several replicas -- is decided once, by ``--store``.

A store keeps one document (the routing state as a mapping) and a *version* of it: an integer
that changes with every save, so that a save can be made conditional on nothing having changed
since the state it builds on was read (optimistic concurrency: etcd's ``mod_revision`` compare,
HTTP's ``If-Match``). The generation the admin API shows is inside the document, not the
version: versions are the store's business and need not be consecutive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, AsyncIterator, Callable

__all__ = ["Store", "StoreConflict", "StoreError", "StoreLost", "StoreUnavailable"]

Document = dict[str, Any]


class StoreError(Exception):
    """The state could not be read or written; the message names the store and the reason."""


class StoreConflict(StoreError):
    """A conditional save found a newer version than the one it was based on.

    ``current`` is that newer ``(document, version)`` when the store could read it in the same
    step (etcd does), saving the caller a load; None otherwise.
    """

    def __init__(self, message: str, current: "tuple[Document | None, int] | None" = None) -> None:
        super().__init__(message)
        self.current = current


class StoreUnavailable(StoreError):
    """The store cannot be reached now; the same call may succeed later."""


class StoreLost(StoreUnavailable):
    """The store lost its data (etcd restarted empty, say): changes are refused until the
    processes sharing it have written back the newest state they hold (:meth:`Store.reseed`).
    Raised by :meth:`Store.save` meanwhile, and by :meth:`Store.watch` to ask for the re-seed."""


class Store(ABC):
    """Where the routing state lives."""

    #: A path or URL, for messages.
    name: str
    #: Other processes write this store too: a process seeds it when it is empty and follows
    #: :meth:`watch` to learn of their changes.
    shared: bool = False
    #: Whether the store answered its last request (the ``router_store_up`` gauge).
    up: bool = True
    #: The sticky secret this process took from the store was replaced there since (by a
    #: write-back after a data loss): this process signs with another one than the others.
    secret_stale: bool = False

    @abstractmethod
    async def load(self) -> tuple[Document | None, int]:
        """The stored document (``None`` if there is none yet) and its version (0 then)."""

    @abstractmethod
    async def save(self, data: Document, expected_version: int,
                   entry: Document | None = None, resolves: str | None = None) -> int:
        """Replace the document if its version is still ``expected_version``; the new version.

        ``entry`` is the history entry of the change (``router.control.history``), added to the
        history in the same step; the history keeps the newest ``HISTORY_LIMIT`` entries.
        ``resolves``: a conflict record (:meth:`keep_conflict`) removed in the same step.
        :class:`StoreConflict` if the version moved (nothing is written), :class:`StoreUnavailable`
        if the store cannot be reached (with etcd, the outcome of a save cut short is unknown:
        the change shows up through :meth:`watch` if it was applied).
        """

    @abstractmethod
    async def history(self) -> list[Document]:
        """The history entries kept, newest first."""

    async def watch(self, from_version: int) -> AsyncIterator[tuple[Document, int]]:
        """Every document saved after ``from_version``, in order, as ``(document, version)``.

        Runs until :meth:`close`; reconnects by itself. A store only this process writes has
        nothing to report and returns at once.
        """
        return
        yield  # an async generator that yields nothing

    async def reseed(self, data: Document, secret: bytes | None,
                     write_over: Callable[[Document], bool]) -> tuple[Document, int]:
        """After :class:`StoreLost`: offer ``data`` (the state this process holds) and the
        sticky ``secret`` (None: this process does not take it from the store) -- written when
        the store holds no state, or one ``write_over`` says ours should replace -- and return
        the state the store holds once every process sharing it had the time to offer theirs,
        with its version."""
        raise NotImplementedError(f"{type(self).__name__} cannot lose its data behind our back")

    async def conflicts(self) -> list[Document]:
        """The conflict records kept (:meth:`keep_conflict`); a store that cannot lose its data
        behind our back has none."""
        return []

    async def keep_conflict(self, name: str, record: Document, entry: Document | None) -> None:
        """Keep ``record`` (a state a process held that the store lost) under ``name`` unless
        a record of that name is there, and ``entry`` in the history unless its generation has
        one."""
        raise NotImplementedError(f"{type(self).__name__} keeps no conflicts")

    async def drop_conflict(self, name: str) -> None:
        """Remove the conflict record ``name`` (none: nothing to do)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no conflicts")

    @abstractmethod
    async def secret(self) -> bytes:
        """The cookie-signing secret, created on first use; the same for every process sharing
        the store."""

    async def lead(self, role: str, holder: str, ttl: float) -> bool:
        """Whether ``holder`` holds ``role`` (e.g. driving the guarded ramps) among the
        processes sharing this store: taken when nobody holds it, kept by calling again within
        ``ttl`` seconds, given up by :meth:`close` or by not calling. A store only this process
        writes: always. :class:`StoreUnavailable` if the store cannot be reached."""
        return True

    async def close(self) -> None:
        """Release connections; a running :meth:`watch` ends."""
