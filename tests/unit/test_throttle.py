"""router.admin.auth.Throttle: the delay of each answer to a wrong token, per source, with a clock
given; the table it keeps stays bounded."""

from __future__ import annotations

import pytest

from router.admin.auth import FIRST_DELAY, FORGET_AFTER, MAX_DELAY, MAX_SOURCES, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_answer_waits_its_turn_and_twice_as_long_as_the_last() -> None:
    clock = Clock()
    t = Throttle(clock)
    # Sent at once: the answers go out 0.1, 0.3, 0.7, 1.5, 3.1, 5.1, 7.1 s later.
    delays = [t.failed("10.0.0.1") for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 5.1, 7.1])
    # Another source has a queue of its own.
    assert t.failed("10.0.0.2") == pytest.approx(FIRST_DELAY)
    # Later, one at a time: each waits the longest delay, not the queue (it has drained).
    clock.now += 60
    assert t.failed("10.0.0.1") == pytest.approx(MAX_DELAY)


def test_failures_are_forgotten_after_a_quiet_while() -> None:
    clock = Clock()
    t = Throttle(clock)
    for _ in range(5):
        t.failed("10.0.0.1")
    clock.now += FORGET_AFTER - 1
    assert t.failed("10.0.0.1") == pytest.approx(MAX_DELAY)
    clock.now += FORGET_AFTER + 1
    assert t.failed("10.0.0.1") == pytest.approx(FIRST_DELAY)


def test_the_table_is_bounded_and_forgets_the_oldest_first() -> None:
    clock = Clock()
    t = Throttle(clock)
    for i in range(MAX_SOURCES + 100):
        t.failed(f"s{i}")
        clock.now += 0.001
    assert len(t) == MAX_SOURCES
    assert t.failed(f"s{MAX_SOURCES + 99}") > FIRST_DELAY  # remembered
    assert t.failed("s0") == pytest.approx(FIRST_DELAY)  # forgotten
