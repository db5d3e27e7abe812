"""The response timeout of every exchange that waits for a backend's head, on one timer.

The exchanges waiting are linked through two of their own fields, in the order of their
deadlines (an exchange's deadline is a field too). With one timeout for all, deadlines arrive in
that order: a new one goes at the end, and one that stops waiting is unlinked where it is --
per request a few field writes, no object made, nothing kept once it has stopped waiting. (A
reload that lowers the timeout puts new deadlines before older ones: such a one is placed by
walking back from the end, past the deadlines later than its own.)

The timer is set for the earliest deadline; when it fires it ends every exchange past its
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
    __slots__ = ("loop", "timeout", "_first", "_last", "_handle", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        # The exchanges waiting, earliest deadline first (UpstreamRequest.wait_prev, wait_next).
        self._first: UpstreamRequest | None = None
        self._last: UpstreamRequest | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0  # when _handle fires (kept: read on every add, cheaper than when())

    def waiting(self) -> list[UpstreamRequest]:
        """The exchanges waiting for a response head, earliest deadline first."""
        out: list[UpstreamRequest] = []
        req = self._first
        while req is not None:
            out.append(req)
            req = req.wait_next
        return out

    def add(self, req: UpstreamRequest, now: float) -> None:
        """``req`` waits for its response head from ``now`` (loop time) on."""
        if req.response_deadline:
            self.discard(req)
        deadline = now + self.timeout
        req.response_deadline = deadline
        last = self._last
        if last is None:
            self._first = self._last = req
        elif last.response_deadline <= deadline:
            last.wait_next = req
            req.wait_prev = last
            self._last = req
        else:
            self._insert(req, deadline)
        if self._handle is None or deadline < self._when:
            self._set(deadline)

    def _insert(self, req: UpstreamRequest, deadline: float) -> None:
        """Link ``req`` after the last exchange whose deadline is not later than its own (after
        a reload lowered the timeout)."""
        at = self._last
        while at is not None and at.response_deadline > deadline:
            at = at.wait_prev
        nxt = self._first if at is None else at.wait_next
        req.wait_prev = at
        req.wait_next = nxt
        if at is None:
            self._first = req
        else:
            at.wait_next = req
        if nxt is None:
            self._last = req
        else:
            nxt.wait_prev = req

    def discard(self, req: UpstreamRequest) -> None:
        """``req`` no longer waits (its head came, or it ended)."""
        if not req.response_deadline:
            return
        req.response_deadline = 0.0
        prev = req.wait_prev
        nxt = req.wait_next
        if prev is None:
            self._first = nxt
        else:
            prev.wait_next = nxt
            req.wait_prev = None
        if nxt is None:
            self._last = prev
        else:
            nxt.wait_prev = prev
            req.wait_next = None

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
        now = self.loop.time()
        due: list[UpstreamRequest] = []
        req = self._first
        while req is not None and req.response_deadline <= now:
            due.append(req)
            req = req.wait_next
        try:
            for req in due:
                deadline = req.response_deadline
                if deadline and deadline <= now:  # (else what went before ended its wait)
                    self.discard(req)
                    try:
                        req.response_timeout()
                    except PhaseError as e:
                        req.broken(e)
        finally:
            # Whatever one of them raised, the others still have their timer.
            first = self._first
            if first is not None:
                self._set(first.response_deadline)
