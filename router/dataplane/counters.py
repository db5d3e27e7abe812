"""The data plane's counters: plain integers on objects the request path already holds.

The hot path only bumps integers here (a backend's response codes, a service's histogram
buckets); nothing takes a lock or builds a label tuple per request. ``router.control.metrics`` turns
them into Prometheus families at scrape time; with several worker processes each sends its
``Stats`` to the master, which sums them.
"""

from __future__ import annotations

from typing import Final

# The latency histogram's upper bounds, seconds: the one set the metrics, the console's stats,
# the guarded ramp's quantiles and the stall detection all read. The Prometheus client's default
# buckets (5 ms .. 10 s, all kept, so that queries on them still work) and six more from
# 0.25 ms to 7.5 ms: a proxy's own latency is a fraction of a millisecond, and a version that
# goes from 1 ms to 3 ms must show. 20 bounds: bisect takes 5 comparisons instead of 4. Final:
# compiled, a static the bisect reads, not a lookup in the module's dict per comparison.
BUCKETS: Final[tuple[float, ...]] = (
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class ServiceStats:
    """Counters of one service of one app; outlives routing snapshots."""

    __slots__ = ("inflight", "sticky", "fallback", "preview", "retries", "buckets", "dsum")

    def __init__(self) -> None:
        self.inflight = 0
        self.sticky = 0
        self.fallback = 0  # requests sent here because no weighted service could serve
        self.preview = 0  # requests sent here by a preview marker (header or cookie)
        self.retries = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.dsum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left(BUCKETS, seconds), compiled: five comparisons of floats cost less than
        # a call into the bisect module.
        lo = 0
        hi = len(BUCKETS)
        while lo < hi:
            mid = (lo + hi) // 2
            if BUCKETS[mid] < seconds:
                lo = mid + 1
            else:
                hi = mid
        self.buckets[lo] += 1
        self.dsum += seconds

    def add(self, other: "ServiceStats", inflight: bool = True) -> None:
        if inflight:
            self.inflight += other.inflight
        self.sticky += other.sticky
        self.fallback += other.fallback
        self.preview += other.preview
        self.retries += other.retries
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        self.dsum += other.dsum


class BackendStats:
    """Counters of one backend of one service; outlives routing snapshots."""

    __slots__ = ("_codes", "errors", "_run", "_run_n")

    def __init__(self) -> None:
        self._codes: dict[int, int] = {}  # responses by status, but the run below
        self.errors: dict[str, int] = {}
        # The status of the last responses counted, and how many in a row: nearly every
        # response of a backend has the status of the one before, and a native integer bumped
        # costs a tenth of a dict's get and set (and a new int object past 256). The dict
        # takes the run when the status changes, or when ``codes`` is read.
        self._run = 0
        self._run_n = 0

    def count(self, status: int) -> None:
        """One response with ``status`` (Exchange._account)."""
        if status == self._run:
            self._run_n += 1
        else:
            self._fold()
            self._run = status
            self._run_n = 1

    def _fold(self) -> None:
        n = self._run_n
        if n:
            self._run_n = 0
            codes = self._codes
            codes[self._run] = codes.get(self._run, 0) + n

    @property
    def codes(self) -> dict[int, int]:
        """Responses by status."""
        self._fold()
        return self._codes

    @codes.setter
    def codes(self, codes: dict[int, int]) -> None:
        self._run_n = 0
        self._codes = codes

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def add(self, other: "BackendStats") -> None:
        codes = self.codes
        for code, n in other.codes.items():
            codes[code] = codes.get(code, 0) + n
        for reason, n in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n


class RemovedService:
    """The counters of a service no longer routed (deleted by a rollback, a confirm, an apply),
    kept a few minutes after (``router.dataplane.table.REMOVED_KEEP``): a reader that turns two readings
    into rates gets the numbers of the interval the service went in, however short its last
    step was. The objects are the service's own: requests still in flight when it went are
    counted as they end."""

    __slots__ = ("weight", "stats", "backends")

    # Defaults: a worker's counters reach the master pickled, which makes the object bare.
    def __init__(self, weight: int = 0, stats: ServiceStats | None = None,
                 backends: dict[str, BackendStats] | None = None) -> None:
        self.weight = weight  # when it went
        self.stats = stats if stats is not None else ServiceStats()
        self.backends = backends if backends is not None else {}  # by address

    def add(self, other: "RemovedService") -> None:
        self.weight = other.weight
        self.stats.add(other.stats)
        for addr, b in other.backends.items():
            self.backends.setdefault(addr, BackendStats()).add(b)


class UnroutedStats:
    """Responses the router gave before any app or service was chosen (404, 400, ...)."""

    __slots__ = ("codes",)

    def __init__(self) -> None:
        self.codes: dict[tuple[str, int], int] = {}

    def count(self, app: str, code: int) -> None:
        key = (app, code)
        self.codes[key] = self.codes.get(key, 0) + 1


class Stats:
    """Every counter of a process by name: what a scrape reads, and what a worker process
    sends to the master (plain picklable objects), summed there across workers."""

    __slots__ = ("services", "backends", "unrouted", "refused", "waiting", "removed",
                 "timeouts")

    def __init__(self) -> None:
        self.services: dict[tuple[str, str], ServiceStats] = {}
        self.backends: dict[tuple[str, str, str], BackendStats] = {}
        self.unrouted: dict[tuple[str, int], int] = {}
        self.refused = 0  # client connections refused at the connection cap
        # Requests waiting for a response head right now, by service: a histogram of how long
        # they have waited (BUCKETS). A gauge, made when the counters are read: what the ramp
        # judges hung requests from (router.control.ramp).
        self.waiting: dict[tuple[str, str], list[int]] = {}
        # Services deleted in the last few minutes, by (app, service): their last counters.
        self.removed: dict[tuple[str, str], RemovedService] = {}
        self.timeouts: dict[str, int] = {}  # client connections closed by a timeout, by reason

    def add(self, other: "Stats", inflight: bool = True) -> None:
        """Add ``other``'s counts; ``inflight=False``: the counters only (the totals of a worker
        that is gone, which has nothing in flight any more, nor deleted services to tell of:
        those are kept for minutes, not for the router's life)."""
        for key, s in other.services.items():
            self.services.setdefault(key, ServiceStats()).add(s, inflight)
        for bkey, b in other.backends.items():
            self.backends.setdefault(bkey, BackendStats()).add(b)
        for ukey, n in other.unrouted.items():
            self.unrouted[ukey] = self.unrouted.get(ukey, 0) + n
        self.refused += other.refused
        if inflight:
            for skey, ages in other.waiting.items():
                mine = self.waiting.get(skey)
                self.waiting[skey] = (list(ages) if mine is None
                                      else [a + b for a, b in zip(mine, ages)])
            for skey, r in other.removed.items():
                gone = self.removed.get(skey)
                if gone is None:
                    gone = self.removed[skey] = RemovedService()
                gone.add(r)
        for reason, n in other.timeouts.items():
            self.timeouts[reason] = self.timeouts.get(reason, 0) + n

    def keep(self, services: set[tuple[str, str]], backends: set[tuple[str, str, str]]) -> None:
        """Forget the counters of services and backends no longer routed."""
        self.services = {k: v for k, v in self.services.items() if k in services}
        self.backends = {k: v for k, v in self.backends.items() if k in backends}
        self.waiting = {k: v for k, v in self.waiting.items() if k in services}
