"""Log lines that repeat, summarised at a bounded rate.

A backend that refuses connections makes every request that tries it fail the same way: one
warning per request would be hundreds per second. ``Throttled`` logs the first line of a kind
(a key, e.g. the backend and the failure) at once, counts the ones that follow within
``every`` seconds, and at the end of that window logs one line saying how many there were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

# Keys remembered at once; beyond, the oldest windows are forgotten (their counts logged).
_MAX_KEYS = 1024


class Throttled:
    __slots__ = ("log", "every", "loop", "_windows")

    def __init__(self, log: logging.Logger, every: float = 10.0,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.log = log
        self.every = every
        self.loop = loop
        # key -> [window start, lines left out, level, message, args]
        self._windows: dict[Any, list[Any]] = {}

    def warning(self, key: Any, msg: str, *args: Any) -> None:
        self._emit(logging.WARNING, key, msg, args)

    def error(self, key: Any, msg: str, *args: Any) -> None:
        self._emit(logging.ERROR, key, msg, args)

    def _emit(self, level: int, key: Any, msg: str, args: tuple[Any, ...]) -> None:
        now = time.monotonic()
        w = self._windows.get(key)
        if w is not None and now - w[0] < self.every:
            w[1] += 1
            w[3], w[4] = msg, args
            return
        if w is not None:
            self._summary(key, w)
        if len(self._windows) >= _MAX_KEYS:
            for old, ow in list(self._windows.items())[:_MAX_KEYS // 4]:
                self._summary(old, ow)
                del self._windows[old]
        self.log.log(level, msg, *args)
        self._windows[key] = [now, 0, level, msg, args]
        if self.loop is not None:
            self.loop.call_later(self.every, self._close_window, key, now)

    def _close_window(self, key: Any, start: float) -> None:
        w = self._windows.get(key)
        if w is not None and w[0] == start:
            del self._windows[key]
            self._summary(key, w)

    def _summary(self, key: Any, w: list[Any]) -> None:
        if w[1]:
            self.log.log(w[2], "%s (%d more like it in %.0f s)", w[3] % w[4] if w[4] else w[3],
                         w[1], self.every)
            w[1] = 0
