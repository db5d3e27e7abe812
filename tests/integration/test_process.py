"""The real `router serve` process: command line, exit codes, signals, metrics, memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import aiohttp

from tests.conftest import (ROOT, RouterProcess, app_config, download, free_port, get, in_chunks,
                            pattern)
from tests.processes import answering, terminate, until


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


async def _readyz(s: aiohttp.ClientSession, rp: RouterProcess, status: int) -> bool:
    async with s.get(rp.admin_url + "/readyz") as r:
        return r.status == status


def test_bad_config_exits_2_naming_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apps:\n  shop:\n    routes: [shop.test]\n    services:\n"
                    "      web: {weight: 101, backends: ['127.0.0.1:1']}\n")
    r = run_cli("serve", "--config", str(path))
    assert r.returncode == 2
    assert f"{path}: apps.shop.services.web.weight" in r.stderr
    assert "101" in r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2
    assert "nope.yaml" in r.stderr


def test_bad_command_line_exits_2():
    assert run_cli("serve", "--workers", "x").returncode == 2
    for bad in ("0", "65"):
        r = run_cli("serve", "--workers", bad)
        assert r.returncode == 2 and "--workers: must be 1..64" in r.stderr
    for bad in ("etcd://127.0.0.1:99999", "etcd://:2379", "redis://127.0.0.1:6379"):
        r = run_cli("serve", "--store", bad)
        assert r.returncode == 2 and "--store" in r.stderr, (bad, r.stderr)


async def test_sigterm_graceful_stop_finishes_inflight(backend, router_process):
    be = await backend("blue")
    rp = await router_process({"timeouts": {"grace": "5s"},
                               "apps": {"shop": app_config({"web": (1, [be.addr])}, sticky=False)}})
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(get(s, rp, "/slow?delay=1"))
        await until(lambda: be.requests == 1, 5, "the slow request at the backend")
        rp.proc.send_signal(signal.SIGTERM)
        await until(lambda: _readyz(s, rp, 503), 5, "/readyz 503 after SIGTERM")
        status, _, body = await slow
    assert (status, body) == (200, b"blue\n")
    assert await asyncio.get_running_loop().run_in_executor(None, rp.proc.wait, 10) == 0


async def test_metrics_after_known_requests(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config(
        {"blue": (1, [blue.addr]), "green": (3, [green.addr])})}})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        for _ in range(8):
            assert (await get(s, rp))[0] == 200
        assert (await get(s, rp, host="nobody.test"))[0] == 404
        _, h, _ = await get(s, rp)
        cookie = h["Set-Cookie"].split(";")[0]
        for _ in range(3):
            await get(s, rp, headers={"Cookie": cookie})
        async with s.get(rp.admin_url + "/metrics") as r:
            text = await r.text()
    # 9 unpinned requests at 1:3 (B A B B B A B B | B) and 3 pinned to green.
    want = [
        f'router_requests_total{{app="shop",backend="{blue.addr}",code="200",service="blue"}} 2.0',
        f'router_requests_total{{app="shop",backend="{green.addr}",code="200",service="green"}} 10.0',
        'router_requests_total{app="",backend="",code="404",service=""} 1.0',
        'router_sticky_requests_total{app="shop",service="green"} 3.0',
        'router_sticky_requests_total{app="shop",service="blue"} 0.0',
        'router_service_weight{app="shop",service="green"} 3.0',
        f'router_backend_healthy{{app="shop",backend="{blue.addr}",service="blue"}} 1.0',
        'router_inflight_requests{app="shop",service="blue"} 0.0',
        'router_request_duration_seconds_count{app="shop",service="green"} 10.0',
        'router_retries_total{app="shop",service="blue"} 0.0',
        "router_config_generation 1.0",
    ]
    lines = set(text.splitlines())
    for line in want:
        assert line in lines, line


async def test_100mib_each_way_with_bounded_memory(backend, router_process):
    size = 100 * 1024 * 1024
    be = await backend("blue")
    rp = await router_process({"apps": {"shop": app_config({"web": (1, [be.addr])}, sticky=False)}})

    def rss_kib() -> int:
        with open(f"/proc/{rp.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    before = rss_kib()
    data = pattern(size)
    want = hashlib.sha256(data).hexdigest()
    async with aiohttp.ClientSession() as s:
        status, _, body = await get(s, rp, "/upload", method="POST", data=in_chunks(data))
        assert status == 200 and b'"sha256": "%s"' % want.encode() in body
        r, n, sha = await download(s, f"{rp.url}/download?size={size}")
        assert (r.status, n, sha) == (200, size, want)
    growth = rss_kib() - before
    # Streamed, never buffered whole: the router grows by far less than one body.
    assert growth < 20 * 1024, f"router RSS grew by {growth} KiB"


def test_demo_command_serves_blue_and_green(tmp_path):
    # Every port free (the demo's defaults are busy when `make demo` runs beside the tests).
    port, admin = free_port(), free_port()
    backends = [arg for name in ("blue", "green", "green-v2") for arg in (f"--{name}", "127.0.0.1:0")]
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "demo", "--listen", f"127.0.0.1:{port}",
                                 "--admin", f"127.0.0.1:{admin}", *backends], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        async def check() -> list[str]:
            # Started beside a loaded suite, the demo can take many seconds: wait for it, bounded.
            await answering(f"http://127.0.0.1:{admin}/readyz", proc, str(log_path), 60)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
                names = []
                for _ in range(4):
                    async with s.get(f"http://localhost:{port}/") as r:
                        names.append((await r.text()).strip())
                        assert "CONTAINERID=" in r.headers["Set-Cookie"]
                return names

        names = asyncio.run(check())
        assert sorted(names) == ["blue", "blue", "green", "green"]
    finally:
        code = terminate(proc, 15)
    out = log_path.read_text()
    assert code == 0, out
    # The hints name this demo's admin address, and what the demo wrote is gone with it.
    assert f"routerctl --url http://127.0.0.1:{admin} apps" in out
    (config,) = re.findall(r"configuration: (\S+)", out)
    assert f"`routerctl --url http://127.0.0.1:{admin} apply {config}`" in out
    # (In the usual temporary directory: under pytest's own, deep, its handoff socket's path
    # would pass the 107 bytes a Unix socket's path may have.)
    assert os.path.dirname(config).startswith(tempfile.gettempdir())
    assert not os.path.exists(os.path.dirname(config))


async def test_event_log_as_json_lines(backend, router_process):
    """``logging.format: json``: every line of the event log, from the main process and from
    the workers, is one JSON object with the time to the millisecond in UTC."""
    import json

    be = await backend("blue")
    dead = f"127.0.0.1:{free_port()}"  # its failures make the workers log
    rp = await router_process({"logging": {"format": "json"}, "apps": {
        "shop": app_config({"web": (1, [dead, be.addr])}, sticky=False)}}, ("--workers", "2"))
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            assert (await get(s, rp))[0] == 200  # retried on blue when dead refuses
    rp.proc.send_signal(signal.SIGTERM)
    assert await asyncio.get_running_loop().run_in_executor(None, rp.proc.wait, 15) == 0
    lines = [json.loads(line) for line in rp.log().splitlines()]
    assert lines and all(set(e) >= {"time", "level", "logger", "message", "process", "pid"}
                         for e in lines)
    assert all(re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in lines)
    assert {e["process"] for e in lines} == {"main", "worker"}
    assert any(e["logger"] == "router.error" and dead in e["message"] for e in lines)
    assert any(e["message"].startswith("listening on") for e in lines)


async def test_access_log_json_and_combined(backend, router_process):
    import json

    be = await backend("blue")
    for fmt in ("json", "combined"):
        rp = await router_process({"access_log": {"enabled": True, "format": fmt},
                                   "apps": {"shop": app_config({"web": (1, [be.addr])}, sticky=False)}})
        async with aiohttp.ClientSession() as s:
            await get(s, rp, "/x?y=1", headers={"X-Request-ID": "req-1", "User-Agent": "t/1"})
            await get(s, rp, "/", host="nobody.test")
        rp.proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, rp.proc.wait, 10)
        lines = rp.log().splitlines()
        if fmt == "json":
            entries = [json.loads(line) for line in lines if line.startswith("{")]
            assert [(e["method"], e["uri"], e["status"], e["app"], e["service"]) for e in entries] == [
                ("GET", "/x?y=1", 200, "shop", "web"), ("GET", "/", 404, "", "")]
            assert entries[0]["request_id"] == "req-1" and entries[0]["backend"] == be.addr
        else:
            combined = [line for line in lines if '"GET ' in line]
            assert len(combined) == 2
            assert combined[0].startswith("127.0.0.1 - - [") and '"GET /x?y=1 HTTP/1.1" 200' in combined[0]
            # The body's size, then the request time in seconds.
            assert re.search(r'" 200 5 "-" "t/1" [0-9]+\.[0-9]{6}$', combined[0]), combined[0]


async def test_sigterm_drain_delay_keeps_accepting_then_closes(backend, router_process):
    be = await backend("blue")
    rp = await router_process({"timeouts": {"grace": "2s", "drain_delay": "1s"},
                               "apps": {"shop": app_config({"web": (1, [be.addr])}, sticky=False)}})
    rp.proc.send_signal(signal.SIGTERM)
    t_term = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        await until(lambda: _readyz(s, rp, 503), 5, "/readyz 503 after SIGTERM")  # not ready ...
        assert (await get(s, rp))[:3:2] == (200, b"blue\n")  # ... but a new connection is served

        async def refused() -> bool:
            try:
                await get(s, rp)
            except aiohttp.ClientConnectionError:
                return True
            return False
        await until(refused, 5, "the listener closed")  # ... until drain_delay has passed
        assert time.monotonic() - t_term >= 1.0
    assert await asyncio.get_running_loop().run_in_executor(None, rp.proc.wait, 10) == 0
