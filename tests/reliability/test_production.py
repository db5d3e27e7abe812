"""The production shape: passive health across workers, a hung worker, counters across a
worker's death, a taken port, a frozen backend. Each scenario with the worker counts it needs."""

from __future__ import annotations

import pytest

from tests.reliability import production as P

pytestmark = pytest.mark.slow  # workers stopped until the watchdog replaces them, under load

RUNS = [(scenario, n) for scenario, counts in P.PRODUCTION for n in counts]


@pytest.mark.parametrize(("scenario", "workers"), RUNS,
                         ids=[f"{s.__name__}-workers{n}" for s, n in RUNS])
async def test_production(scenario, workers):
    r = await scenario(1, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}, "
          f"expected {r.expected}. {r.notes}")
    assert r.problems == []
    assert r.failed == r.expected
