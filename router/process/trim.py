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

CPython's allocator for small objects keeps the rest: a burst's transports, parsers, timers and
bound methods are freed into its 16 KiB pools, and a 1 MiB arena of pools goes back to the
system only when all of it is free, which one long-lived object anywhere in it prevents. So the
same trim also gives back the pages of the empty pools (``router.process._pools``, C: the
pages after each pool's first, which holds its header). Measured with 10,000 idle connections
opened in 2.9 s and parked: 15.2 MB over the RSS before them, 8.5 MB once the pools' pages are
given back (6.9 MB given back, in about a millisecond). Without the C module (plain Python, or
a CPython whose pools it does not know) the pools keep their pages.
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


def _pools_release() -> Callable[[], int] | None:
    """``router.process._pools.release``, watching CPython's arenas from now on; None where
    the C module is not built or does not know this CPython's pools."""
    try:
        from . import _pools
    except ImportError:
        return None
    return _pools.release if _pools.watch() else None


class Trimmer:
    """Told the number of client connections now and their peak; trims once a burst is over.
    Made before the connections come: CPython's arenas are watched from then on."""

    def __init__(self, trim: Callable[[int], int] | None = None,
                 release: Callable[[], int] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._release = release if release is not None else _pools_release()
        self.trims = 0
        self.released = 0  # bytes of empty pools given back, in all

    def observe(self, connections: int, peak: int, parked: int = 0) -> bool:
        """True if it trimmed: the caller then starts a new peak from ``connections``.
        ``parked``: connections parked since the last call (what they held is freed by now)."""
        if self._trim is None and self._release is None:
            return False
        if parked < BURST and (peak - connections < BURST or connections > peak // 2):
            return False
        if self._trim is not None:
            self._trim(0)
        if self._release is not None:
            self.released += self._release()
        self.trims += 1
        return True
