"""Scaling over cores: ``router serve --workers N`` against HAProxy ``nbthread N`` and nginx
``worker_processes N``, on the same CPUs.

    python3 -m benchmarks.workers                        # N = 1, 2, 4 ... up to the proxies' CPUs
    python3 -m benchmarks.workers --quick                # 1 round of 3 s
    python3 -m benchmarks.workers --workers 1,2,4,8 --proxy-cpus 8

The CPUs are split in two: the proxies on the first ``--proxy-cpus`` (default half of them),
wrk (one thread per CPU), the backends (one nginx worker per CPU) and this harness on the
rest. Every target runs pinned to the proxies' CPUs, so each N is measured on the same cores:

| target | what |
|---|---|
| `router wN` | `router serve --workers N` (N = 1: one process, the admin API and the data plane) |
| `haproxy tN` | HAProxy with `nbthread N` (benchmarks/conf/haproxy.cfg otherwise) |
| `nginx wN` | nginx with `worker_processes N` and its master process (N = 1: as in run.py) |
| `direct` | wrk straight at a backend: what the load side can do on its CPUs alone |

Each is configured as in ``benchmarks.run`` (the same request-head work, checked before the
load) and loaded the same way (rounds interleaved, a warm-up before each, the load side's CPU
measured, disturbed rounds noted). The report gives requests/s and CPU per request for each,
the scaling of each proxy against its own N = 1, and the router against the other two at each
N. On this 2-core machine there is one CPU for the proxies: N > 1 only adds processes or
threads that share it. The figures that show scaling come from a machine with more cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import sys
from dataclasses import dataclass
from typing import Sequence

from .common import RESULTS_MD, notes_and_skips, revision, write_section
from .run import (BODIES, CONNECTIONS, NOISY_SHARE, SUT_CPU, WARMUP_S, BenchError, Harness,
                  Pinning, Result, Target, TargetSkipped, decide_pinning, exit_on_signals, fmt,
                  measure, nginx_workers, report_header, results_table, rounds_table,
                  start_backends, start_target, tool_lines, tools_or_none)

SECTION = "workers"
PROXIES = ("router", "haproxy", "nginx")


@dataclass(frozen=True)
class Split(Pinning):
    """run.py's pinning with CPU sets: its SUT_CPU means the proxies' CPUs, its LOAD_CPU the
    load side's (wrk, the backends, this harness)."""

    proxy_cpus: tuple[int, ...] = (0,)
    load_cpus: tuple[int, ...] = (1,)

    def prefix(self, cpu: int) -> list[str]:
        if not self.taskset:
            return []
        cpus = self.proxy_cpus if cpu == SUT_CPU else self.load_cpus
        return [self.taskset, "-c", ",".join(map(str, cpus))]


def split(proxy_cpus: int) -> Split:
    base = decide_pinning()
    ncpu = os.cpu_count() or 1
    if base.taskset is None:
        return Split(None, base.note, (), ())
    proxies = tuple(range(proxy_cpus))
    load = tuple(range(proxy_cpus, ncpu))
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(load))
    return Split(base.taskset, f"proxies on CPU {_cpus(proxies)}; backends, wrk and the "
                 f"harness on CPU {_cpus(load)}", proxies, load)


def _cpus(cpus: tuple[int, ...]) -> str:
    return f"{cpus[0]}" if len(cpus) == 1 else f"{cpus[0]}-{cpus[-1]}"


def variants(ns: list[int]) -> list[tuple[str, str, int]]:
    """(label, kind, N) of every target, in the order they are loaded."""
    out = [(_label(kind, n), kind, n) for n in ns for kind in PROXIES]
    return out + [("direct", "direct", 0)]


def _label(kind: str, n: int) -> str:
    return f"{kind} {'t' if kind == 'haproxy' else 'w'}{n}"


