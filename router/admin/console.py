"""The web console at ``/ui/``: static pages that drive the REST API from the browser.

Everything the console shows or changes goes through the same ``/api/v1`` calls as
``routerctl``; this module only serves the files under ``router/admin/ui/`` and, when an admin token
is configured, lets a browser that signed in once use the API without holding the token in
script-readable storage (see docs/console.md):

- ``POST /ui/session`` with the token answers with an ``HttpOnly; SameSite=Strict`` cookie
  that names a signed session (not the token) and a CSRF token for the page;
- ``session_middleware`` lets an ``/api/`` call with a valid session cookie through as if it
  carried the bearer token, and refuses every change that does not carry the session's CSRF
  token in ``X-CSRF-Token``.

The rules every request to the admin listener passes first (``Host``, ``Origin``, JSON bodies:
``router.admin.guard``) keep a page of another site from signing in or acting here; a wrong token at
sign-in is answered as slowly as a wrong bearer token (``router.admin.auth``).

Sessions are stateless: an HMAC, keyed by the admin token, over the session's issue time and a
random id. They survive a restart of the router and end when they expire or when the token
changes. Without a token (allowed on loopback only), the console, like the API, asks for none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from router.errors import BadRequest, Forbidden, RouterError, Unauthorized

from .auth import THROTTLE, grant, matches, too_many
from .errors import error_response
from .handlers import SERVER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UI_DIR = Path(__file__).resolve().parent / "ui"
COOKIE = "router_console"
CSRF_HEADER = "X-CSRF-Token"
# A working day: long enough not to interrupt a release, short enough that a forgotten
# browser does not stay signed in for good.
SESSION_LIFE = 12 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
          ".txt": "text/plain; charset=utf-8"}
# Every byte the console runs comes from this listener: no inline script, no other origin,
# and the pages cannot be framed (clickjacking of the release buttons).
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag), so an upgraded router serves new files
}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"router console session", hashlib.sha256).digest()


def _sign(key: bytes, msg: str) -> str:
    return _b64(hmac.new(key, msg.encode(), hashlib.sha256).digest())


def new_session(token: str, now: float) -> str:
    body = f"{int(now)}.{_b64(secrets.token_bytes(16))}"
    return f"{body}.{_sign(_key(token), body)}"


def session_id(token: str, cookie: str, now: float) -> str | None:
    """The random id of a valid, unexpired session cookie, else None."""
    parts = cookie.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(_key(token), body), parts[2]):
        return None
    if not 0 <= now - int(parts[0]) < SESSION_LIFE:
        return None
    return parts[1]


def csrf_token(token: str, sid: str) -> str:
    return _sign(_key(token), "csrf." + sid)


def _error(e: RouterError) -> web.Response:
    resp = error_response(e)
    if e.status == 401:
        resp.del_cookie(COOKIE, path="/")
    return resp


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An ``/api/`` call from a signed-in console: the session cookie stands for the token."""
    token = request.app[SERVER].config.admin.token
    cookie = request.cookies.get(COOKIE)
    if (token is None or cookie is None or not request.path.startswith("/api/")
            or "Authorization" in request.headers):
        return await handler(request)
    sid = session_id(token, cookie, time.time())
    if sid is None:
        return _error(Unauthorized("the console session has expired or is not valid; "
                                   "sign in again", "Authorization"))
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf_token(token, sid).encode()):
            return _error(Forbidden("a change from the console needs the page's CSRF token "
                                    f"({CSRF_HEADER}); reload the console", CSRF_HEADER))
    grant(request)
    return await handler(request)


def _session_body(request: web.Request, sid: str | None) -> dict[str, object]:
    token = request.app[SERVER].config.admin.token
    if token is None:
        return {"auth": "none", "signed_in": True, "csrf": None}
    return {"auth": "token", "signed_in": sid is not None,
            "csrf": csrf_token(token, sid) if sid is not None else None}


async def get_session(request: web.Request) -> web.Response:
    token = request.app[SERVER].config.admin.token
    cookie = request.cookies.get(COOKIE)
    sid = session_id(token, cookie, time.time()) if token and cookie else None
    return web.json_response(_session_body(request, sid), headers={"Cache-Control": "no-store"})


async def sign_in(request: web.Request) -> web.Response:
    token = request.app[SERVER].config.admin.token
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(BadRequest('the body must be {"token": "..."}', "token"))
    sent = body.get("token") if isinstance(body, dict) else None
    if not isinstance(sent, str):
        return _error(BadRequest('the body must be {"token": "..."}', "token"))
    if token is None:
        return web.json_response(_session_body(request, None))
    refused = too_many(request)
    if refused is not None:
        return _error(refused)
    if not matches(token, sent):
        return _error(await request.app[THROTTLE].refuse(request, "wrong admin token", "token"))
    cookie = new_session(token, time.time())
    sid = session_id(token, cookie, time.time())
    resp = web.json_response(_session_body(request, sid), headers={"Cache-Control": "no-store"})
    resp.set_cookie(COOKIE, cookie, path="/", max_age=SESSION_LIFE, httponly=True,
                    samesite="Strict", secure=request.secure)
    return resp


async def sign_out(request: web.Request) -> web.Response:
    resp = web.Response(status=204)
    resp.del_cookie(COOKIE, path="/")
    return resp


def _assets() -> dict[str, Path]:
    """The files served under /ui/, by URL path: a fixed list, so no request path can name a
    file outside the directory."""
    return {p.relative_to(UI_DIR).as_posix(): p for p in UI_DIR.rglob("*")
            if p.is_file() and p.suffix in _TYPES}


def _asset_handler(files: dict[str, Path]) -> Handler:
    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("path") or "index.html"
        path = files.get(name)
        if path is None:
            raise web.HTTPNotFound(text=f"no console file {name!r}\n")
        return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix], **_HEADERS})
    return asset


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/ui/")


def add_routes(app: web.Application) -> None:
    """Serve the console at /ui/ (the session middleware is registered by ``create_app``)."""
    asset = _asset_handler(_assets())
    app.router.add_get("/ui", _redirect)
    app.router.add_get("/ui/session", get_session)
    app.router.add_post("/ui/session", sign_in)
    app.router.add_delete("/ui/session", sign_out)
    app.router.add_get("/ui/", asset)
    app.router.add_get("/ui/{path:.+}", asset)
