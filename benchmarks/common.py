"""Pieces the benchmarks beside run.py share: named sections of RESULTS.md, the revision that
was measured, process memory, the open-file limit.

``run.py`` rewrites the top of ``RESULTS.md`` (its comparison table) on every run; the other
benchmarks (``weights.py``, ``memory.py``, ``workers.py``) each own one section below it,
between ``<!-- section: NAME -->`` and ``<!-- /section: NAME -->`` markers. A run replaces only
its own section, so the results of the different benchmarks do not overwrite one another.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"

_SECTION = re.compile(r"<!-- section: ([a-z0-9-]+) -->\n.*?<!-- /section: \1 -->\n?", re.S)


def sections(text: str) -> dict[str, str]:
    """The named sections of a RESULTS.md text, markers included, in order of appearance."""
    return {m.group(1): m.group(0).rstrip("\n") + "\n" for m in _SECTION.finditer(text)}


def with_sections(main: str, path: Path = RESULTS_MD) -> str:
    """``main`` (run.py's part) followed by the named sections already in ``path``."""
    try:
        old = path.read_text()
    except OSError:
        old = ""
    kept = sections(old)
    text = main.rstrip("\n") + "\n"
    for block in kept.values():
        text += "\n" + block
    return text


def write_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace section ``name`` of ``path`` with ``body`` (a markdown text), or append it."""
    block = f"<!-- section: {name} -->\n{body.rstrip()}\n<!-- /section: {name} -->\n"
    try:
        old = path.read_text()
    except OSError:
        old = "# Benchmark results\n"
    if name in sections(old):
        pattern = re.compile(rf"<!-- section: {re.escape(name)} -->\n.*?"
                             rf"<!-- /section: {re.escape(name)} -->\n?", re.S)
        new = pattern.sub(lambda _m: block, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def notes_and_skips(notes: list[str], skips: dict[str, str]) -> list[str]:
    """The end of a report: its notes as a list, then each skipped target with why."""
    parts = ["Notes:", "", *(f"- {n}" for n in notes), ""] if notes else []
    for name, why in skips.items():
        parts += [f"**{name} skipped**:", "", "```", why, "```", ""]
    return parts


def revision() -> str:
    """The commit measured, and whether router/ or admin/ had uncommitted changes then.

    Other sessions edit the router while benchmarks run; a number belongs to a tree.
    """
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.rstrip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "router", "admin")
    if dirty:
        files = [line[3:] for line in dirty.splitlines()]
        return f"{head} + uncommitted changes in {', '.join(files)}"
    return head


def rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_rss_kib(pids: Iterable[int]) -> dict[int, int]:
    """VmRSS of each live process of ``pids``."""
    out: dict[int, int] = {}
    for pid in pids:
        kib = rss_kib(pid)
        if kib is not None:
            out[pid] = kib
    return out


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limits(pid: int) -> tuple[str, str] | None:
    """(soft, hard) "Max open files" of a running process, from /proc/<pid>/limits."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    except (OSError, ValueError):
        return None
    return None


def raise_nofile(want: int | None = None) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit (children inherit it).

    Returns the (soft, hard) limits in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else min(max(soft, want), hard)
    if hard == resource.RLIM_INFINITY and want is None:
        target = max(soft, 1 << 20)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
