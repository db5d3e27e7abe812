"""Packaging: the etcd client is an extra, and a router asked for etcd without it says which."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from tests.conftest import ROOT


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_etcd_is_an_extra_that_the_tests_install():
    project = _project()
    assert not [d for d in project["dependencies"] if d.startswith(("aetcd", "grpcio"))]
    extras = project["optional-dependencies"]
    assert [d for d in extras["etcd"] if d.startswith("aetcd")]
    assert "bluegreen-router[etcd]" in extras["test"]
    assert project["license"] == "Apache-2.0"  # the SPDX string, not the deprecated table


def test_etcd_store_without_the_extra_exits_2_naming_it():
    # aetcd made unimportable, as when only `pip install bluegreen-router` was run.
    code = ("import sys; sys.modules['aetcd'] = None; from router.cli import main; "
            "sys.exit(main(['serve', '--store', 'etcd://127.0.0.1:2379/x']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith("router: --store: etcd://127.0.0.1:2379/x: the etcd store needs "
                               "the etcd extra: pip install 'bluegreen-router[etcd]'"), r.stderr
