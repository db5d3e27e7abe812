"""routerctl's commands on conflicts: states a replica held that a shared store (etcd) no longer
had after it lost its data (docs/etcd.md, "Conflicts"); list them, and keep one or the other."""

from __future__ import annotations

import argparse
from typing import Any

from .client import EXIT_OK, Client, quote
from .render import Output


def conflicts_text(data: dict[str, Any]) -> str:
    conflicts = data.get("conflicts") or []
    if not conflicts:
        return "no conflicts: the store holds every change the replicas hold"
    parts = []
    for c in conflicts:
        name = c["name"]
        lines = [f"conflict {name}: generation {c.get('generation', '-')} (line "
                 f"{c.get('line', '-')}), held by {c.get('found_by')} when {c.get('cause')}; "
                 f"found {c.get('found_at')}" + ("" if c.get("stored", True)
                                                 else " (not written to the store yet)")]
        if c.get("error"):
            lines.append(f"  its state is not valid: {c['error']}")
        change = c.get("change")
        if change:
            lines.append(f"  its last change: {change['operation']} by {change['client']} at "
                         f"{change['time']}: {'; '.join(change.get('changes') or []) or '-'}")
        differs = c.get("keeping_it_changes") or []
        lines.append(f"  keeping it would change the current state (generation "
                     f"{data.get('generation')}): " + ("; ".join(differs) or "nothing"))
        lines.append(f"  routerctl conflicts resolve {name} --keep conflict  (its state becomes "
                     "the current one)")
        lines.append(f"  routerctl conflicts resolve {name} --keep store     (it is dropped)")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def resolved_text(r: dict[str, Any]) -> str:
    if r["kept"] == "conflict" and r["changes"]:
        return (f"conflict {r['conflict']}: its state kept (generation {r['generation']})"
                + "".join(f"\n  {line}" for line in r["changes"]))
    return (f"conflict {r['conflict']}: dropped; the state stays as it is (generation "
            f"{r['generation']})")


def cmd_conflicts(c: Client, args: argparse.Namespace, out: Output) -> int:
    if args.conflicts_command == "resolve":
        result = c.request("POST", f"/api/v1/conflicts/{quote(args.name)}", {"keep": args.keep})
        out.show(result, resolved_text)
    else:
        out.show(c.get("/api/v1/conflicts"), conflicts_text)
    return EXIT_OK
