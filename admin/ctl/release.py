"""routerctl's release commands: start (and wait for readiness), status, the guarded ramp
(and its progress), preview links, confirm and roll back."""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.parse
from typing import Any, Callable, TextIO

from .client import EXIT_OK, EXIT_SERVER, INT_RE, ApiError, Client, CtlError, UsageError, app_path
from .commands import health_check
from .render import Output, ramp_line, release_table, services_table

REMOVE_TIMEOUT = 60.0
POLL_INTERVAL = 0.5  # --wait: how often the release is fetched
RAMP_LINE_EVERY = 5.0  # release ramp --wait, not on a terminal: a line at least this often
SPINNER = "|/-\\"


def cmd_release_start(c: Client, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"service": args.service, "backends": args.backend}
    check = health_check(args)
    if check:
        body["health_check"] = check
    release = c.request("POST", app_path(args.app, "/release"), body)
    if not args.wait:
        out.show(release, lambda r: f"{args.app}: release started\n" + release_table(r))
        return EXIT_OK
    return wait_ready(c, args.app, args.service, args.wait_timeout, out)


def _progress(app: dict[str, Any], new: str) -> tuple[str, int, int, bool]:
    """(status, healthy backends, backends, has a health check) of the new service."""
    release = app.get("release") or {}
    svc = (app.get("services") or {}).get(new) or {}
    return (str(release.get("status", "-")), len(svc.get("healthy_backends") or []),
            len(svc.get("backends") or []), svc.get("health_check") is not None)


def progress_line(progress: tuple[str, int, int, bool]) -> str:
    status, healthy, total, checked = progress
    line = f"{status}: {healthy}/{total} backends healthy"
    if status == "in_progress" and not checked:
        # Unchecked backends count as healthy for routing; the release waits for a TCP
        # connect to each, which the app object does not show.
        line += " (no health check; waiting for a TCP connect)"
    return line


def wait_ready(c: Client, app_name: str, new: str, timeout: float, out: Output,
               err: TextIO | None = None) -> int:
    """Poll until the release of ``app_name`` is ``awaiting_confirmation``.

    The app object carries both the release and the new service's ``healthy_backends``, so
    one GET per tick gives the whole progress line. Progress goes to stderr (one line per
    change, or a spinner on a terminal) so that stdout holds only the result.
    """
    err = err if err is not None else sys.stderr
    tty = err.isatty()
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last: tuple[str, int, int, bool] | None = None
    tick = 0
    while True:
        app = c.get(app_path(app_name))
        release = app.get("release")
        if release is None or release.get("new") != new:
            if tty:
                err.write("\n")
            raise CtlError(f"{app_name}: the release of {new!r} is no longer open "
                           "(confirmed or rolled back meanwhile)")
        progress = _progress(app, new)
        status, line = progress[0], progress_line(progress)
        if tty:
            err.write(f"\r{SPINNER[tick % len(SPINNER)]} {line} "
                      f"({time.monotonic() - started:.1f}s)\x1b[K")
            err.flush()
        elif progress != last:
            err.write(line + "\n")
            err.flush()
        last = progress
        tick += 1
        if status == "awaiting_confirmation":
            if tty:
                err.write("\n")
            out.show(release, lambda r: f"{app_name}: release ready\n" + release_table(r))
            return EXIT_OK
        if time.monotonic() >= deadline:
            if tty:
                err.write("\n")
            raise CtlError(f"{app_name}: release of {new!r} not ready after {timeout:g}s "
                           f"({line})")
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def cmd_release_status(c: Client, args: argparse.Namespace, out: Output) -> int:
    try:
        release = c.get(app_path(args.app, "/release"))
    except ApiError as e:
        if e.status == 404 and e.field == "release":
            if out.as_json:
                out.out.write("null\n")
            else:
                out.out.write(f"{args.app}: no open release\n")
            return EXIT_SERVER
        raise
    out.show(release, release_table)
    return EXIT_OK


_PERCENT_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%$")


def parse_rate(value: str) -> float:
    """``1%`` or ``0.01`` -> 0.01; a bare number of 1 or more is ambiguous and refused."""
    m = _PERCENT_RE.match(value.strip())
    try:
        rate = float(m.group(1)) / 100 if m else float(value)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1 or (m is None and rate >= 1):  # "1": one percent, or all?
        raise UsageError(f"--max-error-rate: a percentage like 1% or a fraction like 0.01 "
                         f"(got {value!r})")
    return rate


def parse_steps(value: str) -> list[int]:
    """``5,25,50,100`` -> [5, 25, 50, 100] (the server checks the rest)."""
    steps = []
    for part in value.split(","):
        text = part.strip().rstrip("%")
        if not INT_RE.match(text):
            raise UsageError(f"--steps: a list of percentages like 5,25,50,100 (got {value!r})")
        steps.append(int(text))
    return steps


def parse_quantile(value: str) -> float:
    """``p99``, ``99`` or ``0.99`` -> 0.99."""
    text = value.strip().lower().removeprefix("p")
    try:
        q = float(text)
    except ValueError:
        raise UsageError(f"--quantile: like p99 or 0.99 (got {value!r})") from None
    return round(q / 100, 6) if q >= 1 else q


def cmd_release_ramp(c: Client, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"steps": parse_steps(args.steps)}
    for key, value in (("interval", args.interval), ("latency_floor", args.latency_floor),
                       ("min_requests", args.min_requests), ("max_waits", args.max_waits),
                       ("max_latency_ratio", args.max_latency_ratio)):
        if value is not None:
            body[key] = value
    if args.max_error_rate is not None:
        body["max_error_rate"] = parse_rate(args.max_error_rate)
    if args.quantile is not None:
        body["quantile"] = parse_quantile(args.quantile)
    release = c.request("POST", app_path(args.app, "/release/ramp"), body)
    if not args.wait:
        out.show(release, lambda r: f"{args.app}: ramp started\n" + release_table(r))
        return EXIT_OK
    return wait_ramp(c, args.app, release["new"], args.wait_timeout, out)


