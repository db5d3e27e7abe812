"""The request path's invariant on many generated streams, with a report.

    python3 -m benchmarks.invariant                  # 200,000 streams (about 15 minutes here)
    python3 -m benchmarks.invariant --examples 5000  # a quick look

Each stream is a few requests on one client connection -- pipelined, bodies by length and
chunked, upgrades with and without bodies, h2c, requests for no app, refused requests, bodies
that break their framing -- split into reads at random points (often within a few bytes of a
head's or a request's end), answered by backends in every framing
(tests/protocol/streams.py). The data plane runs in memory; every stream is checked:
backends read exactly the accepted requests, whole and in order, nothing after a closing
answer; each client gets one response per request, in order, its own. The suite runs the same
check on a few hundred streams (tests/protocol/test_invariant.py).

Prints how many streams, requests and responses were checked, how the streams ended, the kinds
of request seen, and the first failure (with the stream that shows it) if any; exit code 1 then.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.protocol.streams import check, expected, streams


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = p.parse_args(argv)
    ended: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    answers: collections.Counter[str] = collections.Counter()
    totals = collections.Counter[str]()
    failure: list[str] = []
    t0 = time.monotonic()

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
              print_blob=False, report_multiple_bugs=False)  # one failure, as reported below
    @given(streams())
    def run(stream):  # type: ignore[no-untyped-def]
        reqs, splits = stream
        try:
            ended[check(reqs, splits)] += 1
        except AssertionError as e:
            failure[:] = [str(e)[:2000]] + [f"  {r.seq} {r.kind} answer={r.answer} {r.raw!r}"
                                            for r in reqs] + [f"  splits {splits}"]
            raise
        totals["streams"] += 1
        totals["requests"] += len(reqs)
        totals["reads"] += len(set(splits)) + 1
        totals["responses"] += len(expected(reqs)[0].responses)
        for r in reqs:
            kinds[r.kind] += 1
            answers[r.answer] += 1
        if totals["streams"] % 10_000 == 0:
            print(f"  {totals['streams']:,} streams, {time.monotonic() - t0:.0f} s", flush=True)

    if args.seed is not None:
        run = seed(args.seed)(run)
    ok = True
    try:
        run()
    except AssertionError:
        ok = False
    elapsed = time.monotonic() - t0
    print(f"\n{totals['streams']:,} streams checked in {elapsed:.0f} s: {totals['requests']:,} "
          f"requests, {totals['responses']:,} responses expected, {totals['reads']:,} reads")
    print("ended: " + ", ".join(f"{k} {v:,}" for k, v in ended.most_common()))
    print("requests: " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))
    print("backend answers: " + ", ".join(f"{k} {v:,}" for k, v in answers.most_common()))
    if not ok:
        print("\nFAILED (after shrinking):\n" + "\n".join(failure))
        return 1
    print("no stream broke the invariant")
    return 0


if __name__ == "__main__":
    sys.exit(main())
