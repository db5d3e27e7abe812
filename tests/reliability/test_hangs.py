"""Versions that hang, a black-holed backend, a slow version, and guarded ramps of them: each
scenario asserts exact counts and the bounds docs/health.md and docs/release-ramp.md give."""

from __future__ import annotations

import pytest

from tests.reliability import hangs as H

pytestmark = pytest.mark.slow  # each scenario waits out timeouts, cooldowns and ramp steps


@pytest.mark.parametrize("scenario", H.HANGS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("workers", [1, 2], ids=lambda n: f"workers{n}")
async def test_hang(scenario, workers):
    r = await scenario(1, workers)
    print(f"\n{r.scenario} (--workers {workers}): sent {r.sent}, failed {r.failed}, "
          f"expected {r.expected}. {r.notes}")
    assert r.problems == []
    assert r.failed == r.expected
