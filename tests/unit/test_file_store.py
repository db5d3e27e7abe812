"""router.control.store.file: atomic YAML state file (SIGKILL in the middle of saves:
tests/state/test_file_store_crash.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from router.control.store import FileStore, StoreError

REPO = Path(__file__).resolve().parents[2]

# The states these tests and the crash test write.  Shared as source so the crash test's child
# process builds exactly the same documents: every backend address carries the generation, so a file mixing two states (or a
# prefix of one that still parses) cannot equal make_state(i) for any i.
STATE_CODE = '''
def make_state(i):
    apps = {}
    for k in range(40):
        apps[f"app-{k:02d}"] = {
            "routes": [f"app-{k}.example.com"],
            "services": {f"web-{i % 7}": {
                "weight": (i * 31 + k) % 101,
                "backends": [f"10.{k}.{(i >> 8) & 255}.{i & 255}:{8000 + j}" for j in range(40)],
            }},
        }
    return {"generation": i, "apps": apps}
'''
_ns: dict[str, Any] = {}
exec(STATE_CODE, _ns)
make_state: Callable[[int], dict[str, Any]] = _ns["make_state"]


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=30)


# --- load and save -------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "state.yaml"))
    data = {"generation": 3, "apps": {"shop": {"routes": ["shop.example.com"],
                                               "services": {"web": {"weight": 100}},
                                               "release": None}},
            "text": "2026-11-26T14:33:18Z", "yes": "yes", "unicode": "caf\u00e9 \u2603"}
    store.save(data)
    assert store.load() == data
    # Insertion order is kept (sort_keys=False): the file reads in the order the state has.
    assert list(store.load() or {}) == ["generation", "apps", "text", "yes", "unicode"]
    store.save({"generation": 4})
    assert store.load() == {"generation": 4}
    assert store.path == str(tmp_path / "state.yaml")


def test_saved_file_is_plain_yaml(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "state.yaml"))
    store.save({"generation": 1, "apps": {}})
    assert (tmp_path / "state.yaml").read_text() == "generation: 1\napps: {}\n"


def test_load_missing_file_is_none(tmp_path: Path) -> None:
    assert FileStore(str(tmp_path / "nothing.yaml")).load() is None


def test_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileStore("router-state.yaml")
    store.save({"generation": 1})
    assert FileStore(str(tmp_path / "router-state.yaml")).load() == {"generation": 1}
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(("content", "reason"), [
    (b"generation: [1,\n", "is not valid YAML"),
    (b"generation: 1\n\tapps: {}\n", "is not valid YAML"),
    (b"a: \x00\n", "is not valid YAML"),
    (b"a: b\n\xc3(\n", "is not valid YAML"),
    (b"when: 2026-13-45\n", "is not valid YAML"),
    (b"n: !!int xyz\n", "is not valid YAML"),
    (b"x: !!python/object/apply:os.system [true]\n", "is not valid YAML"),
    # libyaml's parser segfaults on this (the store loads with the pure-Python one).
    pytest.param(b"a: " + b"[" * 40000 + b"\n", "is not valid YAML", id="nested-40000-deep"),
    (b"", "must hold a mapping, not an empty document"),
    (b"- 1\n- 2\n", "must hold a mapping, not list"),
    (b"just text\n", "must hold a mapping, not str"),
])
def test_corrupt_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "state.yaml"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        FileStore(str(path)).load()
    assert str(info.value).startswith(f"{path}: the state file ")
    assert reason in str(info.value)


def test_invalid_yaml_message_has_the_position(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_bytes(b"generation: 1\napps: [1,\n")
    with pytest.raises(StoreError, match=r"line 3, column 1"):
        FileStore(str(path)).load()


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        FileStore(str(tmp_path)).load()
    assert str(info.value) == f"{tmp_path}: cannot read the state file: Is a directory"


def test_no_temp_files_after_save(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "state.yaml"))
    for i in range(20):
        store.save(make_state(i))
    assert os.listdir(tmp_path) == ["state.yaml"]
    assert store.load() == make_state(19)


def test_mode_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text("generation: 0\n")
    path.chmod(0o644)
    old_umask = os.umask(0)  # even a umask that lets everything through
    try:
        FileStore(str(path)).save({"generation": 1})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_stray_temp_file_is_not_reused(tmp_path: Path) -> None:
    # A killed process with this pid (pids are reused) may have left any counter value behind.
    store = FileStore(str(tmp_path / "state.yaml"))
    store.save({"generation": 1})
    for n in range(1, 200):
        (tmp_path / f".state.yaml.{os.getpid()}.{n}.tmp").write_text("stray")
    store.save({"generation": 2})
    assert store.load() == {"generation": 2}
    assert len(temp_files(tmp_path)) == 199
    assert all((tmp_path / n).read_text() == "stray" for n in temp_files(tmp_path))


@pytest.mark.parametrize(("data", "reason"), [
    ({"generation": object()}, "cannot serialise the state"),
    (["not", "a", "mapping"], "the state must be a mapping, not list"),
])
def test_unserialisable_state_leaves_the_old_file(tmp_path: Path, data: Any, reason: str) -> None:
    path = tmp_path / "state.yaml"
    store = FileStore(str(path))
    store.save({"generation": 1})
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"^{path}: {reason}"):
        store.save(data)
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_concurrent_saves(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "state.yaml"))
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(base, base + 10):
                store.save(make_state(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 100, 200, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    loaded = store.load()
    assert loaded is not None and loaded == make_state(loaded["generation"])
    assert os.listdir(tmp_path) == ["state.yaml"]


# --- failures while saving -----------------------------------------------------------------------

# As root, permissions do not stop writes: the save then runs in a child that drops to nobody
# after importing (the interpreter itself lives under /root, which nobody cannot read).
UNWRITABLE = '''
import json, os, sys
from router.control.store import FileStore, StoreError
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    FileStore(sys.argv[1]).save({"generation": 2})
except StoreError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"error": None}))
'''


def test_unwritable_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # tmp_path's parents are root-only; nobody must be able to reach the file to try.
        directory = Path(tempfile.mkdtemp(prefix="router-store-"))
        directory.chmod(0o755)  # owned by root: readable, not writable, for nobody
    else:
        directory = tmp_path / "ro"
        directory.mkdir()
    path = directory / "state.yaml"
    try:
        FileStore(str(path)).save({"generation": 1})
        before = path.read_bytes()
        if os.geteuid() != 0:
            directory.chmod(0o555)
        result = run_python(UNWRITABLE, str(path))
        assert result.returncode == 0, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error == (f"{path}: cannot create a temporary file in {directory}:"
                         " Permission denied")
        assert path.read_bytes() == before
        assert FileStore(str(path)).load() == {"generation": 1}
        assert temp_files(directory) == []
    finally:
        directory.chmod(0o755)
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()


# A write that fails half-way (disk full, quota): RLIMIT_FSIZE makes write() fail with EFBIG after
# 4 KiB, for root too.  The temp file must go and the old file stay.
FILE_TOO_BIG = STATE_CODE + '''
import json, resource, signal, sys
from router.control.store import FileStore, StoreError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
try:
    FileStore(sys.argv[1]).save(make_state(2))
except StoreError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"error": None}))
'''


def test_write_failing_half_way(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    FileStore(str(path)).save({"generation": 1})
    before = path.read_bytes()
    result = run_python(FILE_TOO_BIG, str(path))
    assert result.returncode == 0, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error == f"{path}: cannot write the state file: File too large"
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []
