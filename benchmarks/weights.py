"""Zero failed requests while weights move under full load, against nginx's reload and HAProxy.

    python3 -m benchmarks.weights                 # router, nginx, HAProxy: 30 s of load each
    python3 -m benchmarks.weights --quick         # 10 s each
    python3 -m benchmarks.weights --targets router --duration 60

Each proxy in turn gets ``wrk -t1 -c50`` on ``/small`` while the harness moves the weights of
the two backends ("blue", "green") every 2 s through 0/100, 100/0, 50/50, 25/75, 75/25 (and
round again), both weights in one step:

* router: ``PUT /api/v1/apps/bench/weights {"blue": B, "green": G}`` on its admin API (one
  atomic change; the call answers once the new table is live);
* nginx: the two ``server`` lines of its ``upstream`` rewritten (``weight=N``, ``down`` for 0,
  since nginx refuses ``weight=0``), then ``nginx -s reload`` (a new worker, the old one drains);
* HAProxy: ``set weight bench/blue B; set weight bench/green G`` on its admin stats socket, in
  one line; the weight that rises is set first, so the two are never both 0 in between.

wrk runs a small Lua script (``conf/tally.lua``) that counts the responses per backend (the
backends' bodies start with their name) and per wall-clock second, so the table shows both the
failures (non-2xx, socket errors) and that the traffic did follow each setting: for every
setting, the share of blue over the whole seconds spent at it, against the share the weights
ask for. Pinning, the quiet wait before each load and the disturbed-run notes are run.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import http.client
import json
import math
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from .common import RESULTS_MD, revision, write_section
from .run import (_UNITS, CONF, CONNECTIONS, HOST, LOAD_CPU, NOISY_SHARE, SUT_CPU,
                  BenchError, Harness, Pinning, Proc, TargetSkipped, cpu_use, decide_pinning,
                  tools_or_none, exit_on_signals, free_port, http_get, other_cpu, parse_wrk,
                  proc_table, read_cpu_ticks, render, report_header, start_backends, start_target,
                  tool_lines, quiet_before_round, wait_until, wrk_killed_on_error, Backends, CpuUse, Others)

TARGETS = ("router", "nginx", "haproxy")
SEQUENCE = ((0, 100), (100, 0), (50, 50), (25, 75), (75, 25))  # (blue, green), cycled
INITIAL = (50, 50)  # every proxy starts at 50/50
INTERVAL_S = 2.0
FIRST_CHANGE_S = 1.0  # after wrk starts: its 50 connections are open by then
CHANGE_PHASE_S = 0.1  # changes happen this long after a wall-clock second begins
SETTLE_S = 0.25  # a second counts for a setting only if it starts this long after the change
SHARE_TOLERANCE = 0.05  # observed blue share within 5 points of the weights' share: "moved"
CHANGE_TIMEOUT_S = 10.0
LUA = CONF / "tally.lua"
SECTION = "weights"

_SOCK = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TALLY = re.compile(r"^TALLY (\d+) (\S+) (\d+)$", re.M)
# "    Latency     1.83ms    1.02ms  45.12ms   93.10%": average, stdev, max, +/- stdev
_MAX = re.compile(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)\s", re.M)


# --------------------------------------------------------------------------------------------
# How each proxy's weights are changed


class Changer(Protocol):
    how: str

    def apply(self, blue: int, green: int) -> str | None:
        """Set both weights; None when applied, else why not."""


class RouterChanger:
    how = "admin API `PUT /api/v1/apps/bench/weights` (one atomic step)"

    def __init__(self, admin_port: int) -> None:
        self.admin_port = admin_port

    def apply(self, blue: int, green: int) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=CHANGE_TIMEOUT_S)
        try:
            conn.request("PUT", "/api/v1/apps/bench/weights",
                         body=json.dumps({"blue": blue, "green": green}),
                         headers={"Content-Type": "application/json",
                                  "Host": f"127.0.0.1:{self.admin_port}"})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        return None if resp.status == 200 else f"{resp.status}: {body[:200]!r}"

    def current(self) -> str:
        reply = http_get(self.admin_port, "/api/v1/apps/bench", host=f"127.0.0.1:{self.admin_port}")
        services = json.loads(reply.body)["services"]
        return f"{services['blue']['weight']}/{services['green']['weight']}"


def nginx_weight(w: int) -> str:
    return f"weight={w}" if w > 0 else "down"  # nginx refuses weight=0


class NginxChanger:
    how = "upstream `weight=` lines rewritten (`down` for 0), then `nginx -s reload`"

    def __init__(self, nginx: str, prefix: Path, conf: Path, port: int, backends: Backends) -> None:
        self.nginx, self.prefix, self.conf, self.port, self.backends = (nginx, prefix, conf, port,
                                                                        backends)

    def render(self, blue: int, green: int, dest: Path) -> Path:
        return render("weights.nginx.conf", dest, prefix=self.prefix, port=self.port,
                      blue_port=self.backends.blue, green_port=self.backends.green,
                      blue_weight=nginx_weight(blue), green_weight=nginx_weight(green))

    def apply(self, blue: int, green: int) -> str | None:
        tmp = self.conf.with_suffix(".new")
        self.render(blue, green, tmp)
        tmp.replace(self.conf)  # the master reads a whole file, old or new
        cmd = [self.nginx, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
               "-c", str(self.conf), "-s", "reload"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=CHANGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"`{shlex.join(cmd)}` did not finish within {CHANGE_TIMEOUT_S:.0f} s"
        if out.returncode != 0:
            return f"`nginx -s reload` exited {out.returncode}: {out.stderr.strip()[:200]}"
        return None


class HAProxyChanger:
    how = "runtime API `set weight bench/<srv> N` on the admin stats socket (both in one line)"

    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CHANGE_TIMEOUT_S)
            s.connect(str(self.sock))
            s.sendall(line.encode() + b"\n")
            chunks = []
            for _ in range(1000):  # a reply is a few lines; the socket closes after it
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def apply(self, blue: int, green: int) -> str | None:
        # The weight that rises first: in between, the two are never both 0 (a 503 window).
        order = sorted((("blue", blue), ("green", green)), key=lambda sw: -sw[1])
        line = "; ".join(f"set weight bench/{srv} {w}" for srv, w in order)
        try:
            reply = self.command(line).strip()
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return reply or None  # "set weight" answers nothing when it succeeds

    def current(self) -> str:
        weights = [self.command(f"get weight bench/{srv}").split()[0] for srv in ("blue", "green")]
        return "/".join(weights)


# --------------------------------------------------------------------------------------------
# Starting the proxies


@dataclass
class Subject:
    name: str
    port: int
    procs: list[Proc]
    changer: Changer
    log: list[Proc] = field(default_factory=list)  # whose output is checked for errors


def start_subject(h: Harness, name: str, tools: dict[str, str], backends: Backends,
                  pin: Pinning, router_workers: int = 0) -> Subject:
    if name == "router":
        args = argparse.Namespace(router_workers=router_workers)
        target = start_target(h, "router", tools, backends, pin, args)
        assert target.admin_port is not None
        return Subject(name, target.port, target.procs, RouterChanger(target.admin_port),
                       log=target.procs)
    port = free_port()
    prefix = h.tmp / f"weights-{name}"
    prefix.mkdir()
    if name == "nginx":
        conf = prefix / "nginx.conf"
        nginx_changer = NginxChanger(tools["nginx"], prefix, conf, port, backends)
        nginx_changer.render(*INITIAL, conf)
        changer: Changer = nginx_changer
        proc = h.start(name, [*pin.prefix(SUT_CPU), tools["nginx"], "-p", str(prefix), "-e",
                              str(prefix / "error.log"), "-c", str(conf)])
    elif name == "haproxy":
        sock = prefix / "haproxy.sock"
        conf = render("weights.haproxy.cfg", prefix / "haproxy.cfg", port=port, socket=sock,
                      blue_port=backends.blue, green_port=backends.green)
        haproxy_changer = HAProxyChanger(sock)
        changer = haproxy_changer
        proc = h.start(name, [*pin.prefix(SUT_CPU), tools["haproxy"], "-db", "-f", str(conf)])
    else:
        raise BenchError(f"unknown target {name}")

    def both_backends() -> str | None:
        seen = set()
        for _ in range(6):
            reply = http_get(port, "/small")
            if reply.status != 200:
                return f"GET /small answered {reply.status}"
            seen.add(reply.body.split(b" ", 1)[0].decode(errors="replace"))
        return None if seen == {"blue", "green"} else f"6 requests reached only {sorted(seen)}"

    problem = wait_until(10.0, both_backends, proc)
    if problem is None and isinstance(changer, HAProxyChanger):
        try:
            weights = changer.current()
            if weights != "50/50":
                problem = f"runtime API: weights {weights}, expected 50/50"
        except (OSError, IndexError) as exc:
            problem = f"runtime API on {changer.sock}: {type(exc).__name__}: {exc}"
    if problem:
        h.stop(proc)
        raise TargetSkipped(f"{name} on port {port}: {problem}\n{proc.log_tail()}")
    return Subject(name, port, [proc], changer)


# --------------------------------------------------------------------------------------------
# One load with weights moving


@dataclass(frozen=True)
class Change:
    blue: int
    green: int
    started: float  # wall clock (time.time(), as wrk's os.time())
    ended: float
    error: str | None

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1e3


@dataclass
class Outcome:
    name: str
    how: str
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    non2xx: int = 0
    sock: tuple[int, int, int, int] = (0, 0, 0, 0)  # connect, read, write, timeout
    changes: list[Change] = field(default_factory=list)
    tally: dict[int, dict[str, int]] = field(default_factory=dict)  # second -> key -> count
    started: float = 0.0
    ended: float = 0.0
    cpus: CpuUse | None = None
    others: Others | None = None
    final_weights: str | None = None
    workers: int = 0  # the router's --workers, when passed
    error: str | None = None

    @property
    def failed(self) -> int:
        return self.non2xx + sum(self.sock)

    @property
    def applied(self) -> int:
        return sum(1 for c in self.changes if c.error is None)

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for row in self.tally.values():
            for key, n in row.items():
                total[key] = total.get(key, 0) + n
        return total

    def whole_seconds(self) -> list[tuple[int, tuple[int, int]]]:
        """(wall-clock second, (blue, green) setting) for every second of the tally that lies
        wholly inside the time one setting was live: from SETTLE_S after its change call
        answered to the start of the next change."""
        windows: list[tuple[float, float, tuple[int, int]]] = []
        start, setting = self.started, INITIAL
        for change in self.changes:
            if change.error is not None:
                continue
            windows.append((start, change.started, setting))
            start, setting = change.ended + SETTLE_S, (change.blue, change.green)
        windows.append((start, self.ended, setting))
        out = []
        for sec in sorted(self.tally):
            for lo, hi, w in windows:
                if lo <= sec and sec + 1 <= hi:
                    out.append((sec, w))
                    break
        return out

    def shares(self) -> dict[tuple[int, int], tuple[int, int, int]]:
        """(blue, green) setting -> (whole seconds spent at it, blue responses, green responses)."""
        out: dict[tuple[int, int], tuple[int, int, int]] = {}
        for sec, w in self.whole_seconds():
            row = self.tally[sec]
            n, b, g = out.get(w, (0, 0, 0))
            out[w] = (n + 1, b + row.get("blue", 0), g + row.get("green", 0))
        return out

    def stale(self) -> list[tuple[int, tuple[int, int], str, int]]:
        """Responses from a backend whose weight was 0, in whole seconds that began at least
        SETTLE_S after the change call answered: (second, setting, backend, count).

        Any such response means the proxy kept sending new requests by an old setting after it
        said the change was made (or a request took longer than SETTLE_S + the rest of that
        second: see the max latency).
        """
        out = []
        for sec, (bw, gw) in self.whole_seconds():
            for name, weight in (("blue", bw), ("green", gw)):
                n = self.tally[sec].get(name, 0)
                if weight == 0 and n:
                    out.append((sec, (bw, gw), name, n))
        return out

    def moved(self) -> bool | None:
        """Did the traffic follow the weights? None: too few settings seen to judge.

        Judged on every setting that lasted a whole second (the last change of a run may not).
        """
        shares = self.shares()
        if len(shares) < 3:
            return None
        for (bw, gw), (_, b, g) in shares.items():
            if b + g == 0 or abs(b / (b + g) - bw / (bw + gw)) > SHARE_TOLERANCE:
                return False
        return True


def load_with_changes(wrk: str, pin: Pinning, subject: Subject, duration: int) -> Outcome:
    out = Outcome(subject.name, subject.changer.how)
    cmd = [*pin.prefix(LOAD_CPU), wrk, "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency",
           "-s", str(LUA), "-H", f"Host: {HOST}", f"http://127.0.0.1:{subject.port}/small"]
    table_before, machine_before = proc_table(), read_cpu_ticks()
    out.started = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with wrk_killed_on_error(proc, duration + 30):
        # The changes: every INTERVAL_S from about FIRST_CHANGE_S on, while inside the load,
        # each CHANGE_PHASE_S past a wall-clock second: then every setting lives through at
        # least one whole second of wrk's per-second tally, which judges whether it moved.
        first = math.ceil(out.started + FIRST_CHANGE_S - CHANGE_PHASE_S) + CHANGE_PHASE_S
        offset = first - out.started  # seconds after the start of the load
        n_changes = max(0, math.floor((duration - 0.5 - offset) / INTERVAL_S) + 1)
        for i in range(n_changes):
            at = t0 + offset + i * INTERVAL_S
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if proc.poll() is not None:
                break
            blue, green = SEQUENCE[i % len(SEQUENCE)]
            began = time.time()
            error = subject.changer.apply(blue, green)
            out.changes.append(Change(blue, green, began, time.time(), error))
        stdout, stderr = proc.communicate(timeout=duration + 30)
    out.ended = time.time()
    table_after, machine_after = proc_table(), read_cpu_ticks()
    out.cpus = cpu_use(machine_before, machine_after)
    out.others = other_cpu(table_before, table_after, machine_before, machine_after)
    if proc.returncode != 0:
        raise BenchError(f"`{shlex.join(cmd)}` exited {proc.returncode}: {stderr.strip()}")
    out.rps, out.p50_ms, out.p99_ms, out.requests, out.non2xx, _ = parse_wrk(stdout)
    lat = _MAX.search(stdout)
    if lat:
        out.max_ms = float(lat.group(1)) * _UNITS[lat.group(2)]
    sock = _SOCK.search(stdout)
    if sock:
        c, r, w, t = (int(v) for v in sock.groups())
        out.sock = (c, r, w, t)
    for sec, key, n in _TALLY.findall(stdout):
        row = out.tally.setdefault(int(sec), {})
        row[key] = row.get(key, 0) + int(n)
    for p in subject.procs:
        if not p.alive():
            raise BenchError(f"{p.name} exited during the load (code {p.popen.returncode})\n"
                             f"{p.log_tail()}")
    current = getattr(subject.changer, "current", None)
    if current is not None:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError, KeyError,
                                 IndexError):
            out.final_weights = current()
    return out


# --------------------------------------------------------------------------------------------
# Report


def _ms(changes: list[Change]) -> str:
    times = [c.ms for c in changes if c.error is None]
    if not times:
        return "–"
    return f"{statistics.median(times):.1f} / {max(times):.1f}"


def table(outcomes: list[Outcome]) -> str:
    lines = ["| proxy | requests | requests/s | p99 ms | max ms | non-2xx | socket errors "
             "(connect/read/write/timeout) | failed | weight changes applied | change call ms "
             "(median / max) | responses blue / green | traffic moved | to a weight-0 backend "
             "after the change |",
             "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|--:|"]
    for o in outcomes:
        if o.error is not None:
            lines.append(f"| {o.name} | error | | | | | | | | | | | |")
            continue
        counts = o.counts()
        moved = o.moved()
        stale = sum(n for *_, n in o.stale())
        lines.append(
            f"| {o.name} | {o.requests:,} | {o.rps:,.0f} | {o.p99_ms:.2f} | {o.max_ms:,.1f} | "
            f"{o.non2xx} | {sum(o.sock)} ({'/'.join(str(v) for v in o.sock)}) | "
            f"**{o.failed}** | {o.applied} of {len(o.changes)} | {_ms(o.changes)} | "
            f"{counts.get('blue', 0):,} / {counts.get('green', 0):,} | "
            f"{'yes' if moved else 'no' if moved is False else 'not judged'} | {stale} |")
    return "\n".join(lines)


def shares_table(outcomes: list[Outcome]) -> str:
    settings = list(dict.fromkeys([INITIAL, *SEQUENCE]))
    head = " | ".join(f"{b}/{g}" for b, g in settings)
    lines = [f"| proxy | {head} |", "|---|" + "--:|" * len(settings)]
    for o in outcomes:
        if o.error is not None:
            continue
        shares = o.shares()
        cells = []
        for w in settings:
            if w not in shares:
                cells.append("–")
                continue
            n, b, g = shares[w]
            cells.append(f"{b / (b + g) * 100:.1f}% ({n} s)" if b + g else f"no 200s ({n} s)")
        lines.append(f"| {o.name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def notes_for(outcomes: list[Outcome], duration: int) -> list[str]:
    notes: list[str] = []
    for o in outcomes:
        if o.error is not None:
            notes.append(f"**{o.name}**: {o.error.splitlines()[0]}")
            continue
        notes.append(f"{o.name}: {o.how}")
        if o.name == "router" and o.workers:
            notes.append(f"router: `router serve --workers {o.workers}`")
        errors = [c for c in o.changes if c.error is not None]
        if errors:
            notes.append(f"{o.name}: {len(errors)} change(s) not applied, first: "
                         f"{errors[0].blue}/{errors[0].green}: {errors[0].error}")
        stale = o.stale()
        if stale:
            notes.append(f"{o.name}: responses from a backend at weight 0, in whole seconds "
                         f"from {SETTLE_S} s after the change call answered (max latency "
                         f"{o.max_ms:,.1f} ms): " + "; ".join(
                             f"second {sec - int(o.started)} at {b}/{g}: {n} from {name}"
                             for sec, (b, g), name, n in stale))
        counts = o.counts()
        odd = {k: v for k, v in counts.items() if k not in ("blue", "green")}
        if odd:
            notes.append(f"{o.name}: responses that were not a 200 from blue or green, by kind: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(odd.items())))
        if o.final_weights is not None and o.changes:
            last = o.changes[-1]
            notes.append(f"{o.name}: weights after the run {o.final_weights} (last change "
                         f"{last.blue}/{last.green})")
        if o.others is not None and o.others.seconds > NOISY_SHARE * duration:
            notes.append(f"{o.name}: other processes used {o.others.describe()} of CPU during "
                         "the run; its requests/s are disturbed (failures are not affected)")
    return notes


def router_log_problems(h_tmp: Path) -> list[str]:
    """Warnings and errors the router logged during the run (its output file)."""
    log = h_tmp / "router.log"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", line)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.weights",
        description="Failed requests while weights move under full load: router, nginx, HAProxy.")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, any of {','.join(TARGETS)} (default: all)")
    parser.add_argument("--duration", type=int, default=30,
                        help="seconds of load per proxy (default 30)")
    parser.add_argument("--quick", action="store_true", help="10 s per proxy")
    parser.add_argument("--quiet-wait", type=float, default=20.0, metavar="S",
                        help="before each load wait up to S s for the machine to go idle "
                             "(default 20, 0 = do not wait)")
    parser.add_argument("--router-workers", type=int, default=0, metavar="N",
                        help="run the router with --workers N (default: not passed, 1 worker)")
    parser.add_argument("--no-write", action="store_true",
                        help=f"do not write the section of {RESULTS_MD.name}")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not 0 <= args.router_workers <= 16:
        parser.error("--router-workers must be 0..16")
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.target_list or any(t not in TARGETS for t in args.target_list):
        parser.error(f"--targets: choose from {','.join(TARGETS)}")
    if args.quick:
        args.duration = 10
    if not 4 <= args.duration <= 600:
        parser.error("--duration must be 4..600 seconds")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("--quiet-wait must be 0..600 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tools = tools_or_none()
    if tools is None:
        return 2
    pin = decide_pinning()
    print(f"pinning: {pin.note}")
    rev = revision()
    print(f"router revision: {rev}")
    outcomes: list[Outcome] = []
    router_problems: list[str] = []
    harness = Harness(keep_tmp=args.keep_tmp)
    with exit_on_signals():
        try:
            backends = start_backends(harness, tools["nginx"], pin)
            subjects: list[Subject] = []
            for name in args.target_list:
                print(f"== {name}: starting", flush=True)
                try:
                    subjects.append(start_subject(harness, name, tools, backends, pin,
                                                  args.router_workers))
                except TargetSkipped as exc:
                    print(f"   SKIPPED: {exc}", flush=True)
                    outcomes.append(Outcome(name, "", error=f"skipped: {exc}"))
            for subject in subjects:
                quiet_before_round(args.quiet_wait)
                print(f"== {subject.name}: {args.duration} s of load, weights moving every "
                      f"{INTERVAL_S:.0f} s", flush=True)
                try:
                    o = load_with_changes(tools["wrk"], pin, subject, args.duration)
                except BenchError as exc:
                    print(f"   ERROR {exc}", flush=True)
                    outcomes.append(Outcome(subject.name, subject.changer.how, error=str(exc)))
                    continue
                if subject.name == "router":
                    o.workers = args.router_workers
                outcomes.append(o)
                print(f"   {o.requests:,} requests, {o.rps:,.0f} req/s, non-2xx {o.non2xx}, "
                      f"socket errors {sum(o.sock)} {o.sock}, changes {o.applied}/"
                      f"{len(o.changes)}, counts {o.counts()}, moved {o.moved()}"
                      + (f"; other processes {o.others.describe()}" if o.others else ""),
                      flush=True)
            router_problems = router_log_problems(harness.tmp)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            harness.close()

    order = {name: i for i, name in enumerate(args.target_list)}
    outcomes.sort(key=lambda o: order.get(o.name, 99))
    main_table, shares = table(outcomes), shares_table(outcomes)
    notes = notes_for(outcomes, args.duration)
    if router_problems:
        notes.append(f"router logged {len(router_problems)} warning/error line(s), first: "
                     f"`{router_problems[0][:300]}`")
    print("\n" + main_table + "\n\nShare of blue among 200s, per setting (blue/green weights; "
          "whole seconds at that setting):\n\n" + shares)
    if notes:
        print("\n" + "\n".join(f"- {n}" for n in notes))
    if not args.no_write:
        # A run with the router's --workers gets its own section beside the default one.
        section = SECTION + (f"-router-workers-{args.router_workers}" if args.router_workers
                             else "")
        write_section(section, report(args, started, tools, pin, rev, main_table, shares, notes))
        print(f"\nwritten to benchmarks/{RESULTS_MD.name} (section `{section}`)")
    router = next((o for o in outcomes if o.name == "router" and o.error is None), None)
    return 0 if router is None or router.failed == 0 else 3


def report(args: argparse.Namespace, started: _dt.datetime, tools: dict[str, str],
           pin: Pinning, rev: str, main_table: str, shares: str, notes: list[str]) -> str:
    cycle = ", ".join(f"{b}/{g}" for b, g in SEQUENCE)
    return "\n".join([
        *report_header("## Weights moving under full load"
                       + (f", router with `--workers {args.router_workers}`" if args.router_workers else ""),
                       started, "weights", tool_lines(tools, ("nginx", "haproxy", "wrk")), rev),
        f"- pinning: {pin.note}",
        "",
        f"Load: `wrk -t1 -c{CONNECTIONS} -d{args.duration}s --latency -s conf/tally.lua` on "
        f"`/small` per proxy, the proxies one after the other. Weights (blue/green) start at "
        f"{INITIAL[0]}/{INITIAL[1]}; from {FIRST_CHANGE_S:.0f} s on, every {INTERVAL_S:.0f} s, "
        f"both change in one step, cycling through {cycle}. Failed = non-2xx + socket errors. "
        "wrk's Lua response hook costs it throughput, so requests/s here are lower than in the "
        "main table and not comparable with it.",
        "",
        main_table,
        "",
        f"Traffic followed the weights: the share of blue among the 200s, over the whole "
        f"seconds spent at each setting (from {SETTLE_S} s after the change call answered to "
        f"the next change); \"moved\" = every setting within {SHARE_TOLERANCE * 100:.0f} points "
        "of what its weights ask for.",
        "",
        shares,
        "",
        *(["Notes:", "", *(f"- {n}" for n in notes), ""] if notes else []),
    ])


if __name__ == "__main__":
    sys.exit(main())
