"""schemathesis against the served OpenAPI document: no 5xx, answers match the document,
negative data rejected. Runs the real `router serve` process (with a bearer token)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, assume, settings

from router.admin.openapi import openapi
from tests.conftest import ROOT, free_port

TOKEN = "schemathesis-token"
schema = schemathesis.openapi.from_dict(openapi())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("st")
    (d / "token").write_text(TOKEN)
    port, admin = free_port(), free_port()
    cfg = {"listen": f"127.0.0.1:{port}",
           "admin": {"listen": f"127.0.0.1:{admin}", "token_file": str(d / "token")},
           "apps": {"shop": {"routes": ["shop.test"], "services": {
               "web": {"weight": 100, "backends": ["127.0.0.1:9"]}}}}}
    (d / "router.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", str(d / "router.yaml")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(d / "log", "wb"))
    url = f"http://127.0.0.1:{admin}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url + "/readyz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError("no answer on /readyz:\n" + (d / "log").read_text()[-3000:])
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    log = (d / "log").read_text()
    assert "Traceback" not in log, log


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case, base_url):
    # Every check but "schema-valid data is accepted": a schema cannot say that an If-Match is
    # stale (412), that a route belongs to another app (409) or that an address is well-formed,
    # and those answers are right.
    # A query parameter whose value is an empty list is sent as nothing at all: a "negative"
    # case made only of such a parameter is a valid request on the wire.
    assume(not any(v == [] for v in (case.query or {}).values()))
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
