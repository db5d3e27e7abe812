"""The admin listener: health, readiness, metrics, the REST API and the web console.

Every request goes through the same middlewares, in order: the admin token (``router.admin.auth``:
a wrong one is refused, slowly), the rules that keep web pages out (``router.admin.guard``: ``Host``,
``Origin``, JSON bodies), the console's session (``router.admin.console``), and for ``/api/`` the token
required and the mapping of errors to ``{"error": {...}}`` bodies (``router.admin.errors``). Handlers
(``router.admin.handlers``) stay thin and call the state's operations.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.errors import RouterError, Unauthorized

from . import auth, console, guard, handlers
from .auth import has_token
from .errors import error_response
from .handlers import SERVER
from .openapi import openapi

if TYPE_CHECKING:
    from router.process.server import Server

log = logging.getLogger("router.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    ready, why = server.readiness()
    if not ready:
        return web.Response(status=503, text=why + "\n")
    if server.store is not None and not server.store.up:
        # Still serving (the last state): taking the replica out of a load balancer would turn
        # a store outage into a traffic outage. router_store_up shows it.
        return web.Response(text=why + "; the routing-state store is unreachable, serving the "
                                 "last state\n")
    return web.Response(text=why + "\n")


async def metrics(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    admin = server.config.admin
    if admin.token is not None and not admin.metrics_public and not has_token(request):
        # The series name every backend's address: not for whoever reaches the port.
        return error_response(Unauthorized("/metrics needs the admin token (admin.metrics_public "
                                           "is false)", "Authorization"))
    await server.summed_stats()  # the collector reads the sum made here
    body = generate_latest(server.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi())


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "field": field}},
                             status=status)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    token = request.app[SERVER].config.admin.token
    try:
        if token is not None and not has_token(request):
            # A wrong token was refused already (router.admin.auth): here it is missing.
            raise Unauthorized("missing bearer token", "Authorization")
        return await handler(request)
    except RouterError as e:
        if e.status >= 500:
            log.error("%s %s: %s", request.method, request.path, e.message)
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = _error(e.status, "not_found" if e.status == 404 else
                      "method_not_allowed" if e.status == 405 else "http_error", e.reason)
        if "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal", "internal error; see the router's log")


def create_app(server: "Server") -> web.Application:
    # The console's session stands in for the bearer token before the API checks it.
    app = web.Application(middlewares=[auth.token_middleware, guard.guard_middleware,
                                       console.session_middleware, api_middleware],
                          client_max_size=2 * 1024 * 1024)
    auth.install(app)
    app[SERVER] = server
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi_doc)
    app.router.add_routes(handlers.routes())
    console.add_routes(app)
    return app
