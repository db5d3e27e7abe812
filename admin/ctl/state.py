"""routerctl's commands on the state as a whole: export it as a configuration file, apply
one (with a reviewed diff), and read the history of changes."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from router.config import format_duration

from .client import API, EXIT_OK, EXIT_REFUSED, Client, CtlError, UsageError, cli_terms
from .render import Output, table

# -- the state as a file; its history ---------------------------------------------------------
def exported_app(app: dict[str, Any]) -> dict[str, Any]:
    """An app object of the API as the configuration file writes it."""
    out: dict[str, Any] = {"routes": app["routes"], "session_sticky": app["session_sticky"]}
    if app.get("drain_timeout") is not None:
        out["drain_timeout"] = format_duration(app["drain_timeout"])
    if app.get("preview") is not None:
        out["preview"] = {k: v for k, v in app["preview"].items() if v is not None}
    services: dict[str, Any] = {}
    for name, s in (app.get("services") or {}).items():
        svc: dict[str, Any] = {"weight": s["weight"], "backends": s["backends"]}
        hc = s.get("health_check")
        if hc is not None:
            svc["health_check"] = {k: format_duration(v) if k in ("interval", "timeout") else v
                                   for k, v in hc.items() if v is not None}
        services[name] = svc
    out["services"] = services
    return out


def cmd_export(c: Client, args: argparse.Namespace, out: Output) -> int:
    import yaml

    apps = c.get(API).get("apps") or []
    generation = (c.etag or "").strip('"')
    names = [a["name"] for a in apps]
    for name in args.apps:
        if name not in names:
            raise CtlError(f"export: no app {name!r} (apps: {', '.join(names) or 'none'})")
    doc = {"apps": {a["name"]: exported_app(a) for a in apps
                    if not args.apps or a["name"] in args.apps}}
    if out.as_json:
        out.out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    out.out.write(f"# The apps of the router at {c.url}, generation {generation}. `routerctl "
                  "apply FILE` makes\n# a router's apps these; its other settings stay those of "
                  "its configuration file.\n")
    out.out.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
    return EXIT_OK


def change_lines(entry: dict[str, Any]) -> list[str]:
    """An entry's changes, each naming its app (the server names it only when several apps
    changed at once)."""
    apps, changes = entry.get("apps") or [], entry.get("changes") or []
    return [f"{apps[0]}: {c}" for c in changes] if len(apps) == 1 else list(changes)


def apply_text(source: str, result: dict[str, Any]) -> str:
    lines, gen = change_lines(result), result["generation"]
    if result["dry_run"]:
        head = (f"{source}: {'would change' if lines else 'no changes against'} generation "
                f"{gen} (dry run: nothing applied)")
    elif lines:
        head = f"{source}: applied (generation {gen})"
    else:
        head = f"{source}: no changes (generation {gen})"
    text = head + "".join(f"\n  {line}" for line in lines)
    if result.get("refused"):
        text += f"\nrefused without --force: {cli_terms(result['refused'])}"
    return text


def cmd_apply(c: Client, args: argparse.Namespace, out: Output) -> int:
    from router.config import ConfigError, parse_yaml, read_yaml

    # "-", or no FILE with something piped in: standard input (`routerctl export | routerctl
    # apply --dry-run`).
    stdin = args.file == "-" or (args.file is None and not sys.stdin.isatty())
    if args.file is None and not stdin:
        raise UsageError("apply: give a configuration FILE, or pipe one in (- reads standard "
                         "input)")
    source = "<stdin>" if stdin else args.file
    try:
        data = parse_yaml(sys.stdin.buffer.read(), source) if stdin else read_yaml(args.file)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not isinstance(data, dict) or "apps" not in data:
        raise UsageError(f"{source}: no apps section: nothing to apply (an empty `apps: {{}}` "
                         "would delete every app)")
    body = {"apps": data["apps"] if data["apps"] is not None else {},
            "domain": data.get("domain"), "source": source}
    query = urllib.parse.urlencode([(k, "1") for k, on in (("dry_run", args.dry_run),
                                                           ("force", args.force)) if on])
    result = c.request("POST", "/api/v1/apply" + (f"?{query}" if query else ""), body)
    out.show(result, lambda r: apply_text(source, r))
    # A dry run gates CI: what the apply itself would refuse is not a success.
    return EXIT_REFUSED if result.get("refused") else EXIT_OK


def history_table(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no changes recorded"
    rows = [["GENERATION", "TIME", "CLIENT", "TOKEN", "OPERATION", "CHANGES"]]
    for e in entries:
        apps, changes = e.get("apps") or [], "; ".join(e.get("changes") or [])
        rows.append([str(e["generation"]), e["time"], e["client"], e.get("token") or "-",
                     e["operation"], f"{apps[0]}: {changes}" if len(apps) == 1 else changes])
    return table(rows, right=(0,))


def cmd_history(c: Client, args: argparse.Namespace, out: Output) -> int:
    query = [("limit", str(args.limit))] + ([("app", args.app)] if args.app else [])
    data = c.get("/api/v1/history?" + urllib.parse.urlencode(query))
    out.show(data, lambda d: history_table(d.get("history") or []))
    return EXIT_OK
