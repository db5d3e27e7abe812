"""Slow and many clients: slowloris, 2,000 idle connections on few descriptors."""

from __future__ import annotations

import pytest

from tests.reliability import scenarios as S


@pytest.mark.parametrize("scenario", S.SLOW_CLIENTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_slow_and_many_clients(scenario, workers):
    r = await scenario(1, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}, expected {r.expected}. {r.notes}")
    assert r.problems == []
    assert r.failed == r.expected
