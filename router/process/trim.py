"""Memory given back to the system after a burst of client connections has closed.

What a client connection holds is small and bounded (docs/request-path.md, "Memory"), but a
burst of them -- an attack, a load test -- leaves its buffers (reads of up to 64 KiB, the
transports' write buffers) on glibc's free lists when they close: the memory is reused by the
next burst, but glibc gives back to the system only what lies at the top of its heap, so the
process's RSS stays at the burst's height. Measured with 200 connections of pipelined requests
(benchmarks/memory.py): RSS 48.3 MB before, 52.3 MB during, still 52.3 MB after they closed;
``malloc_trim(0)`` brings it back to 48.6 MB in 0.5 ms. CPython's own allocator is not the one
holding it: its arenas stay at 19 throughout.

So the data plane calls ``malloc_trim(0)`` once a burst is over: when the client connections
have fallen to half of their peak since the last time, and at least ``BURST`` of them closed;
and after a sweep that parked at least ``BURST`` idle ones (``router.dataplane.parking``: their
transports, parsers and timers freed the same way, though the connections stay open).
Without glibc (musl) there is nothing to call, and RSS stays at the burst's height.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Final

# Client connections that must have closed since the peak for a trim: below it the memory at
# stake is a few hundred KiB, not worth a walk of the heap.
BURST: Final = 64


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is no such function."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Trimmer:
    """Told the number of client connections now and their peak; trims once a burst is over."""

    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self.trims = 0

    def observe(self, connections: int, peak: int, parked: int = 0) -> bool:
        """True if it trimmed: the caller then starts a new peak from ``connections``.
        ``parked``: connections parked since the last call (what they held is freed by now)."""
        if self._trim is None:
            return False
        if parked < BURST and (peak - connections < BURST or connections > peak // 2):
            return False
        self._trim(0)
        self.trims += 1
        return True
