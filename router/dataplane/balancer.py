"""Choosing where a request goes.

Across the services of an app: nginx's *smooth weighted round robin*. Every pick adds each
candidate's weight to its running score, takes the highest score (the first one on ties) and
subtracts the total weight from the winner. The sequence is deterministic and spreads each
service's share evenly: for weights 1:3 it is ``B A B B`` repeated, so every window of 4
consecutive picks splits exactly 1:3 (nginx ``ngx_http_upstream_get_peer``).

Among services of equal standing (the fallback services at weight 0): plain round robin.

Inside one service: the healthy backend with the fewest requests in flight, round robin among
those that tie (so an idle service still spreads evenly, as HAProxy's ``leastconn`` does).

Both pickers are per snapshot: a new routing table starts fresh scores, which only shifts the
phase of the sequence, never the ratio.
"""

from __future__ import annotations

from typing import Container, Generic, Protocol, Sequence, TypeVar


class _Weighted(Protocol):
    weight: int


T = TypeVar("T", bound=_Weighted)


class SmoothWeightedRoundRobin(Generic[T]):
    """Smooth weighted round robin over items with a positive ``weight``."""

    __slots__ = ("_items", "_weights", "_scores", "_single")

    def __init__(self, items: Sequence[T]) -> None:
        self._items = tuple(i for i in items if i.weight > 0)
        self._weights = [i.weight for i in self._items]
        self._scores = [0] * len(self._items)
        self._single = self._items[0] if len(self._items) == 1 else None

    def __len__(self) -> int:
        return len(self._items)

    def pick(self, exclude: Container[object] | None = None) -> T | None:
        """The next item, or ``None`` when there is none.

        ``exclude`` (a container) skips items for a retry without disturbing the sequence
        more than one pick would.
        """
        single = self._single
        if single is not None and exclude is None:
            return single
        scores = self._scores
        weights = self._weights
        best = -1
        best_score = 0
        total = 0
        for i, item in enumerate(self._items):
            if exclude is not None and item in exclude:
                continue
            w = weights[i]
            s = scores[i] + w
            scores[i] = s
            total += w
            if best < 0 or s > best_score:
                best = i
                best_score = s
        if best < 0:
            return None
        scores[best] = best_score - total
        return self._items[best]


class _Loaded(Protocol):
    inflight: int


L = TypeVar("L", bound=_Loaded)


class LeastInFlight(Generic[L]):
    """Fewest requests in flight; round robin among ties."""

    __slots__ = ("_items", "_next", "_n")

    def __init__(self, items: Sequence[L]) -> None:
        self._items = tuple(items)
        self._n = len(self._items)
        self._next = 0

    def __len__(self) -> int:
        return self._n

    def pick(self, exclude: Container[object] | None = None) -> L | None:
        items = self._items
        n = self._n
        if n < 2:
            if n == 0 or (exclude is not None and items[0] in exclude):
                return None
            return items[0]
        start = self._next
        best: L | None = None
        best_load = 0
        best_at = 0
        for k in range(n):
            j = start + k
            if j >= n:
                j -= n
            item = items[j]
            if exclude is not None and item in exclude:
                continue
            load = item.inflight
            if best is None or load < best_load:
                best = item
                best_load = load
                best_at = j
                if load == 0:
                    break
        if best is not None:
            self._next = best_at + 1 if best_at + 1 < n else 0
        return best


A = TypeVar("A")


class RoundRobin(Generic[A]):
    """Each item in turn (the fallback services, which have no weight to share by)."""

    __slots__ = ("_items", "_next")

    def __init__(self, items: Sequence[A]) -> None:
        self._items = tuple(items)
        self._next = 0

    def __len__(self) -> int:
        return len(self._items)

    def pick(self, exclude: Container[object] | None = None) -> A | None:
        items = self._items
        n = len(items)
        for k in range(n):
            j = (self._next + k) % n
            item = items[j]
            if exclude is not None and item in exclude:
                continue
            self._next = (j + 1) % n
            return item
        return None
