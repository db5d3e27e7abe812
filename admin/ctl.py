"""``routerctl``: the operator's client for the router's admin API (README: routerctl, The admin API).

It only speaks HTTP to the admin API -- every rule (weights 0..100, one open release per app,
no confirm while ``in_progress`` ...) is the server's, and the server's error message is what the
operator sees. The standard library, and the router's YAML reader for ``apply`` and ``export``.

    routerctl apps
    routerctl show shop
    routerctl create shop --route shop.example.com --backend 10.0.0.5:80
    routerctl weights shop web=0 web-v2=100       # one atomic step [--force]
    routerctl sticky shop off
    routerctl routes shop shop.example.com example.com/shop
    routerctl drain-timeout shop 10m
    routerctl service set shop web --backend 10.0.0.5:80 --backend 10.0.0.6:80
    routerctl service delete shop web-old
    routerctl release start shop web-v2 --backend 10.0.0.7:80 --wait
    routerctl release status shop
    routerctl release confirm shop [--force] [--remove]
    routerctl release rollback shop [--remove]
    routerctl release ramp shop --steps 5,25,50,100 --interval 60s --max-error-rate 1% \
        --max-latency-ratio 2 [--wait]           # raised step by step, rolled back on errors
    routerctl release pause|resume|abort shop    # the ramp
    routerctl release preview shop [--ttl 1h]    # a link that shows a browser the new version
    routerctl delete shop
    routerctl export > router.yaml                # the apps, as a configuration file
    routerctl apply router.yaml [--dry-run] [--force]
    routerctl history [shop] [--limit N]

Global options (before or after the command): ``--url`` (env ``ROUTER_URL``, default
``http://127.0.0.1:9090``), ``--token`` (env ``ROUTER_TOKEN``), ``--json``, ``--timeout``,
``--if-match``.

Exit codes: 0 success; 1 the server answered with an error (or: no open release, a ``--wait``
that timed out); 2 a bad command line; 3 the admin API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, NoReturn, Sequence, TextIO

from router import version
from router.config import format_duration

DEFAULT_URL = "http://127.0.0.1:9090"  # the admin API's default listen address
DEFAULT_TIMEOUT = 10.0
REMOVE_TIMEOUT = 60.0
POLL_INTERVAL = 0.5  # --wait: how often the release is fetched
RAMP_LINE_EVERY = 5.0  # release ramp --wait, not on a terminal: a line at least this often
API = "/api/v1/apps"

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

_INT_RE = re.compile(r"^-?[0-9]+$")  # stricter than int(): no "1_0", " 5", "+5"
_SPINNER = "|/-\\"


# -- errors -----------------------------------------------------------------------------------
class CtlError(Exception):
    """Ends the command with ``exit_code`` after printing ``routerctl: <message>``."""

    exit_code = EXIT_SERVER

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CtlError):
    exit_code = EXIT_USAGE


class Unreachable(CtlError):
    exit_code = EXIT_UNREACHABLE


class ApiError(CtlError):
    """The server answered 4xx/5xx; its ``{"error": {...}}`` body is passed through."""

    def __init__(self, status: int, code: str, message: str, field: str | None,
                 body: Any = None) -> None:
        text = f"{status} {code}: {message}"
        if field:
            text += f" (field: {field})"
        super().__init__(text)
        self.status, self.code, self.field, self.body = status, code, field, body


# -- HTTP -------------------------------------------------------------------------------------
class Client:
    """One admin API endpoint. ``request`` returns the decoded JSON body or raises a CtlError."""

    def __init__(self, url: str, token: str | None, timeout: float,
                 if_match: int | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--url: must be http://HOST:PORT or https://HOST:PORT (got {url!r})")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.if_match = if_match
        self.etag: str | None = None  # of the last answer
        # Straight to the admin listener: it is loopback or an internal address, and an HTTP
        # proxy from the environment would see the bearer token.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        headers = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            # default=str: a YAML date in a file to apply reaches the server, which names it.
            data = json.dumps(body, default=str).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.if_match is not None and method != "GET":
            headers.setdefault("If-Match", f'"{self.if_match}"')
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
                self.etag = resp.headers.get("ETag")
        except urllib.error.HTTPError as e:
            raise _api_error(e.code, e.reason, e.read()) from None
        except urllib.error.URLError as e:
            raise Unreachable(f"cannot reach the admin API at {self.url}: {e.reason}") from None
        except (socket.timeout, TimeoutError):
            raise Unreachable(f"cannot reach the admin API at {self.url}: "
                              f"no answer within {self.timeout:g}s") from None
        except OSError as e:  # a connection reset mid-answer, for one
            raise Unreachable(f"cannot reach the admin API at {self.url}: {e}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CtlError(f"the server at {self.url} answered {method} {path} "
                           "with a body that is not JSON") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)


def _api_error(status: int, reason: Any, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
        err = body["error"]
        return ApiError(status, str(err.get("code") or "error"), str(err.get("message") or reason),
                        err.get("field"), body)
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not the admin API's error shape (a proxy in between, for one): say what we got.
        text = raw.decode("utf-8", "replace").strip().splitlines()
        return ApiError(status, "http_error", text[0][:200] if text else str(reason), None)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def app_path(app: str, tail: str = "") -> str:
    return f"{API}/{_quote(app)}{tail}"


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


def _seconds(value: Any) -> str:
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
    rows = [["STATUS", release.get("status", "-")],
            ["OLD", ",".join(release.get("old") or []) or "-"],
            ["NEW", str(release.get("new", "-"))],
            ["STARTED", str(release.get("started_at", "-"))],
            ["OLD WEIGHTS", pairs(release.get("old_weights") or {})]]
    ramp = release.get("ramp")
    if ramp:
        rows += [["RAMP", f"{ramp['status']}, {step_text(ramp)}"],
                 ["STEPS", ", ".join(f"{s}%" for s in ramp["steps"])
                  + f" every {_seconds(ramp['interval'])}"],
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
                  ["drain_timeout:", _seconds(app.get("drain_timeout"))],
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
        if not _INT_RE.match(value):
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
            err.write(f"\r{_SPINNER[tick % len(_SPINNER)]} {line} "
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
        if not _INT_RE.match(text):
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
    app = c.request("PUT", app_path(args.app), body, {"If-None-Match": "*"})
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
    out.show(app, lambda a: f"{a['name']}: drain_timeout {_seconds(a['drain_timeout'])} "
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
    result = c.request("PUT", app_path(args.app, f"/services/{_quote(args.service)}"), body,
                       headers)
    out.show(result, _generation_line(f"service {args.service} "
                                      f"{'added' if current is None else 'changed'}"))
    return EXIT_OK


def cmd_service_delete(c: Client, args: argparse.Namespace, out: Output) -> int:
    c.request("DELETE", app_path(args.app, f"/services/{_quote(args.service)}"))
    out.show({"name": args.app, "service": args.service, "deleted": True},
             lambda d: f"{d['name']}: service {d['service']} deleted")
    return EXIT_OK


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
        text += f"\nrefused without --force: {result['refused']}"
    return text


def cmd_apply(c: Client, args: argparse.Namespace, out: Output) -> int:
    from router.config import ConfigError, parse_yaml, read_yaml

    try:
        # "-": standard input, so that `routerctl export | routerctl apply -` works.
        data = (parse_yaml(sys.stdin.buffer.read(), "<stdin>") if args.file == "-"
                else read_yaml(args.file))
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not isinstance(data, dict) or "apps" not in data:
        raise UsageError(f"{args.file}: no apps section: nothing to apply (an empty `apps: {{}}` "
                         "would delete every app)")
    source = "<stdin>" if args.file == "-" else args.file
    body = {"apps": data["apps"] if data["apps"] is not None else {},
            "domain": data.get("domain"), "source": source}
    query = urllib.parse.urlencode([(k, "1") for k, on in (("dry_run", args.dry_run),
                                                           ("force", args.force)) if on])
    result = c.request("POST", "/api/v1/apply" + (f"?{query}" if query else ""), body)
    out.show(result, lambda r: apply_text(source, r))
    return EXIT_OK


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


# -- command line -----------------------------------------------------------------------------
_REMOVE_HELP = ("also stop and remove the containers of the version taken out (apps discovered "
                "from Docker); waits for them at least 60 s")
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {value!r})") from None
    if not f > 0 or f == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {value!r})")
    return f


def _generation(value: str) -> int:
    v = value.strip().strip('"')
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"must be a generation number (got {value!r})")
    return int(v)


def _weight(value: str) -> int:
    if not _INT_RE.match(value) or not 0 <= int(value) <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer 0..100 (got {value!r})")
    return int(value)


def _limit(value: str) -> int:
    if not _INT_RE.match(value) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {value!r})")
    return int(value)


def _count(value: str) -> int:
    if not _INT_RE.match(value) or int(value) < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {value!r})")
    return int(value)


def _health_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--health-path", metavar="PATH", help="HTTP health check path (default: TCP)")
    p.add_argument("--health-interval", metavar="DURATION", help="health check interval, e.g. 2s")
    p.add_argument("--health-timeout", metavar="DURATION", help="health check timeout, e.g. 1s")


def _global_options(defaults: bool) -> "_Parser":
    """The global options, accepted before and after the command. Only the top-level parser
    carries defaults; a subcommand's copy sets a value only when it is given there."""
    p = _Parser(add_help=False)
    d: Callable[[Any], Any] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--url", default=d(os.environ.get("ROUTER_URL") or DEFAULT_URL),
                   help="admin API base URL (env ROUTER_URL; default %(default)s)"
                   if defaults else argparse.SUPPRESS)
    p.add_argument("--token", default=d(os.environ.get("ROUTER_TOKEN") or None),
                   help="bearer token (env ROUTER_TOKEN)" if defaults else argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=d(False),
                   help="print the server's JSON instead of tables" if defaults else argparse.SUPPRESS)
    p.add_argument("--timeout", type=_positive, default=d(DEFAULT_TIMEOUT), metavar="SECONDS",
                   help="per-request timeout (default %(default)s)" if defaults else argparse.SUPPRESS)
    p.add_argument("--if-match", type=_generation, default=d(None), metavar="GEN",
                   help="send If-Match: \"GEN\" on changes (412 if the app moved on)"
                   if defaults else argparse.SUPPRESS)
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = _Parser(prog="routerctl", parents=[_global_options(defaults=True)],
                     description="Admin client for the blue-green router.",
                     epilog="exit codes: 0 ok, 1 server error, 2 bad command line, "
                            "3 admin API unreachable")
    parser.add_argument("--version", action="version", version=f"routerctl {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    p = sub.add_parser("apps", parents=[common], help="list the apps")
    p.set_defaults(func=cmd_apps)

    p = sub.add_parser("show", parents=[common], help="one app: services, weights, health, release")
    p.add_argument("app")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("weights", parents=[common],
                       help="set several weights in one atomic step")
    p.add_argument("app")
    p.add_argument("pairs", nargs="+", metavar="SVC=W")
    p.add_argument("--force", action="store_true",
                   help="even if no service left with weight has a backend ready to take "
                        "requests, or every weight becomes 0")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("sticky", parents=[common], help="switch session stickiness")
    p.add_argument("app")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(func=cmd_sticky)

    p = sub.add_parser("create", parents=[common], help="create an app with one service")
    p.add_argument("app")
    p.add_argument("--route", action="append", required=True, metavar="HOST[/PATH]",
                   help="a route of the app (repeat for more)")
    p.add_argument("--backend", action="append", required=True, metavar="HOST:PORT",
                   help="a backend of its service (repeat for more)")
    p.add_argument("--service", default="web", help="the service's name (default %(default)s)")
    p.add_argument("--weight", type=_weight, default=100, help="its weight (default %(default)s)")
    p.add_argument("--sticky", choices=["on", "off"], default="on",
                   help="session stickiness (default %(default)s)")
    p.add_argument("--drain-timeout", metavar="DURATION",
                   help="re-pin clients of a 0-weight service after this long (default none)")
    _health_options(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("delete", parents=[common], help="delete an app")
    p.add_argument("app")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("routes", parents=[common], help="set an app's routes")
    p.add_argument("app")
    p.add_argument("routes", nargs="+", metavar="HOST[/PATH]")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("drain-timeout", parents=[common],
                       help="re-pin clients of a 0-weight service after this long")
    p.add_argument("app")
    p.add_argument("value", metavar="DURATION|none", help="e.g. 10m; none: never")
    p.set_defaults(func=cmd_drain_timeout)

    svc = sub.add_parser("service", parents=[common], help="add, change or delete a service")
    ssub = svc.add_subparsers(dest="service_command", metavar="ACTION", required=True,
                              parser_class=_Parser)
    p = ssub.add_parser("set", parents=[common],
                        help="add a service (weight 0 unless given), or change what is given")
    p.add_argument("app")
    p.add_argument("service")
    p.add_argument("--backend", action="append", metavar="HOST:PORT",
                   help="its backends, all of them (repeat for more)")
    p.add_argument("--weight", type=_weight, help="its weight")
    _health_options(p)
    p.add_argument("--no-health-check", action="store_true",
                   help="remove its health check (a TCP connect is all a release waits for)")
    p.set_defaults(func=cmd_service_set)
    p = ssub.add_parser("delete", parents=[common], help="delete a service")
    p.add_argument("app")
    p.add_argument("service")
    p.set_defaults(func=cmd_service_delete)

    p = sub.add_parser("export", parents=[common],
                       help="the apps as a configuration file (routerctl apply reads it)")
    p.add_argument("apps", nargs="*", metavar="APP", help="only these apps (default: all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("apply", parents=[common],
                       help="make the apps of a configuration file the router's, in one change")
    p.add_argument("file", metavar="FILE", help="a configuration file; - for standard input")
    p.add_argument("--dry-run", action="store_true", help="show the changes, make none")
    p.add_argument("--force", action="store_true",
                   help="also close open releases and delete services clients are pinned to")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("history", parents=[common], help="the changes, newest first")
    p.add_argument("app", nargs="?", help="only the changes of this app")
    p.add_argument("--limit", type=_limit, default=20, help="how many (default %(default)s)")
    p.set_defaults(func=cmd_history)

    rel = sub.add_parser("release", parents=[common], help="blue-green releases")
    rsub = rel.add_subparsers(dest="release_command", metavar="ACTION", required=True,
                              parser_class=_Parser)
    p = rsub.add_parser("start", parents=[common], help="add the new service at weight 0")
    p.add_argument("app")
    p.add_argument("service")
    p.add_argument("--backend", action="append", required=True, metavar="HOST:PORT",
                   help="a backend of the new service (repeat for more)")
    _health_options(p)
    p.add_argument("--wait", action="store_true",
                   help="wait until every new backend is healthy (awaiting_confirmation)")
    p.add_argument("--wait-timeout", type=_positive, default=120.0, metavar="SECONDS",
                   help="give up waiting after this long (exit 1; default %(default)s)")
    p.set_defaults(func=cmd_release_start)

    p = rsub.add_parser("status", parents=[common], help="the open release (exit 1 if none)")
    p.add_argument("app")
    p.set_defaults(func=cmd_release_status)

    p = rsub.add_parser("confirm", parents=[common], help="delete the old services")
    p.add_argument("app")
    p.add_argument("--force", action="store_true",
                   help="first move all weight to the new service")
    p.add_argument("--remove", action="store_true", help=_REMOVE_HELP)
    p.set_defaults(func=cmd_release_confirm)

    p = rsub.add_parser("rollback", parents=[common],
                        help="delete the new service, restore the old weights")
    p.add_argument("app")
    p.add_argument("--remove", action="store_true", help=_REMOVE_HELP)
    p.set_defaults(func=cmd_release_rollback)

    p = rsub.add_parser("ramp", parents=[common],
                        help="raise the new version's share step by step, judging each step "
                             "against the old version; roll back when out of bounds")
    p.add_argument("app")
    p.add_argument("--steps", required=True, metavar="P,P,...",
                   help="the new version's share at each step, percent: 5,25,50,100")
    p.add_argument("--interval", metavar="DURATION", help="each step is judged over this long "
                   "(default 60s)")
    p.add_argument("--max-error-rate", metavar="RATE", help="how far the new version's error "
                   "rate may exceed the old one's: 1%% or 0.01 (the default)")
    p.add_argument("--max-latency-ratio", type=_positive, metavar="X",
                   help="how many times the old version's latency quantile the new one's may be "
                        "(default 2)")
    p.add_argument("--quantile", metavar="Q", help="the latency quantile compared: p99 (default)")
    p.add_argument("--latency-floor", metavar="DURATION",
                   help="latencies at or under this are within bounds (default 10ms)")
    p.add_argument("--min-requests", type=_limit, metavar="N",
                   help="requests each version needs in an interval to be judged (default 20)")
    p.add_argument("--max-waits", type=_count, metavar="N",
                   help="intervals with too little traffic before the ramp pauses (default 10)")
    p.add_argument("--wait", action="store_true",
                   help="follow the ramp until it is done (exit 0), or rolled back, aborted or "
                        "paused (exit 1)")
    p.add_argument("--wait-timeout", type=_positive, default=3600.0, metavar="SECONDS",
                   help="give up waiting after this long (exit 1; default %(default)s)")
    p.set_defaults(func=cmd_release_ramp)

    for move, text in (("pause", "stop judging the ramp; the weights stay"),
                       ("resume", "judge the current step again over a fresh interval"),
                       ("abort", "end the ramp: old weights back, the new version at weight 0")):
        p = rsub.add_parser(move, parents=[common], help=text)
        p.add_argument("app")
        p.set_defaults(func=cmd_ramp_move)

    p = rsub.add_parser("preview", parents=[common],
                        help="a link (and cookie) that shows a browser the new version, "
                             "whatever its weight")
    p.add_argument("app")
    p.add_argument("--ttl", metavar="DURATION", help="how long it works (default 1h, at most 7d)")
    p.set_defaults(func=cmd_release_preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad command line (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out = Output(args.json, sys.stdout)
    try:
        client = Client(args.url, args.token, args.timeout, args.if_match)
        code: int = args.func(client, args, out)
        return code
    except CtlError as e:
        sys.stdout.flush()
        print(f"routerctl: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("routerctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
