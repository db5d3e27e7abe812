"""Thin handlers: parse, call a state operation, render. No logic of their own."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router import state as ops
from router.config import NAME_RE
from router.errors import Invalid, NotFound

from .schemas import (
    HealthOf,
    app_body,
    check_name,
    object_body,
    parse_body,
    render_app,
    render_stats,
    service_body,
)

if TYPE_CHECKING:
    from router.server import Server

SERVER: web.AppKey["Server"] = web.AppKey("server")


def _server(request: web.Request) -> "Server":
    return request.app[SERVER]


def _health(srv: "Server") -> HealthOf:
    assert srv.health is not None
    return srv.health.state


def _app_response(request: web.Request, state: ops.State, name: str, status: int = 200) -> web.Response:
    srv = _server(request)
    body = render_app(state, name, srv.ctx.table, _health(srv))
    return web.json_response(body, status=status, headers={"ETag": f'"{body["generation"]}"'})


async def _change(request: web.Request, op: ops.Operation, app: str | None) -> ops.State:
    return await _server(request).manager.change(op, request.headers.get("If-Match"), app)  # type: ignore[union-attr]


async def list_apps(request: web.Request) -> web.Response:
    srv = _server(request)
    st = srv.manager.state  # type: ignore[union-attr]
    health = _health(srv)
    apps = [render_app(st, a.name, srv.ctx.table, health) for a in st.apps]
    return web.json_response({"apps": apps}, headers={"ETag": f'"{st.generation}"'})


async def get_app(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    st = _server(request).manager.state  # type: ignore[union-attr]
    st.app(name)
    return _app_response(request, st, name)


async def put_app(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    body = app_body(name, object_body(await request.read()))
    existed = _server(request).manager.state.has_app(name)  # type: ignore[union-attr]
    if not existed:
        if not NAME_RE.match(name):
            raise Invalid(f"app names match ^[a-z0-9][a-z0-9-]{{0,62}}$ (got {name!r})", "name")
    st = await _change(request, ops.put_app(name, body), name)
    return _app_response(request, st, name, 200 if existed else 201)


async def patch_app(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read())
    allowed = {"session_sticky", "routes", "drain_timeout"}
    for key in body:
        if key not in allowed:
            raise Invalid(f"unknown or read-only field {key!r}; PATCH changes "
                          "session_sticky, routes, drain_timeout", key)
    st = await _change(request, ops.patch_app(name, body), name)
    return _app_response(request, st, name)


async def delete_app(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    await _change(request, ops.delete_app(name), name)
    return web.Response(status=204)


async def put_weights(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read())
    force = _flag(request, "force")
    ready = None
    if not force:
        # Which services that would have weight can take requests: found before the change
        # (a probe may take up to a second), judged by the change itself.
        srv = _server(request)
        app = srv.manager.state.app(name)  # type: ignore[union-attr]
        weighted = [s.name for s in app.services if _positive(body.get(s.name, s.weight))]
        ready = await srv.ready_services(app, weighted)
    st = await _change(request, ops.set_weights(name, body, ready), name)
    return _app_response(request, st, name)


def _positive(weight: Any) -> bool:
    return isinstance(weight, int) and not isinstance(weight, bool) and weight > 0


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise Invalid(f"must be true or false (got {value!r})", name)
    return value == "true"


async def put_service(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    svc = request.match_info["svc"]
    body = service_body(parse_body(await request.read()))
    srv = _server(request)
    cur = srv.manager.state  # type: ignore[union-attr]
    existed = any(s.name == svc for s in cur.app(name).services)
    st = await _change(request, ops.put_service(name, svc, body), name)
    return _app_response(request, st, name, 200 if existed else 201)


async def delete_service(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    svc = check_name(request.match_info["svc"], "service")
    await _change(request, ops.delete_service(name, svc), name)
    return web.Response(status=204)


def _release_response(st: ops.State, name: str, status: int = 200) -> web.Response:
    release = st.releases.get(name)
    if release is None:
        raise NotFound(f"app {name!r} has no open release", "release")
    gen = st.app_generations.get(name, st.generation)
    return web.json_response(release.to_dict(), status=status, headers={"ETag": f'"{gen}"'})


async def start_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read())
    await _change(request, ops.start(name, body), name)
    await _server(request).releases_changed()
    return _release_response(_server(request).manager.state, name, 201)  # type: ignore[union-attr]


async def get_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    st = _server(request).manager.state  # type: ignore[union-attr]
    st.app(name)
    return _release_response(st, name)


async def confirm_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read(), required=False)
    for key in body:
        if key != "force":
            raise Invalid(f"unknown field {key!r}", key)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise Invalid(f"must be true or false (got {force!r})", "force")
    st = await _change(request, ops.confirm(name, force), name)
    return _app_response(request, st, name)


async def rollback_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read(), required=False)
    if body:
        raise Invalid(f"unknown field {sorted(body)[0]!r}", sorted(body)[0])
    st = await _change(request, ops.rollback(name), name)
    return _app_response(request, st, name)


async def app_stats(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    srv = _server(request)
    assert srv.manager is not None and srv.plane is not None  # started before the admin listener
    srv.manager.state.app(name)  # 404 for an unknown app
    stats = await srv.summed_stats()
    return web.json_response(render_stats(stats, srv.plane.table, name, time.time()),
                             headers={"Cache-Control": "no-store"})


def routes() -> list[Any]:
    p = "/api/v1/apps"
    return [
        web.get(p, list_apps),
        web.get(p + "/{app}", get_app),
        web.put(p + "/{app}", put_app),
        web.patch(p + "/{app}", patch_app),
        web.delete(p + "/{app}", delete_app),
        web.put(p + "/{app}/weights", put_weights),
        web.put(p + "/{app}/services/{svc}", put_service),
        web.delete(p + "/{app}/services/{svc}", delete_service),
        web.post(p + "/{app}/release", start_release),
        web.get(p + "/{app}/release", get_release),
        web.post(p + "/{app}/release/confirm", confirm_release),
        web.post(p + "/{app}/release/rollback", rollback_release),
        web.get(p + "/{app}/stats", app_stats),
    ]
