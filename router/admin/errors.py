"""The one place where a ``RouterError`` becomes the admin listener's answer:
``{"error": {"code", "message", "field"}}`` with its status and the fields that go with it."""

from __future__ import annotations

from aiohttp import web

from router.errors import RouterError


def error_response(e: RouterError) -> web.Response:
    resp = web.json_response(e.to_dict(), status=e.status, headers={"Cache-Control": "no-store"})
    if e.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="router"'
    elif e.status in (429, 503):
        # The store is retried continually; a client's wrong tokens are answered within seconds.
        resp.headers["Retry-After"] = "1"
    return resp
