"""Restarts: SIGTERM and SIGHUP of the real process under load."""

from __future__ import annotations

import pytest

from tests.reliability import scenarios as S


@pytest.mark.parametrize("scenario", S.RESTARTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_restart_under_load(scenario, workers):
    r = await scenario(1, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}, expected {r.expected}. {r.notes}")
    assert r.problems == []
    assert r.failed == r.expected
