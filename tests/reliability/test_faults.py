"""Failing backends: each scenario asserts exact counts and counters."""

from __future__ import annotations

import pytest

from tests.reliability import scenarios as S


@pytest.mark.parametrize("scenario", S.BACKEND_FAULTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_backend_fault(scenario, workers):
    r = await scenario(1, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}, expected {r.expected}. {r.notes}")
    assert r.problems == []
    assert r.failed == r.expected
