"""The admin listener: health, readiness, metrics (and, next, the REST API of SPEC 5).

Routes are registered here; handlers stay thin and call the server's operations, so the
REST API slots in beside these without touching the data plane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from router.server import Server

SERVER: web.AppKey["Server"] = web.AppKey("server")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[SERVER].ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="stopping\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVER].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(server: "Server") -> web.Application:
    app = web.Application()
    app[SERVER] = server
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
