"""What keeps a web page from driving the admin listener (docs/admin-api.md, "Web pages").

A page on another site can make a browser send requests to the admin listener -- a form, a
``fetch`` with ``mode: "no-cors"`` -- without reading the answers; after DNS rebinding, a name of
the attacker's resolves to the listener and the page is same-origin with it, reading and writing.
Without a token, or with the console's session cookie, nothing else would stop either. So, for
every request but the health probes and those that carry the admin token (a page cannot have it):

- ``Host`` must name the listener: an IP address (a rebinding page's host is always a name),
  ``localhost``, or a name of ``admin.allowed_hosts``; else 421, as Jupyter and the Kubernetes
  dashboard refuse rebinding.
- ``Origin``, when a browser sends one, must be the listener's own (the scheme and the ``Host``
  the request names), or one of ``admin.allowed_origins``; else 403. ``null`` never is.

And for every change (``POST``, ``PUT``, ``PATCH``, ``DELETE``), token or not: a body is JSON,
sent as ``Content-Type: application/json`` (else 415), so that no form and no ``text/plain``
``fetch`` -- the requests a page may send to another origin without asking first -- is read as
a change. A change without a body (``POST .../ramp/pause``) needs no type, but one of those a
page may send (an empty form) is refused all the same.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Awaitable, Callable

from aiohttp import web

from router.config import AdminConfig
from router.config.scalars import web_origin
from router.errors import Forbidden, Misdirected, RouterError, UnsupportedMediaType

from .auth import UNGUARDED, has_token
from .errors import error_response
from .handlers import SERVER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
# The types a page may send to another origin without asking it first (the Fetch standard's
# CORS-safelisted Content-Type values): refused even on an empty change, an empty form.
PAGE_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data",
                        "text/plain"})


def host_name(host: str) -> str | None:
    """The name (or address) a ``Host`` field names, lower case, without port, brackets or a
    trailing dot; None if it is not a host."""
    try:
        parts = urllib.parse.urlsplit("//" + host)
        parts.port  # noqa: B018 (raises on a port that is not one)
    except ValueError:
        return None
    if parts.hostname is None or parts.path or parts.query or parts.fragment or "@" in host:
        return None
    return parts.hostname.rstrip(".")


def host_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    """Whether the listener answers to ``name`` (``host_name``'s): any address, ``localhost``,
    or an ``admin.allowed_hosts`` entry (``*``, the name, or ``.suffix`` for it and below)."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost":
        return True
    for entry in allowed:
        if entry == "*" or entry == name:
            return True
        if entry.startswith(".") and (name == entry[1:] or name.endswith(entry)):
            return True
    return False


def check_host(request: web.Request, admin: AdminConfig) -> None:
    host = request.headers.get("Host")
    if host is None:
        return  # HTTP/1.0, by hand: every browser names the host
    name = host_name(host)
    if name is None or not host_allowed(name, admin.allowed_hosts):
        raise Misdirected(
            f"this admin listener does not answer to {host!r}: only to its addresses, "
            "localhost and the names of admin.allowed_hosts (a web page may reach it under a "
            "name of its own by DNS rebinding); add the name there if it is yours", "Host")


def check_origin(request: web.Request, admin: AdminConfig) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not sent by a page of another origin
    own = web_origin(f"{request.scheme}://{request.headers.get('Host', '')}")
    seen = web_origin(origin)
    if seen is not None and (seen == own or seen in admin.allowed_origins):
        return
    raise Forbidden(f"a page from {origin[:200]!r} may not use the admin listener, only its own "
                    "pages and those of admin.allowed_origins (a console behind a reverse "
                    "proxy); add the origin there if it is yours", "Origin")


def check_json(request: web.Request) -> None:
    ctype = request.headers.get("Content-Type")
    media = ctype.split(";", 1)[0].strip().lower() if ctype is not None else None
    if media == JSON or (not request.body_exists and media not in PAGE_TYPES):
        return
    got = repr(ctype[:100]) if ctype is not None else "a body of no type"
    raise UnsupportedMediaType(f"a change takes a JSON body sent as Content-Type: {JSON} "
                               f"(got {got})", "Content-Type")


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in UNGUARDED:
        return await handler(request)
    admin = request.app[SERVER].config.admin
    try:
        if not has_token(request):
            check_host(request, admin)
            check_origin(request, admin)
        if request.method in CHANGES:
            check_json(request)
    except RouterError as e:
        return error_response(e)
    return await handler(request)
