"""router.control.store.file under SIGKILL in the middle of saves: the file is always exactly one
complete state. Slow (child processes killed over and over): tests/unit has the rest of the
store's tests."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.control.store import FileStore
from tests.unit.test_file_store import REPO, STATE_CODE, make_state, temp_files

pytestmark = pytest.mark.slow

# The child: save states start+1, start+2, ... as fast as it can; say so once the first is on disk.
WRITER = STATE_CODE + '''
import sys
from router.control.store import FileStore
store = FileStore(sys.argv[1])
first = i = int(sys.argv[2]) + 1
while True:
    store.save(make_state(i))
    if i == first:
        print("saved", flush=True)
    i += 1
'''


def _wait_for_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return proc.stdout.readline()


def _wait_for_temp_file(directory: Path, prefix: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(name.startswith(prefix) for name in os.listdir(directory)):
            return


def test_sigkill_never_leaves_a_torn_file(tmp_path: Path) -> None:
    """Kill a writer at random moments: the file is always exactly one complete state.

    Each child continues from the generation found on disk after the previous kill, and has
    reported its first save as done before it is killed, so the generation on disk must grow
    strictly from one kill to the next.  The loop runs until at least 20 kills *and* at least five
    that provably landed inside a save (they left a temporary file behind), within 60 s (about
    5 s on an idle machine: the bound is for a loaded one, where every writer starts slowly).
    """
    path = tmp_path / "state.yaml"
    store = FileStore(str(path))
    store.save(make_state(0))
    assert 40_000 < path.stat().st_size < 80_000  # the ~50 KB payload the test is about

    rng = random.Random(os.getpid() ^ time.time_ns())
    generation = 0
    kills = mid_save = 0
    started = time.monotonic()
    while (kills < 20 or mid_save < 5) and time.monotonic() - started < 60:
        strays = set(temp_files(tmp_path))
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(generation)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = _wait_for_line(proc, 10)
            if line != b"saved\n":
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(f"writer did not start: {line!r} {err.decode(errors='replace')}")
            time.sleep(rng.uniform(0, 0.05))  # time is the subject: a kill at a random moment
            if kills % 2:
                # Every other kill aims at the narrow window that matters most: a save spends
                # ~12 of its ~17 ms serialising, and only ~1 ms with its temporary file open.
                _wait_for_temp_file(tmp_path, f".state.yaml.{proc.pid}.", 0.2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        if set(temp_files(tmp_path)) - strays:
            mid_save += 1

        loaded = store.load()  # never a StoreError: the file always parses
        assert loaded is not None
        seen = loaded["generation"]
        assert isinstance(seen, int)
        assert loaded == make_state(seen), f"kill {kills}: file is not exactly state {seen}"
        assert seen > generation, f"kill {kills}: generation went from {generation} to {seen}"
        generation = seen

    elapsed = time.monotonic() - started
    assert kills >= 20, f"only {kills} kills in {elapsed:.1f} s"
    assert mid_save >= 5, f"only {mid_save} of {kills} kills landed inside a save"
    print(f"{kills} kills in {elapsed:.1f} s, {mid_save} inside a save, generation {generation}")
