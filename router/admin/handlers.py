"""Thin handlers: parse, call a state operation, render. No logic of their own."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.control import state as ops
from router.config import ConfigError, config_from_dict, format_duration, parse_duration
from router.dataplane.context import PREVIEW_PARAM
from router.errors import BadGateway, BadRequest, Conflict, Invalid, NotFound
from router.control.history import HISTORY_LIMIT, Actor, fingerprint
from router.providers.engine import DockerError
from router.control.ramp import RampAction
from router.control.release import Release
from router.dataplane.table import PREVIEW_COOKIE_SUFFIX, cookie_name

from .schemas import (
    HealthOf,
    app_body,
    check_name,
    check_query,
    object_body,
    parse_body,
    query_flag,
    query_limit,
    render_app,
    render_stats,
    service_body,
    valid_app_name,
)

if TYPE_CHECKING:
    from router.process.server import Server

SERVER: web.AppKey["Server"] = web.AppKey("server")
log = logging.getLogger("router.admin")


def _server(request: web.Request) -> "Server":
    return request.app[SERVER]


def _health(srv: "Server") -> HealthOf:
    assert srv.health is not None
    return srv.health.state


def _app_response(request: web.Request, state: ops.State, name: str, status: int = 200) -> web.Response:
    srv = _server(request)
    body = render_app(state, name, srv.ctx.table, _health(srv))
    return web.json_response(body, status=status, headers={"ETag": f'"{body["generation"]}"'})


def actor(request: web.Request) -> Actor:
    """Who makes a change: the client's address, and which token (the api middleware has
    checked it, when one is configured)."""
    token = _server(request).config.admin.token
    return Actor(request.remote or "-", fingerprint(token) if token is not None else None)


def _only_new(request: web.Request) -> bool:
    """``If-None-Match: *``: create, never replace."""
    value = request.headers.get("If-None-Match")
    if value is None:
        return False
    if value.strip() != "*":
        raise BadRequest(f"If-None-Match: only * is supported (got {value!r})", "If-None-Match")
    return True


async def _change(request: web.Request, op: ops.Operation, app: str | None) -> ops.State:
    return await _server(request).manager.change(
        op, request.headers.get("If-Match"), app, actor(request))


async def list_apps(request: web.Request) -> web.Response:
    srv = _server(request)
    st = srv.manager.state
    health = _health(srv)
    apps = [render_app(st, a.name, srv.ctx.table, health) for a in st.apps]
    return web.json_response({"apps": apps}, headers={"ETag": f'"{st.generation}"'})


async def get_app(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    st = _server(request).manager.state
    st.app(name)
    return _app_response(request, st, name)


async def put_app(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    body = app_body(name, object_body(await request.read()))
    existed = _server(request).manager.state.has_app(name)
    if not existed:
        valid_app_name(name, "name")
    st = await _change(request, ops.put_app(name, body, _only_new(request)), name)
    return _app_response(request, st, name, 200 if existed else 201)


async def patch_app(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read())
    allowed = {"session_sticky", "routes", "drain_timeout", "preview"}
    for key in body:
        if key not in allowed:
            raise Invalid(f"unknown or read-only field {key!r}; PATCH changes "
                          "session_sticky, routes, drain_timeout, preview", key)
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
        app = srv.manager.state.app(name)
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
    cur = srv.manager.state
    existed = any(s.name == svc for s in cur.app(name).services)
    st = await _change(request, ops.put_service(name, svc, body, _only_new(request)), name)
    return _app_response(request, st, name, 200 if existed else 201)


async def delete_service(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    svc = check_name(request.match_info["svc"], "service")
    await _change(request, ops.delete_service(name, svc), name)
    return web.Response(status=204)


def _release_response(st: ops.State, name: str, status: int = 200,
                      srv: "Server | None" = None) -> web.Response:
    """The open release; with ``srv``, one a rollback not stored yet closed too (shown as
    ``rolled_back``, ``"stored": false``), and the changes not stored yet of an open one."""
    release = st.releases.get(name)
    gen = st.app_generations.get(name, st.generation)
    headers = {"ETag": f'"{gen}"'}
    unstored = srv.manager.unstored(name) if srv is not None else []
    closed = srv.manager.unstored_rollback(name) if srv is not None and release is None else None
    if closed is not None:
        return web.json_response(closed, status=status, headers=headers)
    if release is None:
        raise NotFound(f"app {name!r} has no open release", "release")
    body = release.to_dict()
    if unstored:
        body.update(stored=False, unstored=unstored)
    return web.json_response(body, status=status, headers=headers)


async def start_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read())
    await _change(request, ops.start(name, body), name)
    await _server(request).releases_changed()
    return _release_response(_server(request).manager.state, name, 201)


async def get_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    st = _server(request).manager.state
    st.app(name)
    return _release_response(st, name, srv=_server(request))


def _open_release(request: web.Request, name: str) -> Release | None:
    return _server(request).manager.state.releases.get(name)


def _remove_flag(body: dict[str, Any]) -> bool:
    remove = body.get("remove", False)
    if not isinstance(remove, bool):
        raise Invalid(f"must be true or false (got {remove!r})", "remove")
    return remove


async def _release_step(request: web.Request, name: str, op: ops.Operation, remove: bool,
                        leaving: tuple[str, ...]) -> web.Response:
    """Run a release step; with ``remove``, then stop and remove the containers of the
    versions it took out of the app (``leaving``)."""
    srv = _server(request)
    if remove:
        if srv.docker is None:
            raise Conflict("no Docker provider is configured (providers.docker): there are "
                           "no containers to remove", "remove")
        srv.docker.check_removable(name)
    st = await _change(request, op, name)
    unstored = srv.manager.unstored(name)
    if unstored:
        # In effect, not stored yet (the store cannot be written): 202; containers are left
        # alone (remove them once it is stored).
        body = render_app(st, name, srv.ctx.table, _health(srv))
        body.update(stored=False, unstored=unstored)
        return web.json_response(body, status=202, headers={"ETag": f'"{body["generation"]}"'})
    if remove:
        assert srv.docker is not None
        gone = tuple(s for s in leaving if all(x.name != s for x in st.app(name).services))
        try:
            await srv.docker.remove(name, gone)
        except DockerError as e:
            raise BadGateway(f"the release step of {name!r} is done (generation "
                             f"{st.generation}), but removing the containers of "
                             f"{', '.join(gone)} failed: {e}", "remove") from None
    return _app_response(request, st, name)


async def confirm_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read(), required=False)
    for key in body:
        if key not in ("force", "remove"):
            raise Invalid(f"unknown field {key!r}", key)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise Invalid(f"must be true or false (got {force!r})", "force")
    release = _open_release(request, name)
    return await _release_step(request, name, ops.confirm(name, force), _remove_flag(body),
                               release.old if release is not None else ())


async def rollback_release(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read(), required=False)
    for key in body:
        if key != "remove":
            raise Invalid(f"unknown field {key!r}", key)
    release = _open_release(request, name)
    return await _release_step(request, name, ops.rollback(name), _remove_flag(body),
                               (release.new,) if release is not None else ())


# -- the guarded ramp and preview (docs/release-ramp.md) ------------------------------------------
async def start_ramp(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read())
    st = await _change(request, ops.ramp_start(name, body), name)
    return _release_response(st, name, 201)


async def move_ramp(request: web.Request) -> web.Response:
    """Pause, resume or abort the ramp (the last segment of the path)."""
    name = check_name(request.match_info["app"], "app")
    for key in object_body(await request.read(), required=False):
        raise Invalid(f"unknown field {key!r} (this call takes no fields)", key)
    op = ops.ramp_move(name, RampAction(request.match_info["move"]))
    srv = _server(request)
    st = await _change(request, op, name)
    return _release_response(st, name, 202 if srv.manager.unstored(name) else 200, srv)


async def get_ramp(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    srv = _server(request)
    assert srv.ramps is not None  # started with the router
    st = srv.manager.state
    st.app(name)
    release = st.releases.get(name)
    progress = await srv.ramps.progress(name)
    if release is None and progress is None:
        raise NotFound(f"app {name!r} has no open release", "release")
    if progress is None:
        assert release is not None
        raise NotFound(f"the release of {release.new} has no ramp", "ramp")
    gen = st.app_generations.get(name, st.generation)
    return web.json_response(progress, headers={"ETag": f'"{gen}"', "Cache-Control": "no-store"})


# A preview link lasts an hour unless asked otherwise, a week at most: it opens an unreleased
# version to whoever holds it.
PREVIEW_TTL = 3600.0
PREVIEW_MAX_TTL = 7 * 86400.0


async def preview(request: web.Request) -> web.Response:
    """A preview token of the open release: the link that sets its cookie, the cookie itself,
    and the app's preview header if it has one."""
    name = check_name(request.match_info["app"], "app")
    body = object_body(await request.read(), required=False)
    for key in body:
        if key != "ttl":
            raise Invalid(f"unknown field {key!r}", key)
    try:
        ttl = parse_duration(body.get("ttl", PREVIEW_TTL), "ttl")
    except ConfigError as e:
        raise ops.invalid(e) from None
    if not 1 <= ttl <= PREVIEW_MAX_TTL:
        raise Invalid(f"must be a duration of 1s..{format_duration(PREVIEW_MAX_TTL)} "
                      f"(got {body.get('ttl')!r})", "ttl")
    srv = _server(request)
    st = srv.manager.state
    app = st.app(name)
    release = st.releases.get(name)
    if release is None:
        raise NotFound(f"app {name!r} has no open release", "release")
    codec = srv.plane.ctx.codec
    now = int(time.time())
    expires = now + int(ttl)
    new = next(s for s in app.services if s.name == release.new)
    token = codec.issue_preview(name.encode(), codec.preview_id(name, new.name, new.incarnation,
                                                                release.started_at),
                                now, expires).decode()
    param = PREVIEW_PARAM.decode()
    # Links that reach this router: its port, or the public_url it is reached at.
    links = [f"{srv.config.public_base(r.host, srv.port)}{r.path}?{param}{token}"
             for r in app.routes]
    header = None
    if app.preview is not None:
        header = {"name": app.preview.header,
                  "value": app.preview.value if app.preview.value is not None else release.new}
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    log.info("preview of %s (%s) for %s, until %s", name, release.new, request.remote, until)
    return web.json_response({
        "app": name, "service": release.new, "expires_at": until,
        "links": links,
        "cookie": {"name": cookie_name(app, srv.config.sticky.cookie)
                   + PREVIEW_COOKIE_SUFFIX.decode(), "value": token},
        "header": header,
    }, headers={"Cache-Control": "no-store"})


