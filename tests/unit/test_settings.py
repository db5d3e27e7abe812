"""What a reload reports, setting by setting; durations written back as read; pinned services."""

from __future__ import annotations

import random

import pytest

from router.config import config_from_dict, format_duration, parse_duration
from router.config.settings import keep_bound, setting_changes
from router.dataplane.counters import ServiceStats, Stats
from router.control.pins import PinWatch

BASE = {"listen": "0.0.0.0:8080", "admin": {"listen": "127.0.0.1:9090"},
        "apps": {"shop": {"routes": ["shop.test"], "services": {"web": {"backends": []}}}}}


def _changes(**top: object) -> list[str]:
    return [str(c) for c in setting_changes(config_from_dict(BASE),
                                            config_from_dict({**BASE, **top}))]


def test_nothing_changed():
    assert _changes() == []
    # The apps are the routing state's, not a setting.
    assert _changes(apps={}) == []


def test_each_change_old_to_new():
    assert _changes(timeouts={"response": "30s", "connect": "500ms"}) == [
        "timeouts.connect 3s -> 500ms", "timeouts.response 1m -> 30s"]
    assert _changes(limits={"max_header": "16KiB"}, access_log={"enabled": True,
                                                                "format": "combined"}) == [
        "limits.max_header 8192 -> 16384", "access_log.enabled false -> true",
        "access_log.format json -> combined"]
    assert _changes(trusted_proxies=["10.0.0.0/8"], passive_health={"failures": 0}) == [
        "passive_health.failures 3 -> 0", "trusted_proxies [] -> [10.0.0.0/8]"]
    assert _changes(sticky={"cookie": "SID", "max_idle": "1h"}, domain="example.com") == [
        "domain none -> example.com", "sticky.cookie CONTAINERID -> SID",
        "sticky.max_idle 30m -> 1h"]


def test_the_admin_token_is_never_shown(monkeypatch):
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "old-secret")
    old = config_from_dict(BASE)
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "new-secret")
    changes = setting_changes(old, config_from_dict(BASE))
    assert [str(c) for c in changes] == ["admin.token changed"]
    assert not changes[0].needs_restart


def test_settings_bound_at_start_need_a_restart(tmp_path):
    old = config_from_dict(BASE)
    new = config_from_dict({**BASE, "listen": "0.0.0.0:8081", "admin": {"listen": "[::1]:9091"},
                            "sticky": {"secret_file": str(tmp_path / "secret")},
                            "timeouts": {"grace": "0s"}})
    changes = setting_changes(old, new)
    assert [(str(c), c.needs_restart) for c in changes] == [
        ("listen 0.0.0.0:8080 -> 0.0.0.0:8081", True),
        ("admin.listen 127.0.0.1:9090 -> [::1]:9091", True),
        (f"sticky.secret_file none -> {tmp_path / 'secret'}", True),
        ("timeouts.grace 10s -> 0s", False)]
    running = keep_bound(old, new)
    assert (running.listen_port, running.admin.port, running.sticky.secret_file) == (8080, 9090, None)
    assert running.timeouts.grace == 0.0
    # The next reload of the same file reports what still needs a restart, and nothing else.
    assert [c.key for c in setting_changes(running, new)] == ["listen", "admin.listen",
                                                              "sticky.secret_file"]


@pytest.mark.parametrize(("seconds", "text"), [
    (600.0, "10m"), (0.25, "250ms"), (90.0, "90s"), (0.0, "0s"), (7200.0, "2h"), (86400.0, "1d"),
    (1.5, "1500ms"), (1234.5678, "1234.5678s"), (1e-7, "0.0000001s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text, "x") == seconds


def test_format_duration_reads_back_exactly():
    rng = random.Random(7)
    for _ in range(20000):
        x = rng.choice([rng.random() * 1000, rng.randint(0, 10**6) / 1000, float(rng.randint(0, 10**6))])
        assert parse_duration(format_duration(x), "x") == x, x


def _stats(**sticky: int) -> Stats:
    stats = Stats()
    for name, n in sticky.items():
        stats.services[("shop", name)] = s = ServiceStats()
        s.sticky = n
    return stats


def test_pin_watch():
    pins = PinWatch()
    pins.observe(_stats(web=0, v2=0), now=100.0)
    assert pins.pinned(100.0, window=60) == frozenset()
    pins.observe(_stats(web=5, v2=0), now=102.0)
    assert pins.pinned(103.0, window=60) == {("shop", "web")}
    pins.observe(_stats(web=5, v2=0), now=104.0)  # no request by cookie since
    assert pins.pinned(161.0, window=60) == {("shop", "web")}
    assert pins.pinned(162.0, window=60) == frozenset()  # idle past the window
    pins.observe(_stats(web=2, v2=1), now=170.0)  # a worker restarted: counted again
    assert pins.pinned(170.0, window=60) == {("shop", "web"), ("shop", "v2")}