def wait_ramp(c: Client, app_name: str, new: str, timeout: float, out: Output,
              err: TextIO | None = None) -> int:
    """Follow the ramp of ``new`` until it is done (exit 0), or rolled back, aborted or paused
    (exit 1, with the reason). On stderr, what the step measures so far: a status line on a
    terminal; otherwise a line at each new step or status, and every RAMP_LINE_EVERY seconds
    between. The final release on stdout."""
    err = err if err is not None else sys.stderr
    tty = err.isatty()
    deadline = time.monotonic() + timeout
    last = ""
    shown: tuple[Any, ...] = ()
    shown_at = 0.0
    pending = ""  # the newest line not shown yet
    while True:
        try:
            progress = c.get(app_path(app_name, "/release/ramp"))
        except ApiError as e:
            if e.status != 404:
                raise
            progress = None
        if progress is None or progress.get("new") != new:
            if tty:
                err.write("\n")
            raise CtlError(f"{app_name}: {_ramp_end(c, app_name, new)}")
        ramp = progress["ramp"]
        line = ramp_line(progress)
        where = (ramp["status"], ramp["step"])
        if tty:
            if line != last:
                err.write(f"\r{line}\x1b[K")
        elif where != shown or time.monotonic() - shown_at >= RAMP_LINE_EVERY:
            if where != shown and pending:
                err.write(pending + "\n")  # what the step before measured last
            err.write(line + "\n")
            shown, shown_at, pending = where, time.monotonic(), ""
        else:
            pending = line
        err.flush()
        last = line
        if ramp["status"] != "running":
            if tty:
                err.write("\n")
            if ramp["status"] == "rolled_back":  # in effect, the store cannot be written yet
                raise CtlError(f"{app_name}: the ramp rolled {new} back (not yet stored): "
                               f"{ramp.get('reason')}")
            release = c.get(app_path(app_name, "/release"))
            if ramp["status"] == "done":
                out.show(release, lambda r: f"{app_name}: ramp done\n" + release_table(r))
                return EXIT_OK
            raise CtlError(f"{app_name}: the ramp of {new} is paused: "
                           f"{ramp.get('reason') or 'by an operator'}")
        if time.monotonic() >= deadline:
            if tty:
                err.write("\n")
            raise CtlError(f"{app_name}: the ramp of {new} is still running after {timeout:g}s "
                           f"({line})")
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def _ramp_end(c: Client, app_name: str, new: str) -> str:
    """How a ramp that is gone ended, from the history."""
    query = urllib.parse.urlencode([("app", app_name), ("limit", "20")])
    for entry in c.get("/api/v1/history?" + query).get("history") or []:
        op = entry.get("operation")
        if op == "ramp_rollback":
            return f"the ramp rolled {new} back: {entry.get('reason')}"
        if op in ("ramp_abort", "rollback_release", "confirm_release", "delete_app"):
            return (f"the ramp of {new} ended: {op.replace('_', ' ')} by {entry.get('client')} "
                    f"(generation {entry.get('generation')})")
    return f"the ramp of {new} is gone"


def cmd_ramp_move(c: Client, args: argparse.Namespace, out: Output) -> int:
    move = args.release_command
    release = c.request("POST", app_path(args.app, f"/release/ramp/{move}"))
    done = {"pause": "paused", "resume": "resumed", "abort": "aborted"}[move]
    out.show(release, lambda r: f"{args.app}: ramp {done}\n" + release_table(r))
    return EXIT_OK


def preview_text(p: dict[str, Any]) -> str:
    lines = [f"{p['app']}: preview of {p['service']} until {p['expires_at']}",
             "open in a browser (sets the cookie):"]
    lines += [f"  {link}" for link in p["links"]]
    lines.append(f"or send the cookie: {p['cookie']['name']}={p['cookie']['value']}")
    if p.get("header"):
        lines.append(f"or the header: {p['header']['name']}: {p['header']['value']}")
    return "\n".join(lines)


def cmd_release_preview(c: Client, args: argparse.Namespace, out: Output) -> int:
    body = {"ttl": args.ttl} if args.ttl is not None else None
    out.show(c.request("POST", app_path(args.app, "/release/preview"), body), preview_text)
    return EXIT_OK


def _closed(what: str) -> Callable[[dict[str, Any]], str]:
    return lambda a: (f"{a['name']}: release {what} (generation {a['generation']})\n"
                      + services_table(a))


def _removal_time(c: Client, args: argparse.Namespace) -> None:
    # The server answers once the containers are stopped: Docker gives each its stop timeout
    # (10 s by default) before SIGKILL.
    if args.remove:
        c.timeout = max(c.timeout, REMOVE_TIMEOUT)


def cmd_release_confirm(c: Client, args: argparse.Namespace, out: Output) -> int:
    body = {k: True for k in ("force", "remove") if getattr(args, k)} or None
    _removal_time(c, args)
    out.show(c.request("POST", app_path(args.app, "/release/confirm"), body), _closed("confirmed"))
    return EXIT_OK


def cmd_release_rollback(c: Client, args: argparse.Namespace, out: Output) -> int:
    body = {"remove": True} if args.remove else None
    _removal_time(c, args)
    out.show(c.request("POST", app_path(args.app, "/release/rollback"), body),
             _closed("rolled back"))
    return EXIT_OK
