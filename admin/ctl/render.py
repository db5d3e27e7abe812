"""How routerctl shows what the admin API answers: aligned tables and one-line summaries, or
the JSON itself with ``--json``."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence, TextIO

from router.config import format_duration


# -- rendering --------------------------------------------------------------------------------
def table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows (the first is the header) as aligned columns; column numbers in ``right`` are
    right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def pairs(mapping: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items()) or "-"


def seconds(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(float(value))
    return "-" if value is None else str(value)


def on_off(value: Any) -> str:
    return "on" if value else "off"


def share(weight: int, total: int) -> str:
    if total <= 0:
        return "-"
    pct = 100.0 * weight / total
    return f"{pct:.0f}%" if pct == int(pct) else f"{pct:.1f}%"


def apps_table(apps: list[dict[str, Any]]) -> str:
    if not apps:
        return "no apps"
    rows = [["APP", "ROUTES", "STICKY", "SERVICES", "RELEASE", "GENERATION"]]
    for a in apps:
        release = a.get("release")
        rows.append([
            a["name"], ",".join(a.get("routes") or []) or "-", on_off(a.get("session_sticky")),
            pairs({n: s["weight"] for n, s in (a.get("services") or {}).items()}),
            release["status"] if release else "-", str(a.get("generation", "-")),
        ])
    return table(rows, right=(5,))


def _health(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's backends' {"state", "reason"}; from a server that does not say, the ones
    taking requests count as healthy."""
    known = svc.get("backend_health")
    if isinstance(known, dict):
        return known
    taking = set(svc.get("healthy_backends") or [])
    return {b: {"state": "healthy" if b in taking else "unhealthy", "reason": None}
            for b in svc.get("backends") or []}


def services_table(app: dict[str, Any]) -> str:
    """HEALTHY counts the backends known to work, and says how many nothing has shown to work
    yet (unchecked: they take requests meanwhile); the backends table of ``show`` says which."""
    services = app.get("services") or {}
    total = sum(s["weight"] for s in services.values())
    rows = [["SERVICE", "WEIGHT", "SHARE", "BACKENDS", "HEALTHY"]]
    for name, s in services.items():
        backends = s.get("backends") or []
        states = [h.get("state") for h in _health(s).values()]
        unchecked = states.count("unchecked")
        rows.append([name, str(s["weight"]), share(s["weight"], total),
                     ",".join(backends) or "-", f"{states.count('healthy')}/{len(backends)}"
                     + (f" ({unchecked} unchecked)" if unchecked else "")])
    return table(rows, right=(1, 2, 4))


def backends_table(app: dict[str, Any]) -> str:
    """Every backend's state (healthy, unhealthy, unchecked) and why."""
    rows = [["BACKEND", "SERVICE", "STATE", "REASON"]]
    for name, s in (app.get("services") or {}).items():
        for addr, h in _health(s).items():
            rows.append([addr, name, str(h.get("state", "-")), h.get("reason") or "-"])
    return table(rows)


def release_table(release: dict[str, Any]) -> str:
    status = release.get("status", "-")
    if release.get("stored") is False:  # in effect; the store could not be written yet
        status += " (not yet stored)"
    rows = [["STATUS", status],
            ["OLD", ",".join(release.get("old") or []) or "-"],
            ["NEW", str(release.get("new", "-"))],
            ["STARTED", str(release.get("started_at", "-"))],
            ["OLD WEIGHTS", pairs(release.get("old_weights") or {})]]
    ramp = release.get("ramp")
    if ramp:
        rows += [["RAMP", f"{ramp['status']}, {step_text(ramp)}"],
                 ["STEPS", ", ".join(f"{s}%" for s in ramp["steps"])
                  + f" every {seconds(ramp['interval'])}"],
                 ["BOUNDS", f"errors at most +{ramp['max_error_rate'] * 100:g}%, "
                            f"p{ramp['quantile'] * 100:g} at most {ramp['max_latency_ratio']:g}x"]]
        if ramp.get("reason"):
            rows.append(["LAST", ramp["reason"]])
    return table(rows)


def step_text(ramp: dict[str, Any]) -> str:
    """``step 2/4 (25%)``."""
    return f"step {ramp['step']}/{len(ramp['steps'])} ({ramp['share']}%)"


def measure_text(name: str, m: dict[str, Any], quantile: float) -> str:
    latency = "-" if m.get("latency") is None else f"{m['latency'] * 1000:.3g} ms"
    return (f"{name} {m['error_rate'] * 100:.1f}% errors of {m['requests']}, "
            f"p{quantile * 100:g} {latency}")


def ramp_line(progress: dict[str, Any]) -> str:
    """One line of ``release ramp --wait``: the step, and both versions so far."""
    ramp = progress["ramp"]
    line = f"{ramp['status']}: {step_text(ramp)}"
    window = progress.get("window")
    if window:
        q = ramp["quantile"]
        line += (f", {window['seconds']:.0f}/{ramp['interval']:g}s: "
                 f"{measure_text(progress['new'], window['new'], q)}; "
                 f"{measure_text(','.join(progress['old']), window['old'], q)}")
    return line


def app_detail(app: dict[str, Any]) -> str:
    head = table([["app:", app["name"]],
                  ["routes:", ",".join(app.get("routes") or []) or "-"],
                  ["sticky:", on_off(app.get("session_sticky"))],
                  ["drain_timeout:", seconds(app.get("drain_timeout"))],
                  ["generation:", str(app.get("generation", "-"))]])
    parts = [head, "", services_table(app), "", backends_table(app)]
    release = app.get("release")
    parts += ["", "release:", release_table(release)] if release else ["", "release: -"]
    return "\n".join(parts)


class Output:
    """Where results go: the server's JSON as is with ``--json``, tables otherwise."""

    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out

    def show(self, data: Any, human: Callable[[Any], str]) -> None:
        if self.as_json:
            self.out.write(json.dumps(data, indent=2) + "\n")
        else:
            self.out.write(human(data) + "\n")
