"""The router's own image: built from the repository's Dockerfile by a real dockerd and run as
the cluster's routing container, with a mounted configuration and the Docker socket.

No registry is reachable, so the base image is made here from Debian's packages (debootstrap,
with python3-dev for the compile step) under the name the ``BASE`` build argument gives, with
this machine's CA bundle so that pip inside the build trusts what pip here trusts. Slow (a
root file system, then pip and mypyc): marked ``image``; ``-m 'not image'`` leaves it out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import aiohttp
import pytest
import yaml

from tests.conftest import ROOT
from tests.docker.conftest import HOST, LABEL, Engine

BASE = "router-test/debian-python:bookworm"
TAG = "router-test/router:latest"
PACKAGES = "python3,python3-venv,python3-dev,ca-certificates"  # gcc: the Dockerfile's step
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org if none is found)."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            with open(path) as f:
                for line in f:
                    words = line.split()
                    if words[:1] == ["URIs:"] and "security" not in words[1]:
                        return words[1]
                    if words[:1] == ["deb"] and "security" not in words[1]:
                        return next(w for w in words[1:] if "://" in w)
        except (OSError, StopIteration):
            continue
    return "http://deb.debian.org/debian"


def _base_image(engine: Engine) -> None:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (Debian: apt-get install debootstrap)")
    rootfs = os.path.join(engine.root, "debian")
    done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                           "bookworm", rootfs, _mirror()], capture_output=True, timeout=900)
    if done.returncode != 0:
        pytest.skip("debootstrap failed (no Debian mirror reachable?): "
                    + done.stdout.decode(errors="replace")[-800:])
    if os.path.exists(CA_BUNDLE):
        shutil.copy(CA_BUNDLE, rootfs + CA_BUNDLE)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(os.path.join(rootfs, cache), ignore_errors=True)
        os.makedirs(os.path.join(rootfs, cache, "partial"))
    tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
    env = {**os.environ, "DOCKER_HOST": engine.endpoint}
    subprocess.run([engine.cli, "import", "--change", f"ENV PIP_CERT={CA_BUNDLE}",
                    "--change", f"ENV SSL_CERT_FILE={CA_BUNDLE}", "-", BASE],
                   stdin=tar.stdout, env=env, check=True, capture_output=True, timeout=600)
    assert tar.wait() == 0
    shutil.rmtree(rootfs, ignore_errors=True)


@pytest.mark.image
async def test_the_router_image_builds_and_serves_as_the_routing_container(docker: Engine,
                                                                           tmp_path):
    began = time.monotonic()
    _base_image(docker)
    based = time.monotonic()
    # The host network for the build's RUN steps: pip and apt reach their registries as here.
    docker.docker("build", "--network", "host", "--build-arg", f"BASE={BASE}", "-t", TAG, ROOT,
                  timeout=1800)
    built = time.monotonic()

    web = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "0.0.0.0:8080", "admin": {"listen": "0.0.0.0:9090"}, "domain": "example.test",
        # The router's container and the app's share Docker's default network.
        "providers": {"docker": {"network": "bridge"}},
    }))
    config.chmod(0o644)
    group = os.stat(docker.socket).st_gid
    docker.docker("run", "-d", "--name", "router", "--group-add", str(group),
                  "-e", "ROUTER_ADMIN_TOKEN=image-test-token",
                  "-v", f"{config}:/etc/router/router.yaml:ro",
                  "-v", f"{docker.socket}:/var/run/docker.sock",
                  "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9090", TAG)
    ports = {line.split("/")[0]: int(line.rsplit(":", 1)[1])
             for line in docker.docker("port", "router").splitlines()}
    deadline = time.monotonic() + 90
    health = ""
    while time.monotonic() < deadline:
        health = docker.docker("inspect", "-f", "{{.State.Health.Status}}", "router")
        if health == "healthy":
            break
        await asyncio.sleep(0.5)
    logs = docker.docker("logs", "router", merge=True)
    assert health == "healthy", logs
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{ports['9090']}/healthz") as r:
            assert (r.status, await r.text()) == (200, "ok\n")
        # The app's container, found through the mounted socket, served through the router's.
        body = ""
        while time.monotonic() < deadline and body != "shop-web-1\n":
            async with s.get(f"http://127.0.0.1:{ports['8080']}/", headers={"Host": HOST}) as r:
                body = await r.text()
            await asyncio.sleep(0.2)
        assert body == "shop-web-1\n", docker.docker("logs", "router", merge=True)
        async with s.get(f"http://127.0.0.1:{ports['9090']}/api/v1/apps/shop",
                         headers={"Authorization": "Bearer image-test-token"}) as r:
            app = await r.json()
    ip = docker.docker("inspect", "-f", "{{.NetworkSettings.Networks.bridge.IPAddress}}", web.id)
    assert app["services"]["web"]["backends"] == [f"{ip}:80"]
    assert docker.docker("exec", "router", "id", "-u") == "10001"
    assert docker.docker("inspect", "-f", "{{.Config.User}}", "router") == "router"
    assert "data plane compiled (mypyc)" in docker.docker("logs", "router", merge=True)
    # From /: in the WORKDIR the source tree would shadow the installed package.
    assert docker.docker("exec", "-w", "/", "router", "python", "-c",
                         "import router; print(router.compiled())") == "True"
    print(f"router image: base {based - began:.0f} s, build {built - based:.0f} s, "
          f"size {docker.docker('image', 'inspect', '-f', '{{.Size}}', TAG)} bytes")
