"""The Dockerfile's commands, run outside Docker (there is no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import yaml

from tests.conftest import ROOT, free_port


def _dockerfile() -> str:
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        return f.read().replace("\\\n", " ")


def _exec_form(instruction: str) -> list[str]:
    m = re.search(rf"^{instruction}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", _dockerfile(), re.M)
    assert m, f"no exec-form {instruction} in the Dockerfile"
    return json.loads(m.group(1))


def test_install_step_matches_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    # The image runs replicas sharing etcd: it has the etcd extra.
    assert "pip install --no-cache-dir '.[etcd]'" in _dockerfile()
    assert "pip install '.[etcd]'" in readme


def test_cmd_and_healthcheck_run_outside_docker(tmp_path):
    cmd = _exec_form("CMD")
    health = _exec_form("HEALTHCHECK")
    assert cmd[:2] == ["router", "serve"]
    # The image's default configuration, on free ports here.
    with open(os.path.join(ROOT, "deploy", "router.yaml")) as f:
        cfg = yaml.safe_load(f)
    port, admin = free_port(), free_port()
    cfg["listen"] = f"127.0.0.1:{port}"
    cfg["admin"]["listen"] = f"127.0.0.1:{admin}"
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exe = shutil.which("router", path=os.path.dirname(sys.executable)) or shutil.which("router")
    assert exe, "the `router` console script is not installed (pip install .)"
    argv = [exe] + [str(path) if a == "/etc/router/router.yaml" else a for a in cmd[1:]]
    proc = subprocess.Popen(argv, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # The check asks where the configuration puts the admin API (not 9090 here). In the
        # container it finds the configuration from the running router's command line; here,
        # among whatever other routers run on this machine, it is told which.
        assert health == ["python", "-m", "router.healthcheck"]
        probe = [sys.executable, *health[1:], str(path)]
        for _ in range(100):
            if subprocess.run(probe, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("healthcheck never passed")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
