"""Which services clients are still pinned to: when each last got a request by cookie.

``routerctl apply`` must not delete a service that sticky clients are still being sent to --
at weight 0 (the drain of a release) or at any other weight -- unless forced. The data plane
counts requests routed by cookie per service (``router_sticky_requests_total``); sampling that
counter now and then tells when it last moved. The sample period bounds how late a new pin is
noticed; a cookie idle longer than ``sticky.max_idle`` has expired, so older activity no longer
pins anyone. Counted per process: with several replicas, each knows the clients that reached it.
"""

from __future__ import annotations

from ..dataplane.counters import Stats

# Seconds between two samples of the counters.
SAMPLE_INTERVAL = 2.0


class PinWatch:
    __slots__ = ("_counts", "_moved")

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._moved: dict[tuple[str, str], float] = {}  # (app, service) -> when it last moved

    def observe(self, stats: Stats, now: float) -> None:
        for key, service in stats.services.items():
            if service.sticky != self._counts.get(key, 0):
                # Moved since the last sample (or, a worker restarted, went back: taken as a
                # move too, which errs on the side of a pin).
                self._moved[key] = now
            self._counts[key] = service.sticky

    def pinned(self, now: float, window: float) -> frozenset[tuple[str, str]]:
        """The services that got a request by cookie within the last ``window`` seconds."""
        return frozenset(k for k, t in self._moved.items() if now - t < window)
