"""Fixtures: real backends and real routers on loopback port 0.

``backend``  starts an aiohttp server that answers with its own name and has a few tools
             (echo of the request head, hashing uploads, streaming downloads, a WebSocket
             echo, slow answers); it counts requests and TCP connections.
``router``   starts the router in this process (``Server`` on port 0) from a config dict.
``router_process`` starts the real ``router serve`` process from a YAML file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import yaml
from aiohttp import web

from router.admin.app import create_app
from router.config import config_from_dict
from router.process.server import Server
from tests.processes import ROOT, answering, free_port, terminate, until  # noqa: F401  (used by the tests through here)

CHUNK = 64 * 1024


def pattern(size: int) -> bytes:
    """Deterministic bytes for streamed bodies."""
    block = hashlib.sha256(b"router").digest() * (CHUNK // 32)
    return (block * (size // CHUNK + 1))[:size]


async def in_chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """``data`` as an async iterable: aiohttp sends it chunked (no Content-Length)."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def download(session: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, int, str]:
    """GET through the router at app.test, streamed: (response, bytes read, sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    async with session.get(url, headers={"Host": "app.test"}) as r:
        async for chunk in r.content.iter_any():
            h.update(chunk)
            n += len(chunk)
    return r, n, h.hexdigest()


@dataclass
class Backend:
    name: str
    port: int = 0
    requests: int = 0
    peers: set[Any] = field(default_factory=set)  # one (host, port) per TCP connection
    seen: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.peers)


def _backend_app(be: Backend) -> web.Application:
    async def count(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        be.requests += 1
        be.peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        be.seen.append({"method": request.method, "path": request.path_qs})
        return await handler(request)

    async def name(request: web.Request) -> web.Response:
        return web.Response(text=be.name + "\n", headers={"X-Backend": be.name})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "backend": be.name, "method": request.method, "path": request.path_qs,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body": body.decode("latin-1"),
        })

    async def upload(request: web.Request) -> web.Response:
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
        return web.json_response({"sha256": h.hexdigest(), "size": n, "backend": be.name})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        chunked = request.query.get("chunked") == "1"
        resp = web.StreamResponse(headers={"X-Backend": be.name})
        if not chunked:
            resp.content_length = size
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp  # a response to HEAD has no body (RFC 9110 9.3.2)
        data = pattern(size)
        for i in range(0, size, CHUNK):
            await resp.write(data[i:i + CHUNK])
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text=be.name + "\n")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=None if code in (204, 304) else "status\n")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(f"{be.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(middlewares=[web.middleware(count)], client_max_size=1024 ** 3)
    app.router.add_route("*", "/echo", echo)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/slow", slow)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", name)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """``app`` served on a free loopback port: its runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def backend() -> AsyncIterator[Callable[[str], Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(name: str) -> Backend:
        be = Backend(name)
        be.runner, be.port = await serve(_backend_app(be))
        started.append(be)
        return be

    yield start
    for be in started:
        await be.runner.cleanup()  # type: ignore[union-attr]


def app_config(services: dict[str, tuple[int, list[str]]], routes: list[str] | None = None,
               sticky: bool = True, **extra: Any) -> dict[str, Any]:
    """An app block: ``{"blue": (weight, [addr, ...])}``."""
    app: dict[str, Any] = {
        "routes": routes or ["app.test"],
        "session_sticky": sticky,
        "services": {n: {"weight": w, "backends": b} for n, (w, b) in services.items()},
    }
    app.update(extra)
    return app


def router_config(apps: dict[str, Any], **top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
                           "timeouts": {"grace": "1s"}, "apps": apps}
    cfg.update(top)
    return cfg


@pytest.fixture
async def router(tmp_path: Any) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(cfg: dict[str, Any], store: str | None = None) -> Server:
        server = Server(config_from_dict(cfg), store, admin=create_app)
        await server.start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop()


async def set_apps(server: Server, cfg: dict[str, Any]) -> None:
    """Replace the running router's apps as `routerctl apply --force` would."""
    from router.control.state import apply_apps

    await server.manager.change(apply_apps(config_from_dict(cfg).apps, force=True))


@dataclass
class RouterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config_path: str
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, cfg: dict[str, Any]) -> None:
        cfg = dict(cfg)
        cfg["listen"] = f"127.0.0.1:{self.port}"
        cfg["admin"] = {"listen": f"127.0.0.1:{self.admin_port}"}
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(cfg, f)
        os.replace(tmp, self.config_path)

    async def apply(self, cfg: dict[str, Any], generation: int) -> None:
        """Write the file and apply its apps (``routerctl apply --force``); wait until the
        router reports ``generation``."""
        self.write_config(cfg)
        async with aiohttp.ClientSession() as s:
            async with s.post(self.admin_url + "/api/v1/apply?force=1",
                              json={"apps": cfg.get("apps") or {}}) as r:
                assert r.status == 200, await r.text()
        await self.wait_generation(generation)

    async def wait_generation(self, generation: int, timeout: float = 10.0) -> None:
        async with aiohttp.ClientSession() as s:
            async def reached() -> bool:
                async with s.get(self.admin_url + "/metrics") as r:
                    text = await r.text()
                return any(line.startswith("router_config_generation ")
                           and float(line.split()[1]) >= generation for line in text.splitlines())
            await until(reached, timeout, f"the router at generation {generation}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@pytest.fixture
async def router_process(tmp_path: Any) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[RouterProcess]]]:
    procs: list[RouterProcess] = []

    async def start(cfg: dict[str, Any], args: tuple[str, ...] = ()) -> RouterProcess:
        rp = RouterProcess(None, free_port(), free_port(),  # type: ignore[arg-type]
                           str(tmp_path / f"router{len(procs)}.yaml"), str(tmp_path / f"router{len(procs)}.log"))
        rp.write_config(cfg)
        logf = open(rp.log_path, "wb")
        rp.proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", rp.config_path, *args],
                                   cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        procs.append(rp)
        await answering(rp.admin_url + "/readyz", rp.proc, rp.log_path, 15)
        return rp

    yield start
    for rp in procs:
        terminate(rp.proc, 15)


async def get(session: aiohttp.ClientSession, server: Server | RouterProcess, path: str = "/",
              host: str = "app.test", **kw: Any) -> tuple[int, dict[str, str], bytes]:
    """One request through the router: (status, headers, body)."""
    port = server.port
    headers = {"Host": host, **kw.pop("headers", {})}
    method = kw.pop("method", "GET")
    async with session.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, **kw) as r:
        body = await r.read()
        return r.status, dict(r.headers), body


def json_loads(b: bytes) -> Any:
    return json.loads(b)
