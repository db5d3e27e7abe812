"""The router's own image: built from the repository's Dockerfile by a real dockerd and run as
the cluster's routing container, with a mounted configuration, the Docker socket and a volume
for its state; removed and run again, it keeps its weights and its sticky cookies.

No registry is reachable, so the base image is made here from Debian's packages (debootstrap,
then slimmed as Debian's official ``-slim`` images are: no documentation, manual pages or
translations) under the name the ``BASE`` build argument gives, with this machine's CA bundle
so that pip inside the build trusts what pip here trusts. Slow (a root file system, then pip
and mypyc): marked ``image``; ``-m 'not image'`` leaves it out.
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

from tests.conftest import ROOT, free_port
from tests.docker.conftest import HOST, LABEL, Engine

BASE = "router-test/debian-python:bookworm"
TAG = "router-test/router:latest"
# The compiler and Python's headers: the Dockerfile's build stage installs them.
PACKAGES = "python3,python3-venv,ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# What debuerreotype's slimify leaves out of Debian's -slim images (and dpkg then never
# installs: the build stage's packages too).
SLIM = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""
MAX_IMAGE = 200 * 1000 * 1000


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
    with open(os.path.join(rootfs, "etc/dpkg/dpkg.cfg.d/docker-slim"), "w") as f:
        f.write(SLIM)
    for pattern in ("usr/share/info", "usr/share/linda", "usr/share/lintian/overrides",
                    "usr/share/locale", "usr/share/man"):
        shutil.rmtree(os.path.join(rootfs, pattern), ignore_errors=True)
    doc = os.path.join(rootfs, "usr/share/doc")
    for package in os.listdir(doc) if os.path.isdir(doc) else ():
        for name in os.listdir(os.path.join(doc, package)):
            if name != "copyright":
                path = os.path.join(doc, package, name)
                (shutil.rmtree if os.path.isdir(path) and not os.path.islink(path)
                 else os.unlink)(path)
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


async def _healthy(docker: Engine, name: str, deadline: float) -> None:
    health = ""
    while time.monotonic() < deadline:
        health = docker.docker("inspect", "-f", "{{.State.Health.Status}}", name)
        if health == "healthy":
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{name} is {health}: " + docker.docker("inspect", "-f",
                         "{{json .State.Health}}", name) + docker.docker("logs", name, merge=True))


def _ports(docker: Engine, name: str) -> dict[str, int]:
    """{container port: host port} of its published ports."""
    return {line.split("/")[0]: int(line.rsplit(":", 1)[1])
            for line in docker.docker("port", name).splitlines()}


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
    size = int(docker.docker("image", "inspect", "-f", "{{.Size}}", TAG))
    base_size = int(docker.docker("image", "inspect", "-f", "{{.Size}}", BASE))
    print(f"router image: base {based - began:.0f} s, build {built - based:.0f} s, "
          f"size {size / 1e6:.1f} MB (base {base_size / 1e6:.1f} MB)")
    assert size < MAX_IMAGE
    # No compiler in the image: the build stage had it.
    assert docker.docker("run", "--rm", "--entrypoint", "sh", TAG, "-c",
                         "command -v gcc cc x86_64-linux-gnu-gcc || echo none") == "none"
    assert docker.docker("image", "inspect", "-f", "{{json .Config.Volumes}}", TAG) == (
        '{"/var/lib/router":{}}')

    # The app's containers are on the default bridge, which the router's container shares,
    # and on a network of their own: the shared one is the one to reach them on.
    side = docker.network("rt-side", "172.30.96.0/24")
    web = docker.run("shop-web-1", "shop", "web", LABEL, network="bridge", also=(side,))
    v2 = docker.run("shop-web-v2-1", "shop", "web-v2", LABEL, network="bridge", also=(side,))
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        # The admin API not on 9090: the health check follows it.
        "listen": "0.0.0.0:8080", "admin": {"listen": "0.0.0.0:9191"}, "domain": "example.test",
        "providers": {"docker": {}},
    }))
    config.chmod(0o644)
    group = os.stat(docker.socket).st_gid
    run = ["run", "-d", "--name", "router", "--group-add", str(group),
           "-e", "ROUTER_ADMIN_TOKEN=image-test-token",
           "-v", f"{config}:/etc/router/router.yaml:ro",
           "-v", f"{docker.socket}:/var/run/docker.sock",
           "-v", "router-state:/var/lib/router",
           "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9191", TAG]
    docker.docker(*run)
    deadline = time.monotonic() + 90
    await _healthy(docker, "router", deadline)
    ports = _ports(docker, "router")
    api = f"http://127.0.0.1:{ports['9191']}/api/v1/apps/shop"
    auth = {"Authorization": "Bearer image-test-token"}
    logs = docker.docker("logs", "router", merge=True)
    assert "THE ROUTING STATE IS NOT KEPT" not in logs, logs
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.get(f"http://127.0.0.1:{ports['9191']}/healthz") as r:
            assert (r.status, await r.text()) == (200, "ok\n")
        # The app's containers, found through the mounted socket, served through the router's.
        app: dict = {}
        while time.monotonic() < deadline and len(app.get("services", {})) < 2:
            async with s.get(api, headers=auth) as r:
                app = await r.json() if r.status == 200 else {}
            await asyncio.sleep(0.2)
        ips = {c.name: c.ip for c in (web, v2)}
        assert {n: x["backends"] for n, x in app["services"].items()} == {
            "web": [f"{ips['shop-web-1']}:80"], "web-v2": [f"{ips['shop-web-v2-1']}:80"]}, app
        async with s.put(api + "/weights", json={"web": 50, "web-v2": 50},
                         headers=auth) as r:
            assert r.status == 200, await r.text()
        # A client pinned to one of them by its cookie.
        async with s.get(f"http://127.0.0.1:{ports['8080']}/", headers={"Host": HOST}) as r:
            pinned = await r.text()
            cookie = "; ".join(f"{m.key}={m.value}" for m in r.cookies.values())
        assert cookie and pinned in ("shop-web-1\n", "shop-web-v2-1\n")

        # The router's container removed and run again, with its volume.
        docker.docker("rm", "-f", "router")
        docker.docker(*run)
        deadline = time.monotonic() + 90
        await _healthy(docker, "router", deadline)
        ports = _ports(docker, "router")
        api = f"http://127.0.0.1:{ports['9191']}/api/v1/apps/shop"
        async with s.get(api, headers=auth) as r:
            app = await r.json()
        assert {n: x["weight"] for n, x in app["services"].items()} == {"web": 50, "web-v2": 50}
        bodies = []
        for _ in range(10):
            async with s.get(f"http://127.0.0.1:{ports['8080']}/",
                             headers={"Host": HOST, "Cookie": cookie}) as r:
                bodies.append(await r.text())
        assert bodies == [pinned] * 10  # the same secret: the cookie still holds

    assert docker.docker("exec", "router", "id", "-u") == "10001"
    assert docker.docker("inspect", "-f", "{{.Config.User}}", "router") == "router"
    assert "data plane compiled (mypyc)" in docker.docker("logs", "router", merge=True)
    assert docker.docker("exec", "-w", "/", "router", "python", "-c",
                         "import router; print(router.compiled())") == "True"
    docker.docker("rm", "-f", "router")

    # Without a named volume (an anonymous one), or with the state in the container's layer:
    # a loud warning at start.
    for name, extra in (("router-anon", ()), ("router-layer", ("-e", "ROUTER_STATE_DIR=/tmp/st"))):
        docker.docker("run", "-d", "--name", name, *extra, TAG)
        await _healthy(docker, name, time.monotonic() + 60)
        logs = docker.docker("logs", name, merge=True)
        where = "anonymous volume" if name == "router-anon" else "writable layer"
        assert "THE ROUTING STATE IS NOT KEPT" in logs and where in logs, logs
        docker.docker("rm", "-f", "-v", name)
    docker.docker("volume", "rm", "router-state")

    # The Swarm stack of deploy/, as documented.
    if docker.docker("info", "-f", "{{.Swarm.LocalNodeState}}") != "active":
        docker.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    docker.docker("network", "create", "-d", "overlay", "--attachable", "apps")
    docker.networks.append("apps")
    http, admin = free_port(), free_port()
    env = {"DOCKER_GID": str(group), "ROUTER_ADMIN_TOKEN": "stack-token", "ROUTER_IMAGE": TAG,
           "ROUTER_NODE": docker.docker("info", "-f", "{{.Name}}"),
           "DOCKER_SOCKET": docker.socket, "ROUTER_HTTP_PORT": str(http),
           "ROUTER_ADMIN_PORT": str(admin)}
    docker.docker("stack", "deploy", "-c", os.path.join(ROOT, "deploy", "stack.yaml"), "router",
                  env=env)
    deadline = time.monotonic() + 90
    name = ""
    while time.monotonic() < deadline and not name:
        name = docker.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=router_router")
        await asyncio.sleep(0.2)
    assert name, docker.docker("service", "ps", "--no-trunc", "router_router")
    await _healthy(docker, name, deadline)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{admin}/api/v1/apps",
                         headers={"Authorization": "Bearer stack-token"}) as r:
            assert r.status == 200, await r.text()
        async with s.get(f"http://127.0.0.1:{http}/", headers={"Host": HOST}) as r:
            assert r.status == 404  # no app there: but the data plane answers
    logs = docker.docker("logs", name, merge=True)
    assert "following Swarm services" in logs and "NOT KEPT" not in logs, logs
    docker.docker("stack", "rm", "router")
    while time.monotonic() < deadline and docker.docker("ps", "-aq", "--filter",
                                                         "label=com.docker.stack.namespace=router"):
        await asyncio.sleep(0.2)
    docker.docker("volume", "rm", "router_router-state")
