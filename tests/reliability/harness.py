"""What the reliability scenarios share: routers (in this process or as the real process),
HAProxy, raw-socket clients, metrics. Used by the tests and by ``benchmarks/reliability.py``;
nothing here depends on pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httptools
import yaml

from tests.processes import ROOT, answering, free_port, terminate, until  # noqa: F401  (the scenarios take them from here)


def app(backends: list[str], routes: list[str] | None = None, sticky: bool = False,
        **service: Any) -> dict[str, Any]:
    """One app with one service ``web`` over ``backends``."""
    svc: dict[str, Any] = {"weight": 1, "backends": backends}
    svc.update(service)
    return {"routes": routes or ["app.test"], "session_sticky": sticky, "services": {"web": svc}}


def config(apps: dict[str, Any], **top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
                           "timeouts": {"grace": "1s"}, "apps": apps}
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@contextlib.asynccontextmanager
async def inproc_router(cfg: dict[str, Any], workers: int = 1) -> AsyncIterator[Any]:
    """The router's ``Server`` in this process, on port 0; with ``workers`` > 1 this process is
    the master of that many worker processes."""
    from router.admin.app import create_app
    from router.config import config_from_dict
    from router.process.server import Server

    srv = Server(config_from_dict(cfg), workers=workers, admin=create_app)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@dataclass
class RouterProc:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    path: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def write(self, cfg: dict[str, Any]) -> None:
        cfg = dict(cfg)
        cfg["listen"] = f"127.0.0.1:{self.port}"
        cfg["admin"] = {"listen": f"127.0.0.1:{self.admin_port}"}
        with open(self.path + ".tmp", "w") as f:
            yaml.safe_dump(cfg, f)
        os.replace(self.path + ".tmp", self.path)


@contextlib.asynccontextmanager
async def router_process(cfg: dict[str, Any], nofile: int | None = None, workers: int = 1,
                         args: tuple[str, ...] = ()) -> AsyncIterator[RouterProc]:
    """The real ``router serve`` process; ``nofile`` lowers its RLIMIT_NOFILE."""
    tmp = tempfile.mkdtemp(prefix="router-rel-")
    rp = RouterProc(None, free_port(), free_port(), os.path.join(tmp, "router.yaml"),  # type: ignore[arg-type]
                    os.path.join(tmp, "router.log"))
    rp.write(cfg)

    def limit() -> None:
        if nofile is not None:
            # Soft and hard: the router raises its soft limit to the hard one at start.
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(rp.log_path, "wb") as logf:
        rp.proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", rp.path,
                                    "--workers", str(workers), *args],
                                   cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=limit)
    try:
        await answering(f"http://127.0.0.1:{rp.admin_port}/readyz", rp.proc, rp.log_path, 15)
        yield rp
    finally:
        # In a thread: the backends live in this event loop and answer while it stops.
        await asyncio.get_running_loop().run_in_executor(None, terminate, rp.proc, 15)
        shutil.rmtree(tmp, ignore_errors=True)


HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 3s
    timeout client 10s
    timeout server 10s
    timeout http-request 10s
    option forwardfor
frontend fe
    bind 127.0.0.1:{port}
    acl app hdr(host),field(1,:) -i app.test
    use_backend admin if app {{ path_beg /admin }}
    use_backend shop if app
    http-request return status 404 content-type text/plain string "no route" unless app
backend shop
    server s1 {shop}
backend admin
    server s1 {admin}
"""


@contextlib.asynccontextmanager
async def haproxy(shop: str, admin: str) -> AsyncIterator[int | None]:
    """HAProxy (Debian's package) in front of the same backends; yields None if not installed."""
    exe = shutil.which("haproxy")
    if exe is None:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="haproxy-rel-")
    port = free_port()
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(HAPROXY_CFG.format(port=port, shop=shop, admin=admin))
    proc = subprocess.Popen([exe, "-db", "-f", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("haproxy did not start") from None
                await asyncio.sleep(0.05)
        yield port
    finally:
        terminate(proc, 10)
        shutil.rmtree(tmp, ignore_errors=True)


# -- clients --------------------------------------------------------------------------------------

class _Responses:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


async def exchange(port: int, data: bytes, timeout: float = 3.0) -> tuple[list[int], bool]:
    """Send raw bytes; the statuses of the responses read, and whether the peer closed.

    Reading stops at the close, or ``timeout`` after the last byte read.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    resp = _Responses()
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            try:
                resp.parser.feed_data(chunk)
            except httptools.HttpParserError:
                break
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
    return resp.statuses, closed


def verdict(statuses: list[int], closed: bool) -> str:
    return " ".join([str(s) for s in statuses] + (["close"] if closed else []))


async def http_status(port: int, path: str, host: str = "127.0.0.1", timeout: float = 5.0) -> int:
    """Status of one GET with Connection: close; 0 when there is no answer."""
    try:
        async with asyncio.timeout(timeout):
            statuses, _ = await exchange(
                port, b"GET %b HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n"
                % (path.encode(), host.encode()), timeout=timeout)
    except (OSError, TimeoutError):
        return 0
    return statuses[0] if statuses else 0


async def metrics(admin_port: int) -> dict[str, float]:
    """The admin /metrics as {'name{labels}': value}."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    return parse_metrics(raw.split(b"\r\n\r\n", 1)[1].decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def metric_sum(m: dict[str, float], name: str, **labels: str) -> float:
    """The sum of series ``name`` whose labels include ``labels``."""
    total = 0.0
    for k, v in m.items():
        if k.split("{")[0] != name:
            continue
        if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
            total += v
    return total


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection; ``request`` returns (status, body) or raises."""

    def __init__(self, port: int, host: str = "app.test") -> None:
        self.port = port
        self.host = host.encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str = "GET", path: str = "/", body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items())
        cl = b"Content-Length: %d\r\n" % len(body) if body or method in ("POST", "PUT") else b""
        self.writer.write(b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n%s"
                          % (method.encode(), path.encode(), self.host, cl, extra, body))
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
            status = int(head.split(b" ", 2)[1])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length)  # type: ignore[union-attr]
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