async def history(request: web.Request) -> web.Response:
    check_query(request.query, ("app", "limit"))
    app = request.query.get("app")
    if app is not None:
        valid_app_name(app, "app")
    limit = query_limit(request.query, "limit", default=100, maximum=HISTORY_LIMIT)
    entries = await _server(request).manager.history(app, limit)
    return web.json_response({"history": entries})


async def apply(request: web.Request) -> web.Response:
    """The apps of a configuration file become the routing state's, as one change."""
    check_query(request.query, ("dry_run", "force"))
    body = object_body(await request.read())
    for key in body:
        if key not in ("apps", "domain", "source"):
            raise Invalid(f"unknown field {key!r}; the body is {{\"apps\": ..., \"domain\": ..., "
                          "\"source\": ...}", key)
    if not isinstance(body.get("apps"), dict):
        raise Invalid("required: the apps, a mapping of app names to apps (an empty mapping "
                      "deletes every app)", "apps")
    source = body.get("source", "apply")
    if not isinstance(source, str):
        raise Invalid(f"must be the file's name (got {source!r})", "source")
    try:
        # The file's own rules: labels (with its domain), routes unique across its apps.
        apps = config_from_dict({"domain": body.get("domain"), "apps": body["apps"]},
                                source or "apply").apps
    except ConfigError as e:
        raise ops.invalid(e) from None
    force = query_flag(request.query, "force")
    dry_run = query_flag(request.query, "dry_run")
    srv = _server(request)
    manager = srv.manager
    pinned = await srv.pinned_services()
    if_match = request.headers.get("If-Match")
    refused = None
    if dry_run:
        # What a forced apply would change, and what an unforced one would refuse.
        try:
            manager.preview(ops.apply_apps(apps, force, pinned), if_match)
        except Conflict as e:
            refused = e.message
        st = manager.state
        planned = manager.preview(ops.apply_apps(apps, True, pinned), if_match)
        change = planned.change if planned is not st else None
    else:
        st, change = await manager.run(ops.apply_apps(apps, force, pinned), if_match, None,
                                       actor(request))
    return web.json_response({
        "dry_run": dry_run,
        "generation": st.generation,
        "apps": list(change.apps) if change is not None else [],
        "changes": list(change.changes) if change is not None else [],
        "refused": refused,
    }, headers={"ETag": f'"{st.generation}"'})


