"""Reliability report: every reliability scenario with its load, printed and written to
``benchmarks/RELIABILITY.md``.

    python3 -m benchmarks.reliability              # scale 2 (about a minute)
    python3 -m benchmarks.reliability --scale 1    # the sizes the test suite runs
    python3 -m benchmarks.reliability --no-write   # print only
    python3 -m benchmarks.reliability --only hung_only_backend,hung_ramp --scale 1

The scenarios are the ones ``tests/reliability`` runs (same code, bigger with ``--scale``):
real routers and backends on 127.0.0.1, bounded loads, exact counts; each with ``--workers 1``
and ``--workers 2`` (``--workers 1,2`` picks), the production scenarios (hung worker, counters
across a worker's death, a taken port) with the worker counts they need, the store's (a
ramp's rollback while the state disk is full or etcd is down, etcd emptied under a replica that
was behind: they need root for a tmpfs, and etcd), the versions that hang
(tests/reliability/hangs.py: a hung new version, guarded ramps of one, a black-holed backend, a
slow version, a ramp of pinned clients), and the process's life (takeovers and upgrades in
place, stops, SIGHUP to every process). HAProxy (Debian
package ``haproxy``) gets the same hostile corpus when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.reliability import scenarios as S  # noqa: E402
from tests.reliability.hangs import HANGS  # noqa: E402
from tests.reliability.lifecycle import LIFECYCLE  # noqa: E402
from tests.reliability.production import PRODUCTION  # noqa: E402
from tests.reliability.store import STORE  # noqa: E402
from tests.reliability.corpus import CORPUS  # noqa: E402
from tests.reliability.hostile import difference_table, run_corpus  # noqa: E402


def _table(results: list[S.Result]) -> str:
    out = ["| scenario | workers | load | faults injected | requests sent | failed | expected failures | verdict |",
           "|---|--:|---|---|---:|---:|---:|---|"]
    for r in results:
        verdict = "pass" if r.ok else "FAIL: " + "; ".join(r.problems or [f"{r.failed} != {r.expected}"])
        out.append(f"| {r.scenario} | {r.workers} | {r.load} | {r.faults} | {r.sent} | {r.failed} "
                   f"| {r.expected} | {verdict} |")
    return "\n".join(out)


async def run(scale: int, workers: list[int], only: set[str] | None = None) -> tuple[str, bool]:
    t0 = time.monotonic()
    rows, ran_haproxy = await run_corpus(compare_haproxy=True)
    bad = [r for r in rows if r.problems]
    corpus = S.Result("hostile corpus (raw sockets)", f"{len(CORPUS)} crafted requests",
                      "smuggling, framing, Host, paths, Expect, pipelining",
                      sent=len(rows), failed=len(bad), expected=0,
                      problems=[f"{r.case.name}: {'; '.join(r.problems)}" for r in bad])
    results = [corpus]
    runs = [(scenario, n) for scenario in S.ALL for n in workers]
    runs += [(scenario, n) for scenario, counts in PRODUCTION for n in counts]
    runs += [(scenario, n) for scenario, counts in STORE for n in counts if n in workers]
    runs += [(scenario, n) for scenario in HANGS for n in workers]
    runs += [(scenario, n) for scenario, counts in LIFECYCLE for n in counts if n in workers]
    if only is not None:
        runs = [(scenario, n) for scenario, n in runs if scenario.__name__ in only]
    for scenario, n in runs:
        print(f"running {scenario.__name__} --workers {n} ...", file=sys.stderr, flush=True)
        try:
            results.append(await scenario(scale, n))
        except Exception as e:  # a scenario that breaks is reported, the others still run
            results.append(S.Result(scenario.__name__, "-", "-", workers=n,
                                    problems=[f"{type(e).__name__}: {e}"]))
    took = time.monotonic() - t0
    lines = [
        "# Reliability report",
        "",
        f"`python3 -m benchmarks.reliability --scale {scale}`: {len(results)} scenario runs in "
        f"{took:.0f} s on this machine (loopback only). \"failed\" counts requests that did not "
        "get a 200 (or, in the corpus, cases whose verdict differed from the expected one); "
        "\"expected failures\" are those the contract allows: a POST that a dying backend had "
        "already read is never replayed, the injected faults that must surface "
        "(502, 504, an aborted download), and the requests a version that starts hanging holds "
        "until the router takes it out or rolls it back (each scenario bounds them: at most 5% "
        "failed from 10 s after the hang on, a rollback within 2 steps).",
        "",
        _table(results),
        "",
        "Notes per scenario:",
        "",
        *[f"- **{r.scenario}**: {r.notes}" for r in results if r.notes],
        "",
        "## Hostile corpus: where HAProxy's verdict differs",
        "",
    ]
    if ran_haproxy:
        lines += [
            f"The same {len(CORPUS)} byte sequences sent to HAProxy 2.6 (`haproxy -db`, `mode http`, "
            "routing by Host and `/admin` prefix like the router's table) in front of the same "
            "backends. `fwd` is the number of requests the backends saw. Cases not listed got "
            "the same verdict from both.",
            "",
            difference_table(rows),
        ]
    else:
        lines.append("HAProxy is not installed (`apt-get install haproxy`): no comparison.")
    ok = all(r.ok for r in results)
    return "\n".join(lines) + "\n", ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=2, help="load multiplier (tests use 1)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--workers", default="1,2", help="router worker counts for every scenario")
    ap.add_argument("--only", help="these scenarios only (comma-separated function names, like "
                                   "hung_only_backend,hung_ramp): printed, not written")
    args = ap.parse_args()
    if args.scale < 1:
        ap.error("--scale must be >= 1")
    try:
        workers = [int(n) for n in args.workers.split(",")]
    except ValueError:
        ap.error("--workers: a comma-separated list of counts, like 1,2")
    only = set(args.only.split(",")) if args.only else None
    known = {f.__name__ for f in S.ALL + HANGS} | {f.__name__ for f, _ in PRODUCTION + STORE}
    if only is not None and not only <= known:
        ap.error(f"--only: no scenario {', '.join(sorted(only - known))}; one of "
                 f"{', '.join(sorted(known))}")
    report, ok = asyncio.run(run(args.scale, workers, only))
    print(report)
    if not args.no_write and only is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RELIABILITY.md")
        with open(path, "w") as f:
            f.write(report)
        print(f"written to {path}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
