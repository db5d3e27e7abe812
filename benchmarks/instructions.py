"""Instructions per request: the router, HAProxy and nginx under callgrind, at equal work.

    python3 -m benchmarks.instructions                      # about a minute
    python3 -m benchmarks.instructions --baseline ../base      # another checkout, built in place
    python3 -m benchmarks.instructions --profiles DIR       # keep the callgrind files

Wall-clock figures on a shared machine move by tens of per cent from run to run; the number
of instructions a proxy executes per request does not. This counts them: each proxy runs
under ``valgrind --tool=callgrind`` (instrumentation off while it starts), pinned to CPU 0,
beside the same nginx backends as ``benchmarks.run`` and configured for the same request-head
work (``benchmarks/conf/``, checked through the backends' ``/echo`` before counting). The
load is a small client in this process (not under valgrind, on CPU 1) that sends exactly
``--requests`` keep-alive requests over ``--connections`` connections, each connection
sending its next request when its previous response is read whole. Per target and body:

1. instrumentation on (``callgrind_control --instr=on``), ``--warmup`` requests (pools
   filled, caches and the interpreter's specialisations warm);
2. counters zeroed (``callgrind_control --zero``), ``--requests`` requests;
3. a dump (``callgrind_control --dump``): its total ``Ir`` over the requests is the figure.

Callgrind counts the instructions the process executes in user space (every thread of it:
the proxy's code, its libraries, the interpreter); the kernel's work for its system calls is
not counted. One thing is subtracted: the router's timer and ``call_soon`` callbacks (uvloop's
``TimerHandle._run`` and ``Handle._run``, with all they call, as the dump's call graph gives
it). No request runs one; the router's own periodic tasks do (the release check every 0.25
s, the samples of the sticky counters: their timers and task steps), per second of wall
time, which valgrind stretches about fifty-fold and a busy machine more. Left in, they made
1-6% of the router's figure, varying with the machine's load, where at full load outside
valgrind they are about 0.03%. They are subtracted only while they stay periodic: at 0.5
calls per request or more (a change that made them per-request work) nothing is subtracted
and the report says so. The raw figure is reported beside it.

``router-sticky`` and ``router-pinned`` are the same router process (``session_sticky:
true``): the first sends no cookie, so every response issues one; the second sends the
cookie the router issued, verified on every request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import re
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import callgrind
from .common import RESULTS_MD, notes_and_skips, revision, write_section
from .run import (BODIES, HOST, BenchError, Harness, Target, TargetSkipped, decide_pinning,
                  exit_on_signals, report_header, start_backends, start_target, tool_lines,
                  tools_or_none, which)

SECTION = "instructions"
TARGETS = ("router", "router-sticky", "router-pinned", "haproxy", "nginx")
# The process (the kind benchmarks.run starts) each target is counted in: router-sticky and
# router-pinned share one, which benchmarks.run's router-pinned start-up gives a cookie.
PROCESS_OF = {"router": "router", "router-sticky": "router-pinned",
              "router-pinned": "router-pinned", "haproxy": "haproxy", "nginx": "nginx"}
# Valgrind runs a process several times slower (and the router's imports with instrumentation
# off, on a busy machine, took over 15 s): the bounds of the waits for a target to answer grow.
SLOWER = 6.0
# Subtracted: work per second of wall time, not per request (see the module's docstring),
# while there are fewer calls of them than PERIODIC_MAX per request.
PERIODIC = ("__pyx_f_6uvloop_4loop_11TimerHandle__run", "__pyx_f_6uvloop_4loop_6Handle__run")
PERIODIC_MAX = 0.5
# Callers kept apart per function (--separate-callers) in every dump, for the budget by stage
# (benchmarks/callgrind.py); it changes no count and costs little.
CALLERS = 12
CONTROL_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# callgrind


def valgrind_prefix(out_dir: Path, callers: int = 0) -> list[str]:
    """valgrind's command line; ``callers`` > 0 keeps that many callers of each function
    apart (``--separate-callers``: for the budget by stage, the counts do not change)."""
    valgrind = which("valgrind")
    if valgrind is None:
        raise BenchError("valgrind not found (Debian: apt-get install valgrind)")
    return [valgrind, "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out_dir}/callgrind.%p",
            *([f"--separate-callers={callers}"] if callers else [])]


def control(pid: int, *args: str) -> None:
    """One callgrind_control command to one process (never to every callgrind running)."""
    cmd = ["callgrind_control", *args, str(pid)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CONTROL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`{shlex.join(cmd)}` did not answer in {CONTROL_TIMEOUT_S:.0f} s") from exc
    if out.returncode != 0 or "OK" not in out.stdout:
        raise BenchError(f"`{shlex.join(cmd)}` failed: {(out.stdout + out.stderr).strip()}")


_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.M)


@dataclass
class Counted:
    """A proxy process under callgrind, and the dumps taken of it."""

    name: str
    labels: list[str]  # the targets counted in it
    target: Target
    out_dir: Path
    dumps: int = 0

    @property
    def pid(self) -> int:
        return self.target.procs[0].pid

    def zero(self) -> None:
        control(self.pid, "--zero")

    def dump(self) -> tuple[int, Path]:
        """Dump the counters: the instructions since the last zero, and the file."""
        control(self.pid, "--dump")
        self.dumps += 1
        path = self.out_dir / f"callgrind.{self.pid}.{self.dumps}"
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                found = _SUMMARY.search(text)
                if found and "\ntotals:" in text:
                    return int(found.group(1)), path
            time.sleep(0.05)
        raise BenchError(f"{self.name}: no complete callgrind dump at {path}")


# --------------------------------------------------------------------------------------------
# The client: exactly N requests over K keep-alive connections


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.I)


@dataclass
class _Conn:
    sock: socket.socket
    left: int  # requests still to send on it
    buf: bytearray = field(default_factory=bytearray)


class Client:
    """Sends GET requests and reads the responses; every response must be a 200 with the
    body length asked for, framed by Content-Length, and nothing may follow it."""

    def __init__(self, port: int, path: str, body_len: int, headers: dict[str, str],
                 connections: int) -> None:
        fields = "".join(f"{k}: {v}\r\n" for k, v in {"Host": HOST, **headers}.items())
        self.request = f"GET {path} HTTP/1.1\r\n{fields}\r\n".encode()
        self.port, self.body_len, self.connections = port, body_len, connections
        self.socks: list[socket.socket] = []

    def __enter__(self) -> Client:
        for _ in range(self.connections):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(sock)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()

    def run(self, n: int, limit_s: float) -> float:
        """Exactly ``n`` requests, spread evenly over the connections; the seconds taken."""
        k = len(self.socks)
        conns = [_Conn(s, n // k + (1 if i < n % k else 0)) for i, s in enumerate(self.socks)]
        started = time.monotonic()
        deadline = started + limit_s
        with selectors.DefaultSelector() as sel:
            for c in conns:
                if c.left:
                    c.sock.setblocking(True)
                    c.sock.sendall(self.request)
                    c.left -= 1
                    c.sock.setblocking(False)
                    sel.register(c.sock, selectors.EVENT_READ, c)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"{n} requests not answered within {limit_s:.0f} s")
                for key, _ in sel.select(timeout=min(remaining, 1.0)):
                    c = key.data
                    chunk = c.sock.recv(262144)
                    if not chunk:
                        raise BenchError("the proxy closed a keep-alive connection")
                    c.buf += chunk
                    if not self._complete(c.buf):
                        continue
                    c.buf.clear()
                    if c.left:
                        c.sock.setblocking(True)
                        c.sock.sendall(self.request)
                        c.sock.setblocking(False)
                        c.left -= 1
                    else:
                        sel.unregister(c.sock)
        return time.monotonic() - started

    def _complete(self, buf: bytearray) -> bool:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end + 2])
        if not head.startswith(b"HTTP/1.1 200 "):
            raise BenchError(f"unexpected response: {head[:200]!r}")
        length = _CONTENT_LENGTH.search(head)
        if length is None or int(length.group(1)) != self.body_len:
            raise BenchError(f"response without Content-Length {self.body_len}: {head[:400]!r}")
        got = len(buf) - end - 4
        if got > self.body_len:
            raise BenchError(f"{got - self.body_len} bytes after a response")
        return got == self.body_len


# --------------------------------------------------------------------------------------------
# Counting


@dataclass(frozen=True)
class Count:
    target: str
    process: str
    body: str
    requests: int
    instructions: int
    periodic: int  # of which the process's periodic tasks
    seconds: float
    profile: Path

    @property
    def per_request(self) -> float:
        """Instructions per request, the periodic tasks left out."""
        return (self.instructions - self.periodic) / self.requests

    @property
    def raw_per_request(self) -> float:
        return self.instructions / self.requests


def count(proc: Counted, label: str, body: str, headers: dict[str, str],
          args: argparse.Namespace, notes: list[str]) -> Count:
    limit = 60.0 + 0.05 * (args.warmup + args.requests)
    with Client(proc.target.port, f"/{body}", BODIES[body], headers, args.connections) as client:
        client.run(args.warmup, limit)
        proc.zero()
        seconds = client.run(args.requests, limit)
        instructions, path = proc.dump()
    profile = callgrind.read(path)
    periodic = 0
    for function in PERIODIC:
        calls, cost = callgrind.calls_into(profile, function)
        if calls >= PERIODIC_MAX * args.requests:
            notes.append(f"{label} {body}: {calls} calls of {function} for {args.requests} "
                         "requests: per-request work, not subtracted")
        else:
            periodic += cost
    return Count(label, proc.name, body, args.requests, instructions, periodic, seconds, path)


# --------------------------------------------------------------------------------------------
# Report


def fmt_k(x: float) -> str:
    return f"{x:,.0f}"


def table(counts: list[Count], rounds: int) -> str:
    """One row per target and body: the median over rounds of the instructions per request
    (periodic tasks left out), each round, the raw median, the ratios."""
    by: dict[tuple[str, str], list[Count]] = {}
    for c in counts:
        by.setdefault((c.target, c.body), []).append(c)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    nets = {key: median([c.per_request for c in cs]) for key, cs in by.items()}
    rounds_head = "".join(f" round {i + 1} |" for i in range(rounds)) if rounds > 1 else ""
    lines = [f"| target | body | instructions / request |{rounds_head} vs HAProxy | vs nginx | "
             "vs baseline | raw (periodic tasks in) | seconds under valgrind |",
             "|---|---|--:|" + "--:|" * (rounds if rounds > 1 else 0) + "--:|--:|--:|--:|--:|"]
    order = {t: i for i, t in enumerate(TARGETS)}
    for (target, body), cs in sorted(by.items(), key=lambda kv: (
            list(BODIES).index(kv[0][1]), order[kv[0][0].removesuffix("-base")],
            kv[0][0].endswith("-base"))):
        mid = nets[(target, body)]
        others = {"haproxy": nets.get(("haproxy", body)), "nginx": nets.get(("nginx", body)),
                  "base": None if target.endswith("-base")
                  else nets.get((f"{target}-base", body))}
        ratios = " | ".join(f"{mid / x:.2f}×" if x else "–" for x in others.values())
        rounds_cells = "".join(f" {fmt_k(c.per_request)} |" for c in cs) if rounds > 1 else ""
        lines.append(f"| {target} | {body} | {fmt_k(mid)} |{rounds_cells} {ratios} | "
                     f"{fmt_k(median([c.raw_per_request for c in cs]))} | "
                     f"{median([c.seconds for c in cs]):.1f} |")
    return "\n".join(lines)


def budget_tables(counts: list[Count]) -> str:
    """Each proxy's instructions per request by stage, one column per count (the first round
    of each target and body), from the dumps (taken with --separate-callers)."""
    out = []
    first: dict[tuple[str, str], Count] = {}
    for c in counts:
        first.setdefault((c.target, c.body), c)
    for proxy, stages in callgrind.STAGES.items():
        cols = {f"{c.target} {c.body}": c for c in first.values()
                if c.process.removesuffix("-base").removesuffix("-pinned") == proxy}
        if not cols:
            continue
        print(f"budget by stage: {proxy} ({len(cols)} profiles)", flush=True)
        budgets = {name: (callgrind.Budget(callgrind.read(c.profile), stages).by_stage(),
                          c.requests) for name, c in cols.items()}
        out.append(f"**{proxy}**, instructions per request by stage (raw: nothing subtracted)"
                   f":\n\n{callgrind.budget_table(budgets, stages)}")
    return "\n\n".join(out)


def report(args: argparse.Namespace, started: _dt.datetime, tools: dict[str, str], rev: str,
           text: str, notes: list[str], skips: dict[str, str]) -> str:
    parts = [
        *report_header("## Instructions per request (callgrind)", started, "instructions",
                       [*tool_lines(tools, ("nginx", "haproxy")),
                        f"- valgrind: {valgrind_version()}"], rev),
        "",
        f"Each proxy under `valgrind --tool=callgrind`, pinned to CPU 0, one process (the "
        f"router with one worker, HAProxy `nbthread 1`, nginx one worker), configured as in "
        f"`benchmarks.run` (the same request-head work, checked through the backends' `/echo`). "
        f"A client in the harness (not under valgrind, on CPU 1) sends {args.warmup} requests "
        f"(warm-up), then the counters are zeroed, then exactly {args.requests:,} keep-alive "
        f"`GET` requests over {args.connections} connections (each sends its next request when "
        f"its response is whole); the dump's total is divided by {args.requests:,}. "
        f"{args.rounds} round(s) per target and body, median shown. User-space instructions of "
        "the proxy process (every thread; callgrind does not count the kernel's work for its "
        "system calls). Not counted: the router's timer and `call_soon` callbacks (uvloop's "
        "`TimerHandle._run`, `Handle._run` and all they call, from the dump's call graph; "
        "*raw* has them): no request runs one, the router's periodic tasks do (the release "
        "check every 0.25 s), per second of wall time, which valgrind stretches about "
        f"fifty-fold (subtracted only while under {PERIODIC_MAX} calls per request). Figures "
        "and ratios are of medians over rounds; the stage tables (`--budget`, "
        "benchmarks/callgrind.py) are raw.",
        "",
        text,
        "",
    ]
    parts += notes_and_skips(notes, skips)
    return "\n".join(parts)


def valgrind_version() -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip()
    return "?"


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.instructions",
        description="Instructions per request under callgrind: the router, HAProxy, nginx.")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, any of {','.join(TARGETS)} (default: all)")
    parser.add_argument("--bodies", default=",".join(BODIES),
                        help=f"comma-separated, any of {','.join(BODIES)} (default: all)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests counted per target and body (default 2000)")
    parser.add_argument("--warmup", type=int, default=300,
                        help="requests before the counters are zeroed (default 300)")
    parser.add_argument("--connections", type=int, default=10,
                        help="keep-alive connections the requests are spread over (default 10)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="counts per target and body, each after its own warm-up "
                             "(default 1)")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="also count the router of another checkout (built in place, e.g. "
                             "`python3 setup.py build_ext --inplace`) as `router-base`, "
                             "`router-sticky-base`, `router-pinned-base`")
    parser.add_argument("--profiles", metavar="DIR", type=Path,
                        help="copy each count's callgrind file to DIR as TARGET-BODY.callgrind "
                             "(for callgrind_annotate --inclusive=yes)")
    parser.add_argument("--budget", action="store_true",
                        help="also print (and write) each proxy's instructions by stage of a "
                             "request (benchmarks/callgrind.py; about 5 s per count)")
    parser.add_argument("--no-write", action="store_true",
                        help=f"do not write the section of {RESULTS_MD.name}")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in args.target_list if t not in TARGETS]
    if bad or not args.target_list:
        parser.error(f"--targets: unknown {bad}; choose from {','.join(TARGETS)}")
    args.body_list = [b.strip() for b in args.bodies.split(",") if b.strip()]
    if not args.body_list or any(b not in BODIES for b in args.body_list):
        parser.error(f"--bodies: choose from {','.join(BODIES)}")
    if not 100 <= args.requests <= 1_000_000 or not 0 <= args.warmup <= 100_000:
        parser.error("--requests must be 100..1000000 and --warmup 0..100000")
    if not 1 <= args.connections <= 1000 or not 1 <= args.rounds <= 20:
        parser.error("--connections must be 1..1000 and --rounds 1..20")
    if args.connections > args.requests:
        parser.error("--connections must not exceed --requests")
    if args.baseline is not None and not (args.baseline / "router" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline}: no router/cli.py there")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str, Path | None, list[str]]]:
    """(process name, kind for start_target, checkout, targets counted in it) of every
    process to start."""
    out: list[tuple[str, str, Path | None, list[str]]] = []
    for suffix, checkout in (("", None), ("-base", args.baseline)):
        if suffix and checkout is None:
            continue
        for kind in dict.fromkeys(PROCESS_OF[t] for t in args.target_list):
            if suffix and not kind.startswith("router"):
                continue
            labels = [t + suffix for t in args.target_list if PROCESS_OF[t] == kind]
            out.append((kind + suffix, kind, checkout, labels))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tools = tools_or_none()
    if tools is None:
        return 2
    if which("callgrind_control") is None:
        print("error: callgrind_control not found (it comes with valgrind)", file=sys.stderr)
        return 2
    # The router's hash seed fixed: dict and set layouts then do not differ between runs.
    os.environ["PYTHONHASHSEED"] = "0"
    pin = decide_pinning()
    rev = revision()
    print(f"pinning: {pin.note}\nrouter revision: {rev}", flush=True)
    counts: list[Count] = []
    budgets = ""
    notes: list[str] = []
    skips: dict[str, str] = {}
    harness = Harness(keep_tmp=args.keep_tmp)
    out_dir = harness.tmp / "callgrind"
    out_dir.mkdir()
    with exit_on_signals():
        try:
            wrap = valgrind_prefix(out_dir, CALLERS)
            backends = start_backends(harness, tools["nginx"], pin)
            procs: list[Counted] = []
            for name, kind, checkout, labels in plan(args):
                print(f"== {name}: starting under callgrind", flush=True)
                targs = argparse.Namespace(router_workers=0, baseline=None)
                try:
                    target = start_target(harness, kind, tools, backends, pin, targs,
                                          label=name, wrap=wrap, checkout=checkout,
                                          slower=SLOWER)
                except TargetSkipped as exc:
                    print(f"   SKIPPED: {exc}", flush=True)
                    skips[name] = str(exc)
                    continue
                notes.extend(f"{name}: {n}" for n in target.notes)
                procs.append(Counted(name, labels, target, out_dir))
            for proc in procs:
                control(proc.pid, "--instr=on")
                for body in args.body_list:
                    for label in proc.labels:
                        headers = dict(proc.target.headers)
                        if label.startswith("router-sticky"):
                            headers.pop("Cookie", None)
                        for i in range(args.rounds):
                            c = count(proc, label, body, headers, args, notes)
                            counts.append(c)
                            print(f"   {c.target} {body} round {i + 1}: "
                                  f"{c.per_request:,.0f} instructions/request "
                                  f"({c.seconds:.1f} s under callgrind)", flush=True)
            if args.profiles is not None:
                args.profiles.mkdir(parents=True, exist_ok=True)
                for c in counts:
                    shutil.copy(c.profile, args.profiles / f"{c.target}-{c.body}.callgrind")
            budgets = budget_tables(counts) if args.budget else ""
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            harness.close()

    text = table(counts, args.rounds)
    if budgets:
        text += "\n\n" + budgets
    print("\n" + text)
    for note in notes:
        print(f"note: {note}")
    if args.profiles is not None:
        print(f"\ncallgrind files in {args.profiles} (callgrind_annotate --inclusive=yes FILE)")
    if not args.no_write:
        write_section(SECTION, report(args, started, tools, rev, text, notes, skips))
        print(f"\nwritten to benchmarks/{RESULTS_MD.name} (section `{SECTION}`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
