"""Scaling of ``router serve --workers N`` on this machine on this machine.

    python3 -m benchmarks.workers                  # 2 rounds of 10 s, small bodies
    python3 -m benchmarks.workers --quick          # 1 round of 3 s
    python3 -m benchmarks.workers --workers 2 --bodies small,64k

One run of run.py's harness with these targets side by side, rounds interleaved:

| target | what |
|---|---|
| `nginx` | the reference proxy, pinned to CPU 0 (as in run.py) |
| `router w1` | `router serve`, one process, pinned to CPU 0 (= run.py's `router`) |
| `router wN` | `router serve --workers N`, pinned to CPU 0: the N workers share one CPU |
| `router w1 unpinned` | one process, free to run on every CPU (`--no-pin-router`) |
| `router wN unpinned` | N workers free to run on every CPU, beside wrk and the backends |
| `direct` | wrk straight at a backend: what wrk and the backends can do on CPU 1 alone |

It is the same as running ``python3 -m benchmarks.run --targets router,nginx --bodies small``
with ``--router-workers N`` and/or ``--no-pin-router``, but in one run, so the rows compare.
The table, the per-round CPU use and the disturbed-round notes are run.py's; the result goes to
its own section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from typing import Sequence

from .common import RESULTS_MD, revision, write_section
from .run import (BODIES, CONNECTIONS, NOISY_SHARE, WARMUP_S, BenchError, Harness, Result, Target,
                  TargetSkipped, decide_pinning, tools_or_none, exit_on_signals, fmt, measure,
                  report_header, results_table, rounds_table, start_backends, start_target,
                  tool_lines)

SECTION = "workers"

READING = (
    "Reading: pinned, the workers share CPU 0 and add no CPU, only a second event loop (two "
    "accept queues: a lower p50, a higher p99, and a few µs more per request for switching "
    "between processes). Unpinned, one router process still uses one CPU at most, and a second "
    "worker gets only what wrk and the backends leave of the other CPU; once both CPUs are "
    "busy, a worker's gain is the load generator's loss. The budget lines above say how close "
    "each variant came to what its CPUs allow. On this 2-core machine that budget, not the "
    "router, is the limit: the workers can only scale on cores that wrk and the backends do "
    "not use (more cores, or the load generated on another machine)."
)


def variants(n: int) -> list[tuple[str, str, int, bool]]:
    """(label, kind, workers, pinned) of every target, in the order they are loaded."""
    return [
        ("nginx", "nginx", 0, True),
        ("router w1", "router", 0, True),
        (f"router w{n}", "router", n, True),
        ("router w1 unpinned", "router", 0, False),
        (f"router w{n} unpinned", "router", n, False),
        ("direct", "direct", 0, True),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.workers",
        description="router serve --workers N against 1 worker, pinned and not, beside nginx.")
    parser.add_argument("--workers", type=int, default=2, help="N (default 2)")
    parser.add_argument("--bodies", default="small", help="comma-separated (default small)")
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
    if not 2 <= args.workers <= 16:
        parser.error("--workers must be 2..16")
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


def clean_table(results: list[Result], duration: int) -> str:
    lines = ["| target | body | undisturbed rounds | requests/s | p99 ms | CPU µs/req | machine "
             "CPU busy (last such round) |", "|---|---|--:|--:|--:|--:|---|"]
    for r in clean(results, duration):
        last = r.rounds[-1] if r.rounds else None
        lines.append(f"| {r.target} | {r.body} | {len(r.rounds)} | {fmt(r.median('rps'), 0)} | "
                     f"{fmt(r.median('p99_ms'), 2)} | {fmt(r.median('cpu_us_per_req'))} | "
                     f"{last.cpus.describe() if last and last.cpus else '–'} |")
    return "\n".join(lines)


def scaling_lines(results: list[Result], n: int) -> list[str]:
    rps = {(r.target, r.body): r.median("rps") for r in results if r.rounds}
    cpu = {(r.target, r.body): r.median("cpu_us_per_req") for r in results if r.rounds}
    out = []
    for body in sorted({r.body for r in results}):
        def ratio(a: str, b: str) -> str:
            x, y = rps.get((a, body)), rps.get((b, body))
            return f"{x / y:.2f}×" if x and y else "–"
        out.append(
            f"- {body}: w{n}/w1 pinned to CPU 0 {ratio(f'router w{n}', 'router w1')}; "
            f"unpinned {ratio(f'router w{n} unpinned', 'router w1 unpinned')}; "
            f"w{n} unpinned / w1 pinned {ratio(f'router w{n} unpinned', 'router w1')}; "
            f"w{n} unpinned / nginx pinned {ratio(f'router w{n} unpinned', 'nginx')}; "
            f"CPU µs/req w1 {cpu.get(('router w1', body)) or 0:.1f}, "
            f"w{n} {cpu.get((f'router w{n}', body)) or 0:.1f}, "
            f"w{n} unpinned {cpu.get((f'router w{n} unpinned', body)) or 0:.1f}")
    return out


def ceiling_lines(results: list[Result], n: int) -> list[str]:
    """What the CPUs allow: a budget from the measured costs per request.

    ``direct`` keeps CPU 1 busy with wrk and the backends alone, so 1e6 / its requests/s is
    their CPU µs per request (L). A router costing C µs per request can do at most 1e6 / C
    pinned to one CPU (and the load side at most 1e6 / L on the other); unpinned, the router,
    wrk and the backends share ncpu CPUs: at most ncpu * 1e6 / (C + L), and a router of W
    single-threaded processes at most W * 1e6 / C.
    """
    ncpu = os.cpu_count() or 1
    out = []
    for body in sorted({r.body for r in results}):
        by = {r.target: r for r in results if r.body == body and r.rounds}
        direct = by.get("direct")
        load_rps = direct.median("rps") if direct else None
        if not load_rps:
            continue
        load_us = 1e6 / load_rps
        out.append(f"- {body}: wrk + backends cost about {load_us:.1f} CPU µs per request "
                   f"(`direct` keeps CPU 1 busy at {load_rps:,.0f} requests/s)")
        for label, _kind, workers, pinned in variants(n):
            r = by.get(label)
            if r is None or not label.startswith("router"):
                continue
            rps, cpu = r.median("rps"), r.median("cpu_us_per_req")
            if not rps or not cpu:
                continue
            if pinned:
                cap = min(1e6 / cpu, 1e6 / load_us)
                how = "1 CPU for the router, 1 for wrk and the backends"
            else:
                cap = min(ncpu * 1e6 / (cpu + load_us), max(workers, 1) * 1e6 / cpu)
                how = (f"{ncpu} CPUs shared by the router, wrk and the backends; "
                       f"{max(workers, 1)} router process(es) of one thread")
            out.append(f"  - {label}: {rps:,.0f} requests/s at {cpu:.1f} µs/req; the CPU "
                       f"budget ({how}) allows about {cap:,.0f}: {rps / cap * 100:.0f}% of it")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    tools = tools_or_none()
    if tools is None:
        return 2
    pin = decide_pinning()
    rev = revision()
    print(f"pinning: {pin.note} (except the targets marked unpinned)\nrouter revision: {rev}",
          flush=True)
    results: list[Result] = []
    notes: list[str] = []
    skips: dict[str, str] = {}
    harness = Harness(keep_tmp=args.keep_tmp)
    with exit_on_signals():
        try:
            backends = start_backends(harness, tools["nginx"], pin)
            targets: list[Target] = []
            for label, kind, workers, pinned in variants(args.workers):
                print(f"== {label}: starting", flush=True)
                targs = argparse.Namespace(router_workers=workers, no_pin_router=not pinned)
                try:
                    target = start_target(harness, kind, tools, backends, pin, targs, label=label)
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
    scaling = scaling_lines(results, args.workers)
    quiet_table = clean_table(results, args.duration)
    quiet_scaling = scaling_lines(clean(results, args.duration), args.workers)
    quiet_scaling += ceiling_lines(clean(results, args.duration), args.workers)
    print("\n" + table + "\n\n" + "\n".join(scaling) + "\n\nUndisturbed rounds only:\n\n"
          + quiet_table + "\n\n" + "\n".join(quiet_scaling))
    if not args.no_write:
        write_section(SECTION, report(args, started, tools, pin.note, rev, table, scaling,
                                      quiet_table, quiet_scaling, results, notes, skips))
        print(f"\nwritten to benchmarks/{RESULTS_MD.name} (section `{SECTION}`)")
    return 0


def report(args: argparse.Namespace, started: _dt.datetime, tools: dict[str, str], pin_note: str,
           rev: str, table: str, scaling: list[str], quiet_table: str, quiet_scaling: list[str],
           results: list[Result], notes: list[str], skips: dict[str, str]) -> str:
    n = args.workers
    parts = [
        *report_header(f"## Workers scaling: `--workers {n}` against 1",
                       started, "workers", tool_lines(tools, ("nginx", "wrk")), rev),
        f"- pinning: {pin_note}; the `unpinned` router targets may run on every CPU",
        "",
        f"Load as in the main table: `wrk -t1 -c{CONNECTIONS} -d{args.duration}s --latency`, "
        f"{args.rounds} round(s) per target, interleaved, each after a {WARMUP_S} s warm-up; "
        f"medians. `router w{n}` is `router serve --workers {n}` (a master with the admin API "
        f"and {n} worker processes on one SO_REUSEPORT port); CPU µs/req counts the whole "
        "process tree. Equivalent single runs: `python3 -m benchmarks.run --targets "
        f"router,nginx --bodies small [--router-workers {n}] [--no-pin-router]`.",
        "",
        table,
        "",
        "Scaling (ratios of median requests/s, same run):",
        "",
        *scaling,
        "",
        "The same over the undisturbed rounds only (other processes under "
        f"{NOISY_SHARE * 100:.0f}% of one CPU; on a shared machine these are the figures to "
        "trust):",
        "",
        quiet_table,
        "",
        *quiet_scaling,
        "",
        READING,
        "",
    ]
    if notes:
        parts += ["Notes:", "", *(f"- {x}" for x in notes), ""]
    for name, why in skips.items():
        parts += [f"**{name} skipped**:", "", "```", why, "```", ""]
    parts += ["Every round (machine CPU busy: each CPU's non-idle share over the round):", "",
              rounds_table(results), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
