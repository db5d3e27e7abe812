"""The response timeout of every exchange that waits for a backend's head, on one timer.

Per request this is a dict insert and delete instead of a timer handle made and cancelled. The
timer is set for the earliest deadline it knows of; when it fires it ends every exchange past its
deadline and is set again for the earliest left. With one timeout for all, the entry it is set
for is usually long gone by then, so it fires about once per timeout period.

(A client connection's own timers -- idle, request head, request body -- are one handle per
connection, in ``router.dataplane.client``: which one runs follows from the connection's phase.)
"""

from __future__ import annotations

import asyncio

from .phases import PhaseError
from .upstream import UpstreamRequest


class ResponseDeadlines:
    __slots__ = ("loop", "timeout", "waiting", "_handle", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.waiting: dict[UpstreamRequest, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0  # when _handle fires (kept: read on every add, cheaper than when())

    def add(self, req: UpstreamRequest) -> None:
        deadline = self.loop.time() + self.timeout
        self.waiting[req] = deadline
        self._set(deadline)

    def discard(self, req: UpstreamRequest) -> None:
        self.waiting.pop(req, None)

    def _set(self, when: float) -> None:
        """Make the timer fire no later than ``when``."""
        handle = self._handle
        if handle is None or when < self._when:
            if handle is not None:
                handle.cancel()
            self._when = when
            self._handle = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = None
        waiting = self.waiting
        now = self.loop.time()
        try:
            for req in [r for r, deadline in waiting.items() if deadline <= now]:
                if waiting.pop(req, None) is not None:
                    try:
                        req.response_timeout()
                    except PhaseError as e:
                        req.broken(e)
        finally:
            # Whatever one of them raised, the others still have their timer.
            if waiting:
                self._set(min(waiting.values()))
