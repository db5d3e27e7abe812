"""The health objects without sockets: what a data plane reports, what the router decides."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from router.config import PassiveHealthConfig, config_from_dict
from router.dataplane.counters import BUCKETS, ServiceStats
from router.dataplane import health as health_mod
from router.dataplane.health import (HEALTHY, STALL_FACTOR, STALL_MIN, STALL_UNKNOWN, UNCHECKED, UNHEALTHY,
                           Health, PassiveHealth, stall_limit)
from router.dataplane.sticky import TokenCodec
from router.dataplane.table import TableBuilder
from tests.processes import free_port, until

A, B = ("shop", "web", "10.0.0.1:80"), ("shop", "web", "10.0.0.2:80")
C = ("shop", "v2", "10.0.0.3:80")


def _probes_failed(caplog: pytest.LogCaptureFixture, key: tuple) -> int:
    """How often ``key`` did not answer its probe after a passive-health cooldown."""
    return sum(1 for r in caplog.records if r.getMessage().startswith(
        f"backend {key[2]} of {key[0]}/{key[1]} did not answer after its passive-health cooldown"))


def _apps(a: tuple = A, b: tuple = B, c: tuple = C) -> tuple:
    return config_from_dict({"apps": {"shop": {"routes": ["shop.test"], "services": {
        "web": {"weight": 1, "backends": [a[2], b[2]]},
        "v2": {"weight": 0, "backends": [c[2]]}}}}}).apps


class Recorder:
    def __init__(self) -> None:
        self.notes: list[tuple] = []

    def failure(self, key, run):  # type: ignore[no-untyped-def]
        self.notes.append(("failure", key, run))

    def success(self, key):  # type: ignore[no-untyped-def]
        self.notes.append(("success", key))

    def stalled(self, key, reason):  # type: ignore[no-untyped-def]
        self.notes.append(("stalled", key, reason))


class Waiting:
    """What the sweep reads of an exchange waiting for its response head."""

    def __init__(self, backend, stats: ServiceStats) -> None:  # type: ignore[no-untyped-def]
        self.backend = backend
        self.service = SimpleNamespace(stats=stats)


def _plane(failures: int = 3) -> tuple[PassiveHealth, Recorder, dict]:
    rec = Recorder()
    builder = TableBuilder(TokenCodec(b"k" * 32, 1800, 28800))
    builder.build(_apps(), 1)
    passive = PassiveHealth(rec, failures)
    passive.follow(builder.all_backends(), {})
    return passive, rec, {be.ident: be for be in builder.all_backends()}


def test_passive_reports_failures_in_a_row_and_first_successes():
    passive, rec, be = _plane()
    assert set(passive.watching) == set(be.values())  # unchecked: the first response matters
    passive.success(be[A])
    passive.success(be[A])  # known to work: not reported again
    passive.failure(be[B])
    passive.failure(be[B])
    passive.success(be[B])  # the run ends
    passive.failure(be[B])
    assert rec.notes == [("success", A), ("failure", B, 1), ("failure", B, 2), ("success", B),
                         ("failure", B, 1)]
    assert passive.watching == {be[B]: 1, be[C]: 0}


def test_passive_follows_the_decided_states():
    passive, rec, be = _plane()
    passive.failure(be[A])
    passive.success(be[C])
    passive.follow(be.values(), {A: HEALTHY, B: UNHEALTHY, C: HEALTHY})
    # A keeps its run; B (ejected) starts afresh when back; C is known to work.
    assert passive.watching == {be[A]: 1}
    passive.follow([be[A], be[B]], {A: HEALTHY, B: UNCHECKED})
    assert passive.watching == {be[A]: 1, be[B]: 0}


def test_passive_off_still_learns_what_works():
    passive, rec, be = _plane(failures=0)
    passive.failure(be[A])
    passive.success(be[A])
    assert rec.notes == [("success", A)]


def test_stall_limit_from_the_services_latency():
    st = ServiceStats()
    # Nothing answered yet: a version slow from its first request is not stalled before this.
    assert stall_limit(st) == STALL_UNKNOWN
    for _ in range(99):
        st.observe(0.004)
    st.observe(0.3)
    assert stall_limit(st) == max(STALL_MIN, STALL_FACTOR * 0.005)
    slow = ServiceStats()
    for _ in range(100):
        slow.observe(0.6)
    assert stall_limit(slow) == STALL_FACTOR * 0.75
    long_poll = ServiceStats()
    for _ in range(100):
        long_poll.observe(30.0)  # beyond the last bucket: never judged stalled
    assert stall_limit(long_poll) is None
    assert BUCKETS[-1] < 30.0


def _known_fast() -> ServiceStats:
    st = ServiceStats()
    for _ in range(100):
        st.observe(0.004)  # p99 5 ms: the stall limit is its floor, 2 s
    return st


def test_sweep_reports_a_backend_stuck_with_nothing_coming_back():
    passive, rec, be = _plane()
    stuck = Waiting(be[A], _known_fast())
    timeout = 60.0
    passive.sweep([stuck], timeout, 100.5)  # the clock starts at the first sweep that sees it
    passive.sweep([stuck], timeout, 102.4)
    assert rec.notes == []
    passive.sweep([stuck], timeout, 102.6)  # waited over 2 s with no response at all
    assert rec.notes == [("stalled", A, "ejected: no response for over 2 s, 1 request waiting")]


def test_sweep_catches_a_hung_backend_whose_clients_give_up():
    # Clients that give up after a second: no request waits long, but new ones keep waiting
    # and nothing comes back.
    passive, rec, be = _plane()
    st = _known_fast()
    for i in range(6):
        passive.sweep([Waiting(be[A], st), Waiting(be[A], st)], 60.0, 100.0 + i * 0.5)
    assert [n[:2] for n in rec.notes] == [("stalled", A)]


def test_sweep_spares_a_backend_that_still_answers():
    passive, rec, be = _plane()
    st = _known_fast()
    slow = Waiting(be[A], st)
    passive.sweep([slow], 60, 100.5)
    be[A].answered += 1  # a response from A began meanwhile
    passive.sweep([slow], 60, 102.6)
    passive.sweep([slow], 60, 104.0)
    assert rec.notes == []
    passive.sweep([slow], 60, 104.7)  # then nothing for over 2 s
    assert [n[0] for n in rec.notes] == ["stalled"]
    # A response timeout that ends it first: left to the timeout.
    rec.notes.clear()
    passive.sweep([slow], 1.5, 110.0)
    assert rec.notes == []


def test_sweep_clock_starts_again_when_nothing_waits():
    passive, rec, be = _plane()
    st = _known_fast()
    passive.sweep([Waiting(be[A], st)], 60, 100.0)
    passive.sweep([], 60, 101.5)  # idle: not stuck
    passive.sweep([Waiting(be[A], st)], 60, 102.5)
    passive.sweep([Waiting(be[A], st)], 60, 104.0)
    assert rec.notes == []


def test_sweep_spares_a_version_slow_from_its_first_request():
    # Every request takes 5 s, one client after the other: nothing comes back for 5 s at a time.
    passive, rec, be = _plane()
    st = ServiceStats()
    for i in range(40):
        t = 100.0 + i * 0.5
        if i and i % 10 == 0:
            be[A].answered += 1
            st.observe(5.0)
        passive.sweep([Waiting(be[A], st)], 60, t)
    assert rec.notes == []


async def test_health_decides_ejects_and_readmits(caplog: pytest.LogCaptureFixture):
    # Backends on loopback: a readmission asks the backend first (OPTIONS *).
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    a, b, c = (("shop", "web", f"127.0.0.1:{port}"), ("shop", "web", f"127.0.0.1:{free_port()}"),
               ("shop", "v2", f"127.0.0.1:{free_port()}"))
    changes: list[dict] = []
    health = Health(lambda: changes.append(health.states()),
                    PassiveHealthConfig(failures=3, cooldown=0.05), asyncio.get_running_loop())
    health.update(_apps(a, b, c))
    try:
        assert health.states() == {a: UNCHECKED, b: UNCHECKED, c: UNCHECKED}
        health.success(a)
        assert health.state(a) == (HEALTHY, None)
        # Failures from two data planes count together.
        assert health.failure(a, 1) is False
        assert health.failure(a, 1) is False
        assert health.failure(a, 2) is True
        assert health.state(a) == (UNHEALTHY, "ejected: 3 requests failed in a row")
        assert changes == [{a: UNHEALTHY, b: UNCHECKED, c: UNCHECKED}]
        # The last backend of web goes too: v2 (weight 0) takes its requests, as the fallback.
        assert health.failure(b, 3) is True
        # Then nothing else in the app could take c's requests: it stays.
        for _ in range(5):
            assert health.failure(c, 5) is False
        assert health.stalled(c, "stuck") is False and health.state(c) == (UNCHECKED, None)
        # After the cooldown, a answers its OPTIONS *: back, on probation (unchecked); b
        # refuses: out for another cooldown.
        await until(lambda: health.state(a)[0] == UNCHECKED, 5, "a back")
        assert health.state(a) == (UNCHECKED, None)
        # b refused twice: out across two cooldowns.
        await until(lambda: _probes_failed(caplog, b) >= 2, 5, "b probed twice")
        assert health.state(b)[0] == UNHEALTHY
        health.worked(c)
        assert health.state(c) == (HEALTHY, None)
    finally:
        health.stop()
        server.close()


async def test_a_hung_backend_stays_out_after_its_cooldown(caplog: pytest.LogCaptureFixture):
    # Accepts, reads, never answers: its OPTIONS * times out, so no request is sent it.
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    a = ("shop", "web", f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    b, c = ("shop", "web", "127.0.0.1:1"), ("shop", "v2", "127.0.0.1:2")
    health = Health(lambda: None, PassiveHealthConfig(failures=3, cooldown=0.02),
                    asyncio.get_running_loop())
    health.update(_apps(a, b, c))
    old = health_mod.READMIT_TIMEOUT
    health_mod.READMIT_TIMEOUT = 0.2
    try:
        assert health.stalled(a, "stuck") is True
        await until(lambda: _probes_failed(caplog, a) >= 2, 5, "two probes timed out")
        assert health.state(a) == (UNHEALTHY, "stuck")
    finally:
        health_mod.READMIT_TIMEOUT = old
        health.stop()
        server.close()


async def test_a_success_ends_the_run():
    health = Health(lambda: None, PassiveHealthConfig(failures=3, cooldown=10),
                    asyncio.get_running_loop())
    health.update(_apps())
    health.failure(A, 1)
    health.failure(A, 2)
    health.success(A)
    assert health.failure(A, 1) is False and health.state(A) == (HEALTHY, None)
    health.stop()
