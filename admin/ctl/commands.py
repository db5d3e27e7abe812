"""routerctl's commands on apps, their services, weights, stickiness and routes."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from .client import API, EXIT_OK, INT_RE, ApiError, Client, CtlError, UsageError, app_path, quote
from .render import Output, app_detail, apps_table, on_off, seconds, services_table

# -- commands ---------------------------------------------------------------------------------
def cmd_apps(c: Client, args: argparse.Namespace, out: Output) -> int:
    out.show(c.get(API), lambda d: apps_table(d.get("apps") or []))
    return EXIT_OK


def cmd_show(c: Client, args: argparse.Namespace, out: Output) -> int:
    out.show(c.get(app_path(args.app)), app_detail)
    return EXIT_OK


def parse_weights(items: Sequence[str]) -> dict[str, int]:
    """``["web=0", "web-v2=100"]`` -> ``{"web": 0, "web-v2": 100}``; anything else is a
    UsageError before a byte is sent. The range 0..100 is left to the server."""
    weights: dict[str, int] = {}
    for item in items:
        svc, sep, value = item.partition("=")
        if not sep or not svc:
            raise UsageError(f"weights: expected SERVICE=WEIGHT (got {item!r})")
        if not INT_RE.match(value):
            raise UsageError(f"weights: {svc}: the weight must be an integer 0..100 (got {value!r})")
        if svc in weights:
            raise UsageError(f"weights: {svc} is given twice")
        weights[svc] = int(value)
    return weights


def cmd_weights(c: Client, args: argparse.Namespace, out: Output) -> int:
    weights = parse_weights(args.pairs)
    app = c.request("PUT", app_path(args.app, "/weights" + ("?force=true" if args.force else "")),
                    weights)
    out.show(app, lambda a: f"{a['name']}: generation {a['generation']}\n" + services_table(a))
    return EXIT_OK


def cmd_sticky(c: Client, args: argparse.Namespace, out: Output) -> int:
    app = c.request("PATCH", app_path(args.app), {"session_sticky": args.state == "on"})
    out.show(app, lambda a: f"{a['name']}: session_sticky {on_off(a['session_sticky'])} "
                            f"(generation {a['generation']})")
    return EXIT_OK


def health_check(args: argparse.Namespace) -> dict[str, Any] | None:
    """The health check the ``--health-*`` options ask for; None if none is given."""
    check = {k: v for k, v in (("path", args.health_path), ("interval", args.health_interval),
                               ("timeout", args.health_timeout)) if v is not None}
    return check or None


# -- apps, services, routes -------------------------------------------------------------------
def _generation_line(what: str) -> Callable[[dict[str, Any]], str]:
    return lambda a: f"{a['name']}: {what} (generation {a['generation']})\n" + services_table(a)


def _drain_timeout(value: str) -> str | None:
    return None if value in ("none", "off") else value


def cmd_create(c: Client, args: argparse.Namespace, out: Output) -> int:
    service: dict[str, Any] = {"weight": args.weight, "backends": args.backend}
    check = health_check(args)
    if check:
        service["health_check"] = check
    body: dict[str, Any] = {"routes": args.route, "session_sticky": args.sticky == "on",
                            "services": {args.service: service}}
    if args.drain_timeout is not None:
        body["drain_timeout"] = _drain_timeout(args.drain_timeout)
    # Create, never replace: an app of that name answers 412.
    try:
        app = c.request("PUT", app_path(args.app), body, {"If-None-Match": "*"})
    except ApiError as e:
        if e.status == 412 and e.field == "If-None-Match":
            raise CtlError(f"create: app {args.app} exists (routerctl show {args.app})") from None
        raise
    out.show(app, _generation_line("created"))
    return EXIT_OK


def cmd_delete(c: Client, args: argparse.Namespace, out: Output) -> int:
    c.request("DELETE", app_path(args.app))
    out.show({"name": args.app, "deleted": True}, lambda d: f"{d['name']}: deleted")
    return EXIT_OK


def cmd_routes(c: Client, args: argparse.Namespace, out: Output) -> int:
    app = c.request("PATCH", app_path(args.app), {"routes": args.routes})
    out.show(app, lambda a: f"{a['name']}: routes {','.join(a['routes'])} "
                            f"(generation {a['generation']})")
    return EXIT_OK


def cmd_drain_timeout(c: Client, args: argparse.Namespace, out: Output) -> int:
    app = c.request("PATCH", app_path(args.app), {"drain_timeout": _drain_timeout(args.value)})
    out.show(app, lambda a: f"{a['name']}: drain_timeout {seconds(a['drain_timeout'])} "
                            f"(generation {a['generation']})")
    return EXIT_OK


def cmd_service_set(c: Client, args: argparse.Namespace, out: Output) -> int:
    """Create a service, or change the given fields of one: the others are kept as they are,
    read and written back under If-Match, so that a change made meanwhile is not undone."""
    app = c.get(app_path(args.app))
    current = (app.get("services") or {}).get(args.service)
    check = health_check(args)
    if current is None:
        if not args.backend:
            raise UsageError(f"service set: {args.service} is a new service of {args.app}: "
                             "give its --backend")
        body = {"weight": 0 if args.weight is None else args.weight, "backends": args.backend,
                "health_check": check}
    else:
        if args.no_health_check:
            check = None
        elif check is not None or current.get("health_check") is not None:
            check = {**(current.get("health_check") or {}), **(check or {})}
        body = {"weight": current["weight"] if args.weight is None else args.weight,
                "backends": args.backend or current["backends"], "health_check": check}
    headers = {} if c.if_match is not None else {"If-Match": f'"{app["generation"]}"'}
    result = c.request("PUT", app_path(args.app, f"/services/{quote(args.service)}"), body,
                       headers)
    out.show(result, _generation_line(f"service {args.service} "
                                      f"{'added' if current is None else 'changed'}"))
    return EXIT_OK


def cmd_preview_header(c: Client, args: argparse.Namespace, out: Output) -> int:
    """The request header that sends a request to the new version of an open release."""
    if args.header in ("none", "off"):
        if args.value is not None:
            raise UsageError("preview-header: --value goes with a header name, not none")
        preview = None
    else:
        preview = {"header": args.header, "value": args.value}
    app = c.request("PATCH", app_path(args.app), {"preview": preview})
    out.show(app, lambda a: f"{a['name']}: preview header {preview_text(a.get('preview'))} "
                            f"(generation {a['generation']})")
    return EXIT_OK


def preview_text(preview: dict[str, Any] | None) -> str:
    if not preview:
        return "none"
    return f"{preview['header']}: {preview.get('value') or '<the new service>'}"


def cmd_service_delete(c: Client, args: argparse.Namespace, out: Output) -> int:
    c.request("DELETE", app_path(args.app, f"/services/{quote(args.service)}"))
    out.show({"name": args.app, "service": args.service, "deleted": True},
             lambda d: f"{d['name']}: service {d['service']} deleted")
    return EXIT_OK
