"""Upgrading the proxy under keep-alive load: the router's takeover and SIGUSR2 beside nginx's
binary upgrade and HAProxy's reload, and a stop with no successor before and after.

    python3 -m benchmarks.upgrade                      # 20 upgrades of each kind, 10 stops each
    python3 -m benchmarks.upgrade --upgrades 3 --stops 2 --targets router1,nginx   # a check

The load is the reliability test's (``tests/reliability/lifecycle.py``): keep-alive clients that
never retry, half of them sending each request as soon as the last is answered (as wrk does),
half waiting up to 20 ms; one request in four a POST with a 1 KiB body, one in five held 50 ms
by the backend, which answers each request with its own id (so an answer given twice, or to
the wrong request, shows). A request with no answer is **failed**; a connection the proxy
closes (``Connection: close``, or a close between requests, which the clients see before they
send) is **closed**: the client opens another.

Each row upgrades one proxy N times under that load:

``router --workers W takeover``  ``router serve --takeover`` started beside the running router
                                 (docs/upgrade.md)
``router --workers W SIGUSR2``   ``kill -USR2`` to the router: the same process, new code
``nginx USR2+QUIT``              nginx's binary upgrade: USR2 to the master starts a new master
                                 on the inherited listeners, QUIT to the old one stops it
                                 gracefully (one worker each)
``haproxy reload``               master-worker mode (``-W``), ``stats socket ... expose-fd
                                 listeners``; USR2 to the master: a new worker on the old one's
                                 listening sockets, the old one stopped softly (one thread)

Then the stops: SIGTERM to a router under the same load, with clients that send until their
connection is closed (no successor): failed requests per stop, the router of ``--base`` (a
checkout with its ``.venv``, compiled: the code before this change) beside this one.

Results go to the ``upgrade`` section of benchmarks/RESULTS.md (``--no-write``: only printed).
Wall-clock load numbers need a quiet machine; the counts of failed and closed are what this
measures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.processes import free_port, until
from tests.reliability.lifecycle import Load, Routers, echo_backend, run_clients, stops_under_load

from .common import RESULTS_MD, revision, write_section

SECTION = "upgrade"
TARGETS = ("router1", "router2", "nginx", "haproxy")
NGINX = "/usr/sbin/nginx"  # nginx re-executes itself by this path on USR2: it must be absolute
HAPROXY = "/usr/sbin/haproxy"
CLIENTS = 16
UPGRADE_TIMEOUT = 60.0

NGINX_CONF = """\
worker_processes 1;
daemon on;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {{ server {backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4096
    stats socket {dir}/haproxy.sock mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 3s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend backend
backend backend
    server s1 {backend}
"""


@dataclass
class Row:
    target: str
    how: str
    upgrades: int = 0
    load: Load = field(default_factory=Load)
    seconds: list[float] = field(default_factory=list)
    error: str = ""


class Nginx:
    """nginx as a daemon (its binary upgrade needs a master whose parent is init)."""

    def __init__(self, backend: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="upgrade-nginx-")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, backend=backend, port=self.port))
        self.pid_file = os.path.join(self.dir, "nginx.pid")

    def pid(self) -> int:
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    async def start(self) -> None:
        subprocess.run([NGINX, "-p", self.dir, "-c", self.conf, "-e",
                        os.path.join(self.dir, "error.log")], check=True, timeout=30)
        await until(lambda: self.pid() > 0, 10, "nginx's pid file")

    async def upgrade(self) -> None:
        old = self.pid()
        os.kill(old, signal.SIGUSR2)
        await until(lambda: self.pid() not in (0, old), UPGRADE_TIMEOUT, "nginx's new master")
        await asyncio.sleep(0.1)  # its workers started
        os.kill(old, signal.SIGQUIT)
        await until(lambda: not _alive(old), UPGRADE_TIMEOUT, "the old nginx master's exit")

    async def stop(self) -> None:
        pid = self.pid()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGQUIT)
            await until(lambda: not _alive(pid), 30, "nginx's exit")

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class HAProxy:
    """HAProxy in master-worker mode, reloaded with SIGUSR2 to its master."""

    def __init__(self, backend: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="upgrade-haproxy-")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write(HAPROXY_CONF.format(dir=self.dir, backend=backend, port=self.port))
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    async def start(self) -> None:
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen([HAPROXY, "-W", "-db", "-f", self.conf], stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        await until(lambda: "Loading success" in self.log(), 10, "HAProxy's start")

    async def upgrade(self) -> None:
        assert self.proc is not None
        exited = self.log().count("Former worker")
        loaded = self.log().count("Loading success")
        os.kill(self.proc.pid, signal.SIGUSR2)
        await until(lambda: self.log().count("Loading success") > loaded, UPGRADE_TIMEOUT,
                     "HAProxy's new worker")
        await until(lambda: self.log().count("Former worker") > exited, UPGRADE_TIMEOUT,
                     "HAProxy's old worker's exit")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_runs = iter(range(1 << 30))


async def load_during(port: int, load: Load, stop: asyncio.Event, clients: int) -> None:
    """The benchmark's load: half the clients back to back, half up to 20 ms apart (request
    ids unique across the whole run: the backend counts them)."""
    run = next(_runs)
    await asyncio.gather(
        run_clients(port, clients // 2, stop, load, (0.0, 0.0), tag=f"r{run}f"),
        run_clients(port, clients - clients // 2, stop, load, (0.0, 0.02), tag=f"r{run}t"))


async def upgrades(row: Row, proxy: Any, port: int, count: int, clients: int,
                   step: Any) -> None:
    """``count`` upgrades of a started proxy under load, each by ``step``."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(load_during(port, row.load, stop, clients))
    try:
        await asyncio.sleep(1.0)
        for _ in range(count):
            t0 = time.monotonic()
            await step()
            row.seconds.append(time.monotonic() - t0)
            row.upgrades += 1
            await asyncio.sleep(0.5)
    except (AssertionError, OSError, subprocess.SubprocessError) as e:
        row.error = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        stop.set()
        await task


async def run_router(backend: str, workers: int, count: int, clients: int) -> list[Row]:
    rows = []
    for how in ("takeover", "SIGUSR2"):
        row = Row(f"router --workers {workers}", how)
        routers = Routers(backend, workers)
        try:
            await routers.start()
            step = routers.takeover if how == "takeover" else routers.upgrade
            await upgrades(row, routers, routers.port, count, clients, step)
            await routers.stop()
        except (AssertionError, OSError) as e:
            row.error = row.error or f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            routers.cleanup()
        rows.append(row)
    return rows


async def run_other(name: str, backend: str, count: int, clients: int) -> list[Row]:
    proxy: Nginx | HAProxy = Nginx(backend) if name == "nginx" else HAProxy(backend)
    row = Row(name, "USR2+QUIT" if name == "nginx" else "reload (-W, expose-fd listeners)")
    try:
        await proxy.start()
        await upgrades(row, proxy, proxy.port, count, clients, proxy.upgrade)
        await proxy.stop()
    except (AssertionError, OSError, subprocess.SubprocessError) as e:
        row.error = row.error or f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        proxy.cleanup()
    return [row]


def upgrade_table(rows: list[Row]) -> str:
    lines = ["| proxy | upgrade | upgrades | requests | failed | failed per upgrade | "
             "connections closed | closed per upgrade | s per upgrade (median) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = max(r.upgrades, 1)
        failed = len(r.load.failed) + len(r.load.wrong)
        med = f"{statistics.median(r.seconds):.2f}" if r.seconds else "-"
        lines.append(f"| {r.target} | {r.how} | {r.upgrades} | {r.load.sent:,} | {failed} | "
                     f"{failed / n:.2f} | {r.load.closed} | {r.load.closed / n:.2f} | {med} |")
    return "\n".join(lines)


# The race a stop with no successor leaves (docs/upgrade.md, "A stop"): clients that wait
# about IDLE_BEFORE_CLOSE (1 s) between requests send right around the moment their connection
# is closed as idle, the worst case there is.
RACE_CLIENTS = 40
RACE_THINK = (0.9, 1.15)


async def stops(base: str | None, count: int, workers: list[int]) -> list[tuple[str, int, Any]]:
    out = []
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("after", here)]
    if base:
        trees.insert(0, ("before", base))
    for label, tree in trees:
        for w in workers:
            r = await stops_under_load(count, w, checkout=tree)
            out.append((label, w, r))
    for w in workers:
        r = await stops_under_load(count, w, checkout=here, fast=0, idle=RACE_CLIENTS,
                                   idle_think=RACE_THINK)
        out.append((f"after, worst case: {RACE_CLIENTS} clients every "
                    f"{RACE_THINK[0]:g}-{RACE_THINK[1]:g} s", w, r))
    return out


def stop_table(results: list[tuple[str, int, Any]], count: int) -> str:
    lines = ["| router | --workers | stops | requests | failed | failed per stop | "
             "connections closed as idle or on an answer |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, w, r in results:
        lines.append(f"| {label} | {w} | {count} | {r.sent:,} | {r.failed} | "
                     f"{r.failed / max(count, 1):.2f} | {r.notes.rsplit(': ', 1)[-1]} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, int, Any]]]:
    seen: Counter[bytes] = Counter()
    server = await echo_backend(seen)
    backend = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    rows: list[Row] = []
    try:
        for target in filter(None, args.targets.split(",")):
            print(f"{target}: {args.upgrades} upgrades under load...", flush=True)
            if target.startswith("router"):
                rows += await run_router(backend, int(target[len("router"):] or 1),
                                         args.upgrades, args.clients)
            elif target in ("nginx", "haproxy"):
                if not os.path.exists(NGINX if target == "nginx" else HAPROXY):
                    print(f"{target}: not installed; skipped", flush=True)
                    continue
                rows += await run_other(target, backend, args.upgrades, args.clients)
            else:
                raise SystemExit(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
        twice = [i for i, n in seen.items() if n > 1 and i != b"probe"]
        if twice:
            print(f"requests that reached the backend twice: {twice[:5]}", flush=True)
    finally:
        server.close()
    stopped: list[tuple[str, int, Any]] = []
    if args.stops:
        print(f"stops: {args.stops} SIGTERMs per router...", flush=True)
        stopped = await stops(args.base if os.path.isdir(args.base or "") else None, args.stops,
                              [int(w) for w in args.stop_workers.split(",")])
    return rows, stopped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="router1, router2 (the router with --workers 1 or 2), nginx, haproxy")
    ap.add_argument("--upgrades", type=int, default=20, help="upgrades per row (default 20)")
    ap.add_argument("--stops", type=int, default=10, help="SIGTERMs per router (0: none)")
    ap.add_argument("--stop-workers", default="1,2", help="the routers' --workers for the stops")
    ap.add_argument("--base", default=None,
                    help="a checkout of the code before, with its .venv, for the stops")
    ap.add_argument("--clients", type=int, default=CLIENTS, help="keep-alive clients")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    rev = revision()
    rows, stopped = asyncio.run(main_async(args))
    parts = [f"Upgrades under load ({args.clients} keep-alive clients that never retry):", "",
             upgrade_table(rows), ""]
    if stopped:
        parts += ["SIGTERM with no successor (16 clients back to back and 4 sending every "
                  "0.2-1.5 s, each until its connection is closed):", "",
                  stop_table(stopped, args.stops), ""]
    errors = [f"- **{r.target} {r.how}**: {r.error}" for r in rows if r.error]
    if errors:
        parts += ["Errors:", "", *errors, ""]
    text = "\n".join(parts)
    print("\n" + text)
    if not args.no_write:
        write_section(SECTION, "\n".join([
            "## Upgrading the proxy under load", "",
            f"`python3 -m benchmarks.upgrade` on {started:%Y-%m-%d %H:%M} UTC, revision {rev}; "
            f"nginx and HAProxy from {NGINX} and {HAPROXY}.", "", text]))
        print(f"written to benchmarks/{RESULTS_MD.name} (section `{SECTION}`)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
