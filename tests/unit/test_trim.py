"""When the data plane gives memory back (router.process.trim): after a burst of connections is over,
once per burst."""

from __future__ import annotations

from router.process.trim import BURST, Trimmer, _malloc_trim


def test_a_trim_once_a_burst_of_connections_is_over():
    calls: list[int] = []
    t = Trimmer(lambda pad: calls.append(pad) or 1)
    assert not t.observe(10, 10 + BURST - 1)  # too few closed
    assert not t.observe(2 * BURST, 3 * BURST)  # more than half still open
    assert t.observe(BURST, 2 * BURST) and calls == [0] and t.trims == 1


def test_glibcs_malloc_trim_is_found_here():
    trim = _malloc_trim()
    assert trim is not None and trim(0) in (0, 1)


def test_a_trim_after_a_sweep_that_parked_a_burst_of_idle_connections():
    """Parked connections stay open (the count does not fall) but their transports, parsers
    and timers were freed: a burst of them is trimmed too."""
    calls: list[int] = []
    t = Trimmer(lambda pad: calls.append(pad) or 1)
    assert not t.observe(3 * BURST, 3 * BURST, BURST - 1)
    assert t.observe(3 * BURST, 3 * BURST, BURST) and calls == [0] and t.trims == 1


def test_a_trim_gives_back_the_empty_pools_pages_too_even_without_malloc_trim():
    """CPython's empty pools (router.process._pools) are given back at each trim, also where
    there is no glibc to call."""
    calls: list[int] = []
    t = Trimmer(lambda pad: calls.append(pad) or 1, release=lambda: 12288)
    assert not t.observe(10, 10 + BURST - 1) and t.released == 0
    assert t.observe(BURST, 2 * BURST) and calls == [0] and t.released == 12288
    no_glibc = Trimmer(lambda pad: 0, release=lambda: 4096)
    no_glibc._trim = None  # as _malloc_trim() finds it under musl
    assert no_glibc.observe(3 * BURST, 3 * BURST, BURST) and no_glibc.released == 4096