def edits(kind: str, n: int) -> dict[str, str] | None:
    if kind == "haproxy" and n > 1:
        return {"nbthread 1": f"nbthread {n}"}
    if kind == "nginx":
        return nginx_workers(n)
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ncpu = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.workers",
        description="The router's --workers N against HAProxy nbthread N and nginx "
                    "worker_processes N, on the same CPUs.")
    parser.add_argument("--workers", default=None,
                        help="comma-separated N (default 1, 2, 4 ... up to the proxies' CPUs, "
                             "at least 1,2)")
    parser.add_argument("--proxy-cpus", type=int, default=max(1, ncpu // 2),
                        help=f"CPUs for the proxies, the first ones (default {max(1, ncpu // 2)}: "
                             "half); the load side gets the rest")
    parser.add_argument("--bodies", default="small", help="comma-separated (default small)")
    parser.add_argument("--connections", type=int, default=None,
                        help=f"wrk's connections (default {CONNECTIONS} per CPU of the proxies)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--quiet-wait", type=float, default=20.0, metavar="S",
                        help="before each round wait up to S s for the machine to go idle")
    parser.add_argument("--no-write", action="store_true",
                        help=f"do not write the section of {RESULTS_MD.name}")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.body_list = [b.strip() for b in args.bodies.split(",") if b.strip()]
    if not args.body_list or any(b not in BODIES for b in args.body_list):
        parser.error(f"--bodies: choose from {','.join(BODIES)}")
    if ncpu > 1 and not 1 <= args.proxy_cpus < ncpu:
        parser.error(f"--proxy-cpus must be 1..{ncpu - 1} (the load side needs a CPU)")
    if args.workers is None:
        ns, n = [1, 2], 4
        while n <= args.proxy_cpus:
            ns.append(n)
            n *= 2
    else:
        try:
            ns = sorted({int(x) for x in args.workers.split(",") if x.strip()})
        except ValueError:
            parser.error(f"--workers: comma-separated numbers, not {args.workers!r}")
    if not ns or not all(1 <= n <= 64 for n in ns):
        parser.error("--workers: each N must be 1..64")
    args.ns = ns
    if args.connections is None:
        args.connections = CONNECTIONS * args.proxy_cpus
    if not 1 <= args.connections <= 10000:
        parser.error("--connections must be 1..10000")
    if args.quick:
        args.duration, args.rounds = 3, 1
    if not 1 <= args.duration <= 600 or not 1 <= args.rounds <= 20:
        parser.error("--duration must be 1..600 and --rounds 1..20")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("--quiet-wait must be 0..600 seconds")
    return args


def clean(results: list[Result], duration: int) -> list[Result]:
    """The same results with only the rounds no other process disturbed (run.py's rule:
    other processes used at most NOISY_SHARE of one CPU during the round)."""
    out = []
    for r in results:
        rounds = [x for x in r.rounds
                  if x.others is not None and x.others.seconds <= NOISY_SHARE * duration]
        out.append(Result(r.target, r.body, rounds, r.error))
    return out


def scaling_table(results: list[Result], ns: list[int]) -> str:
    """Per body and N: each proxy's requests/s and CPU µs per request, its requests/s against
    its own N = 1, and the router's against HAProxy's and nginx's."""
    med = {(r.target, r.body): r for r in results if r.rounds}
    lines = ["| body | N | router req/s | HAProxy req/s | nginx req/s | router CPU µs/req | "
             "HAProxy CPU µs/req | nginx CPU µs/req | router, HAProxy, nginx vs own N=1 | "
             "router/HAProxy req/s | router/nginx req/s |",
             "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|"]

    def get(kind: str, n: int, body: str, attr: str) -> float | None:
        r = med.get((_label(kind, n), body))
        return r.median(attr) if r else None

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a and b else "–"

    for body in sorted({r.body for r in results}):
        for n in ns:
            rps = {k: get(k, n, body, "rps") for k in PROXIES}
            cpu = {k: get(k, n, body, "cpu_us_per_req") for k in PROXIES}
            own = ", ".join(ratio(rps[k], get(k, 1, body, "rps")) for k in PROXIES)
            lines.append(
                f"| {body} | {n} | {fmt(rps['router'], 0)} | {fmt(rps['haproxy'], 0)} | "
                f"{fmt(rps['nginx'], 0)} | {fmt(cpu['router'])} | {fmt(cpu['haproxy'])} | "
                f"{fmt(cpu['nginx'])} | {own} | {ratio(rps['router'], rps['haproxy'])} | "
                f"{ratio(rps['router'], rps['nginx'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tools = tools_or_none()
    if tools is None:
        return 2
    pin = split(args.proxy_cpus)
    args.wrk_threads = max(1, len(pin.load_cpus))
    rev = revision()
    print(f"pinning: {pin.note}\nN: {', '.join(map(str, args.ns))}; wrk -t{args.wrk_threads} "
          f"-c{args.connections}\nrouter revision: {rev}", flush=True)
    results: list[Result] = []
    notes: list[str] = []
    skips: dict[str, str] = {}
    harness = Harness(keep_tmp=args.keep_tmp)
    with exit_on_signals():
        try:
            backends = start_backends(harness, tools["nginx"], pin, workers=args.wrk_threads)
            targets: list[Target] = []
            for label, kind, n in variants(args.ns):
                print(f"== {label}: starting", flush=True)
                targs = argparse.Namespace(router_workers=n if n > 1 else 0)
                try:
                    target = start_target(harness, kind, tools, backends, pin, targs,
                                          label=label, edits=edits(kind, n))
                except TargetSkipped as exc:
                    print(f"   SKIPPED: {exc}", flush=True)
                    skips[label] = str(exc)
                    continue
                targets.append(target)
                notes.extend(f"{label}: {note}" for note in target.notes)
            results = measure(tools["wrk"], pin, targets, args, notes)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            harness.close()

    table = results_table(results, skips)
    scaling = scaling_table(results, args.ns)
    quiet = scaling_table(clean(results, args.duration), args.ns)
    print("\n" + table + "\n\n" + scaling + "\n\nUndisturbed rounds only:\n\n" + quiet)
    if not args.no_write:
        write_section(SECTION, report(args, started, tools, pin.note, rev, table, scaling,
                                      quiet, results, notes, skips))
        print(f"\nwritten to benchmarks/{RESULTS_MD.name} (section `{SECTION}`)")
    return 0


def report(args: argparse.Namespace, started: _dt.datetime, tools: dict[str, str], pin_note: str,
           rev: str, table: str, scaling: str, quiet: str, results: list[Result],
           notes: list[str], skips: dict[str, str]) -> str:
    ns = ", ".join(map(str, args.ns))
    parts = [
        *report_header(f"## Scaling over cores: N = {ns}", started, "workers",
                       tool_lines(tools, ("nginx", "haproxy", "wrk")), rev),
        f"- pinning: {pin_note}",
        "",
        f"For each N, `router serve --workers N`, HAProxy `nbthread N` and nginx "
        f"`worker_processes N`, all pinned to the same CPUs, configured as in "
        f"`benchmarks.run`. Load: `wrk -t{args.wrk_threads} -c{args.connections} "
        f"-d{args.duration}s --latency`, {args.rounds} round(s) per target, interleaved, each "
        f"after a {WARMUP_S} s warm-up; medians. CPU µs/req counts each proxy's whole process "
        "tree; the load side's busy share is over its CPUs.",
        "",
        table,
        "",
        "Scaling (medians; `vs own N=1`: requests/s against the same proxy with N = 1):",
        "",
        scaling,
        "",
        f"The same over the undisturbed rounds only (other processes under "
        f"{NOISY_SHARE * 100:.0f}% of one CPU):",
        "",
        quiet,
        "",
    ]
    parts += notes_and_skips(notes, skips)
    parts += ["Every round (machine CPU busy: each CPU's non-idle share over the round):", "",
              rounds_table(results), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
