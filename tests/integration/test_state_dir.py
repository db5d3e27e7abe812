"""Where the routing state and the sticky secret live: the state directory.

``--state-dir``, else ``ROUTER_STATE_DIR``, else the configuration's directory when the router
can write it, else /var/lib/router. One it cannot write: exit 2 naming it. Stray temporary
files of interrupted saves are removed at start.

A read-only directory is made with a read-only bind mount in a private mount namespace
(``unshare -m``) when running as root, and with ``chmod`` otherwise (root ignores modes); the
default /var/lib/router is only ever replaced inside such a namespace, never touched for real.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import ROOT, app_config, free_port, terminate

ROOTED = os.geteuid() == 0


def _unshare_works() -> bool:
    if not ROOTED or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / / 2>/dev/null || "
                            "mount -t tmpfs none /mnt"], capture_output=True)
    return probe.returncode == 0


NAMESPACES = _unshare_works()


def _write_config(directory: str, backend: str) -> tuple[str, int, int]:
    port, admin = free_port(), free_port()
    path = os.path.join(directory, "router.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin}"},
                        "timeouts": {"grace": "1s"},
                        "apps": {"shop": app_config({"web": (1, [backend])})}}, f)
    return path, port, admin


def _command(args: list[str], read_only: list[str] = (), var_lib: str | None = None) -> list[str]:
    """``router`` with ``args``; the directories ``read_only`` made read-only, and /var/lib
    replaced by ``var_lib`` (a private mount namespace, as root)."""
    cmd = [sys.executable, "-m", "router.cli", *args]
    if not read_only and var_lib is None:
        return cmd
    if NAMESPACES:
        script = []
        if var_lib is not None:
            ro = " -o ro" if var_lib in read_only else ""
            script.append(f"mount --bind{ro} {shlex.quote(var_lib)} /var/lib")
        script += [f"mount --bind -o ro {shlex.quote(d)} {shlex.quote(d)}" for d in read_only]
        script.append("exec " + shlex.join(cmd))
        return ["unshare", "-m", "sh", "-c", " && ".join(script)]
    assert var_lib is None, "replacing /var/lib needs root"
    for d in read_only:
        os.chmod(d, 0o555)
    return cmd


def _needs(var_lib: bool = False) -> None:
    if var_lib and not NAMESPACES:
        pytest.skip("replacing /var/lib for the test needs root and unshare -m")
    if ROOTED and not NAMESPACES:
        pytest.skip("as root a read-only directory needs unshare -m (mount namespaces)")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


async def _serving(cmd: list[str], admin: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""  # type: ignore[union-attr]
                raise AssertionError(f"router did not start (exit {proc.poll()}):\n{err}")
            await asyncio.sleep(0.05)


async def _change_weight(admin: int) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.put(f"http://127.0.0.1:{admin}/api/v1/apps/shop/weights", json={"web": 7}) as r:
            assert r.status == 200, await r.text()


def _chmod_back(*dirs: Any) -> None:
    for d in dirs:
        os.chmod(d, 0o755)


async def test_state_dir_flag_and_environment(backend, tmp_path):
    be = await backend("blue")
    conf = tmp_path / "conf"
    conf.mkdir()
    for how in ("flag", "env"):
        state = tmp_path / f"state-{how}"  # created by the router
        path, _, admin = _write_config(str(conf), be.addr)
        args = ["serve", "--config", path]
        env = {"ROUTER_STATE_DIR": str(state)}
        if how == "flag":
            args += ["--state-dir", str(state)]
            env = {"ROUTER_STATE_DIR": str(tmp_path / "ignored")}  # the flag wins
        proc = await _serving(_command(args), admin, env)
        await _change_weight(admin)
        assert terminate(proc, 15) == 0
        assert sorted(os.listdir(state)) == ["router-secret", "router-state.history.jsonl", "router-state.yaml", "router-state.yaml.lock"]
        assert "weight: 7" in (state / "router-state.yaml").read_text()
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        assert os.listdir(conf) == ["router.yaml"]  # nothing written beside the configuration
    assert not (tmp_path / "ignored").exists()


async def test_read_only_configuration_directory_uses_the_default(backend, tmp_path):
    _needs(var_lib=True)
    be = await backend("blue")
    conf, var_lib = tmp_path / "etc-router", tmp_path / "var-lib"
    conf.mkdir()
    var_lib.mkdir()
    path, _, admin = _write_config(str(conf), be.addr)
    proc = await _serving(_command(["serve", "--config", path], read_only=[str(conf)],
                                   var_lib=str(var_lib)), admin)
    await _change_weight(admin)
    assert terminate(proc, 15) == 0
    # /var/lib/router inside the router's namespace is var-lib/router here.
    assert sorted(os.listdir(var_lib / "router")) == ["router-secret", "router-state.history.jsonl", "router-state.yaml", "router-state.yaml.lock"]
    assert "weight: 7" in (var_lib / "router" / "router-state.yaml").read_text()
    assert os.listdir(conf) == ["router.yaml"]


def test_unwritable_state_directory_exits_2_naming_it(tmp_path):
    _needs()
    conf, state = tmp_path / "conf", tmp_path / "state"
    conf.mkdir()
    state.mkdir()
    path, _, _ = _write_config(str(conf), "127.0.0.1:1")
    try:
        r = _run(_command(["serve", "--config", path, "--state-dir", str(state)],
                          read_only=[str(state)]))
    finally:
        _chmod_back(state)
    assert r.returncode == 2, r.stderr
    assert f"router: state directory {state}: not writable (" in r.stderr
    assert "--state-dir or ROUTER_STATE_DIR" in r.stderr
    # A directory that cannot be created: a file stands in the way.
    (tmp_path / "file").write_text("x")
    r = _run(_command(["serve", "--config", path, "--state-dir", str(tmp_path / "file" / "d")]))
    assert r.returncode == 2 and f"state directory {tmp_path}/file/d: cannot create it" in r.stderr


def test_read_only_configuration_and_default_exit_2(tmp_path):
    _needs(var_lib=True)
    conf, var_lib = tmp_path / "conf", tmp_path / "var-lib"
    conf.mkdir()
    var_lib.mkdir()
    path, _, _ = _write_config(str(conf), "127.0.0.1:1")
    r = _run(_command(["serve", "--config", path], read_only=[str(conf), str(var_lib)],
                      var_lib=str(var_lib)))
    assert r.returncode == 2, r.stderr
    assert (f"router: state directory /var/lib/router (the default: {conf} is not writable): "
            "cannot create it: Read-only file system") in r.stderr


async def test_stray_temporary_files_are_removed_at_start(backend, tmp_path):
    be = await backend("blue")
    path, _, admin = _write_config(str(tmp_path), be.addr)
    strays = [tmp_path / ".router-state.yaml.4242.1.tmp", tmp_path / ".router-state.yaml.17.3.tmp",
              tmp_path / ".router-state.history.jsonl.17.4.tmp"]
    strays[0].write_bytes(b"")  # a kill right after the create
    strays[1].write_text("generation: 9\napps: {")  # a kill half-way through the write
    strays[2].write_text('{"generation": 9')  # the history file's, the same way
    old_secret_tmp = tmp_path / "router-secret.tmp4242"
    old_secret_tmp.write_text("abc")
    os.utime(old_secret_tmp, (time.time() - 3600, time.time() - 3600))
    unrelated = tmp_path / ".other.yaml.1.1.tmp"
    unrelated.write_text("not ours")
    proc = await _serving(_command(["serve", "--config", path]), admin)
    await _change_weight(admin)  # a save: its own temporary file comes and goes
    assert terminate(proc, 15) == 0
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert not any(p.exists() for p in strays) and not old_secret_tmp.exists()
    assert unrelated.exists()
    assert "router-state.yaml: removed 2 temporary files left by interrupted saves" in err
    assert "router-state.history.jsonl: removed 1 temporary file left by interrupted saves" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.yaml.1.1.tmp", "router-secret", "router-state.history.jsonl", "router-state.yaml",
        "router-state.yaml.lock", "router.yaml"]
