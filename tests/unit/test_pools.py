"""The pages of CPython's empty object pools given back (router.process._pools, C): a burst of
small objects freed but for one in each pool leaves its arenas in place, and release() gives
back all the pages of the empty pools but their first; the allocator then serves every size
from those pools as before, with the values written."""

from __future__ import annotations

import subprocess
import sys

import pytest

import router

if not router.compiled():
    pytest.skip("plain Python: router/process/_pools.c is not built", allow_module_level=True)

from router.process import _pools as pools  # noqa: E402  (built with the rest)

SCRIPT = r"""
import gc, sys
from router.process import _pools

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

assert _pools.watch() and _pools.watch()  # once is enough; twice is harmless
assert _pools.release() >= 0
gc.disable()
# 64 MiB of 64-byte blocks (bytes objects of 31 bytes), one in every 10,000 kept: one in each
# arena at least (a 1 MiB arena holds 16,320 such blocks), so none is wholly free and none goes
# back, though almost all of their pools are empty.
made = [bytes(31) for _ in range(1_000_000)]
kept = made[::10_000]
del made
before = rss()
given = _pools.release()
after = rss()
print(given, before - after)
# Reuse: every size class again, values checked, twice over a release.
for round in range(2):
    objs = [(i, str(i) * (i % 40), [i] * (i % 9)) for i in range(300_000)]
    assert all(o[1] == str(o[0]) * (o[0] % 40) and o[2] == [o[0]] * (o[0] % 9) for o in objs)
    del objs
    gc.collect()
    _pools.release()
assert all(k == bytes(31) for k in kept)
sys._debugmallocstats()  # walks every arena and pool (to stderr)
print("ok")
"""


def test_the_pages_of_empty_pools_are_given_back_and_the_pools_serve_again():
    assert pools.watch() is True  # CPython 3.11-3.13 on Linux: the pools it knows
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = out.stdout.split("\n")[:2]
    given, fell = (int(x) for x in first.split())
    # About 64 MiB of pools emptied; each keeps its first page of four.
    assert given >= 40 * 2**20, first
    assert fell >= given * 0.8, first
    assert last == "ok"
