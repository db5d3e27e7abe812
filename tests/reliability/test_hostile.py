"""The hostile corpus against the real router on loopback, and the same bytes to HAProxy."""

from __future__ import annotations

import shutil

import pytest

from tests.reliability.corpus import CORPUS
from tests.reliability.hostile import WHY, difference_table, differences, run_corpus

pytestmark = pytest.mark.slow  # the whole corpus through the router and through HAProxy


def test_corpus_is_big_and_well_formed():
    names = [c.name for c in CORPUS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    for c in CORPUS:
        assert c.statuses and all(s == "close" or s.isdigit() for s in c.statuses), c.name
        assert c.reason, c.name


async def test_hostile_corpus_verdicts_and_haproxy_differences():
    rows, ran_haproxy = await run_corpus(compare_haproxy=True)
    problems = [f"{r.case.name}: {'; '.join(r.problems)}" for r in rows if r.problems]
    assert problems == [], "\n".join(problems)
    if not ran_haproxy:
        pytest.skip("haproxy is not installed (Debian package 'haproxy'): no comparison")
    print("\nWhere HAProxy's verdict differs from the router's (fwd = requests the backend saw):")
    print(difference_table(rows))
    unexplained = [r.case.name for r in differences(rows) if r.case.name not in WHY]
    assert unexplained == [], f"differences without a documented reason: {unexplained}"


def test_haproxy_present_or_skip_reason():
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed: the corpus comparison is skipped")
