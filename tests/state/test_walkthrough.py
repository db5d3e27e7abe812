"""The README's release walkthrough, run exactly as written against the demo.

The commands and their outputs are read from the README (the ``sh`` block of "A blue-green
release, step by step"), so the two cannot drift apart. The demo runs as `make demo` runs it
(`router demo`), on free ports instead of the README's, which are put in place of them in the
commands and the outputs; times are the only other thing that differs from run to run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, answering, free_port, terminate

SECTION = "## A blue-green release, step by step"
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# The demo's addresses as the README uses them (router demo's defaults).
README_PORTS = {"listen": 8080, "admin": 9090, "blue": 18001, "green": 18002, "green-v2": 18003}


def walkthrough() -> tuple[str, list[tuple[str, list[str]]]]:
    """ROUTER_URL as the README sets it, and each command with the output it shows."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split(SECTION, 1)[1].split("\n## ", 1)[0]
    url = re.search(r"`export ROUTER_URL=(\S+)`", section)
    assert url, "the walkthrough no longer says how ROUTER_URL is set"
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and not line.startswith("#"):
            steps[-1][1].append(line)
    for _, out in steps:
        while out and not out[-1].strip():
            out.pop()
    return url.group(1), steps


def _five_digit_port() -> int:
    # The README's backend ports have 5 digits: a port as long keeps the tables aligned as shown.
    while len(str(port := free_port())) != 5:
        pass
    return port


def test_the_readme_has_a_walkthrough():
    url, steps = walkthrough()
    assert url == "http://127.0.0.1:9090"
    commands = [c.split()[:3] for c, _ in steps]
    assert ["routerctl", "release", "start"] in commands
    assert ["routerctl", "release", "confirm"] in commands
    assert all(out for _, out in steps), "every command shows its output"


async def test_walkthrough_runs_as_written_against_the_demo(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    router = shutil.which("router", path=bin_dir)
    if router is None or shutil.which("routerctl", path=bin_dir) is None:
        pytest.skip("the router and routerctl commands are not installed beside this Python "
                    "(pip install -e .)")
    if shutil.which("curl") is None:
        pytest.skip("the walkthrough uses curl, which is not installed")
    ports = {name: _five_digit_port() for name in README_PORTS}

    def local(text: str) -> str:
        for name, port in README_PORTS.items():
            text = re.sub(rf":{port}\b", f":{ports[name]}", text)
        return TIME_RE.sub("<time>", text)

    url, steps = walkthrough()
    args = [router, "demo", "--listen", f"127.0.0.1:{ports['listen']}",
            "--admin", f"127.0.0.1:{ports['admin']}"]
    for name in ("blue", "green", "green-v2"):
        args += [f"--{name}", f"127.0.0.1:{ports[name]}"]
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(args, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        await answering(f"http://127.0.0.1:{ports['admin']}/readyz", demo, str(log_path), 15)
        env = {**os.environ, "ROUTER_URL": local(url),
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        env.pop("ROUTER_TOKEN", None)
        for command, expected in steps:
            proc = await asyncio.create_subprocess_shell(
                local(command), cwd=str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, (command, out.decode(), err.decode())
            got = [line.rstrip() for line in local(out.decode()).splitlines()]
            assert got == [local(line).rstrip() for line in expected], command
    finally:
        terminate(demo, 15)
    assert demo.returncode == 0, log_path.read_text()