async def list_conflicts(request: web.Request) -> web.Response:
    """States replicas held that the store lost (docs/etcd.md, "Conflicts")."""
    srv = _server(request)
    return web.json_response({"generation": srv.manager.state.generation,
                              "conflicts": await srv.manager.conflicts()},
                             headers={"Cache-Control": "no-store"})


async def resolve_conflict(request: web.Request) -> web.Response:
    """``{"keep": "conflict"}``: its state becomes the current one; ``{"keep": "store"}``: the
    record goes, the state stays."""
    name = request.match_info["name"]
    body = object_body(await request.read())
    for key in body:
        if key != "keep":
            raise Invalid(f"unknown field {key!r}; the body is {{\"keep\": \"conflict\" or "
                          "\"store\"}", key)
    keep = body.get("keep")
    if keep != "conflict" and keep != "store":
        raise Invalid(f"must be conflict or store (got {keep!r})", "keep")
    srv = _server(request)
    st, change = await srv.manager.resolve(name, keep, request.headers.get("If-Match"),
                                           actor(request))
    return web.json_response({"conflict": name, "kept": keep, "generation": st.generation,
                              "changes": list(change.changes) if change is not None else []},
                             headers={"ETag": f'"{st.generation}"'})


async def app_stats(request: web.Request) -> web.Response:
    name = check_name(request.match_info["app"], "app")
    srv = _server(request)
    srv.manager.state.app(name)  # 404 for an unknown app
    stats = await srv.summed_stats()
    return web.json_response(render_stats(stats, srv.plane.table, name, time.time()),
                             headers={"Cache-Control": "no-store"})


def routes() -> list[Any]:
    p = "/api/v1/apps"
    return [
        web.get("/api/v1/history", history),
        web.post("/api/v1/apply", apply),
        web.get("/api/v1/conflicts", list_conflicts),
        web.post("/api/v1/conflicts/{name}", resolve_conflict),
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
        web.post(p + "/{app}/release/ramp", start_ramp),
        web.get(p + "/{app}/release/ramp", get_ramp),
        web.post(p + "/{app}/release/ramp/{move:pause|resume|abort}", move_ramp),
        web.post(p + "/{app}/release/preview", preview),
        web.get(p + "/{app}/stats", app_stats),
    ]
