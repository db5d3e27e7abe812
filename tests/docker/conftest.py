"""A real Docker Engine for the tests: Debian's ``dockerd``, started with its own data root,
exec root and Unix socket under a temporary directory, and a tiny image made without a
registry (``docker import`` of a root file system holding a static busybox, whose ``httpd``
serves each container's name).

Containers publish their ports on 127.0.0.1 or use the host network, so every request the
tests send stays on loopback. Without root, ``dockerd`` or a static busybox the tests are
skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import aiohttp
import pytest

from tests.conftest import free_port, terminate
from tests.processes import until
from tests.reliability.harness import parse_metrics

IMAGE = "router-test/busybox:1"
BUSYBOX = "/bin/busybox"
# Each container writes its name into the page busybox's httpd serves, then becomes httpd (PID
# 1, which ignores SIGTERM: `docker stop` then waits for the stop timeout, as a server that
# drains its requests would, and SIGKILLs it).
SERVE = ('mkdir -p /www/api && echo "$NAME" > /www/index.html && echo "$NAME" > /www/api/index.html'
         ' && exec httpd -f -p "$LISTEN" -h /www')


def _is_static(path: str) -> bool:
    """An ELF file with no program interpreter (PT_INTERP) runs in an empty root file system."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only, as on every machine here
        return False
    phoff = int.from_bytes(head[32:40], "little")
    phentsize = int.from_bytes(head[54:56], "little")
    phnum = int.from_bytes(head[56:58], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(head[off:off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def docker_cli() -> str | None:
    # Debian's client, from the same package as dockerd, when it is there.
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")


@dataclass
class Engine:
    """A running dockerd of the tests and a few helpers around its CLI."""

    root: str
    proc: subprocess.Popen[bytes]
    cli: str
    log_path: str
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "docker.sock")

    @property
    def endpoint(self) -> str:
        return "unix://" + self.socket

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: bytes | None = None, merge: bool = False,
               env: dict[str, str] | None = None) -> str:
        """The CLI's output (``merge``: with its standard error, as ``docker logs`` needs);
        ``env``: more environment (a stack file's variables)."""
        env = {**os.environ, "DOCKER_HOST": self.endpoint, "DOCKER_BUILDKIT": "0",
               "DOCKER_CONFIG": os.path.join(self.root, "cli"), **(env or {})}
        done = subprocess.run([self.cli, *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                              timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: "
                                 f"{(done.stderr or done.stdout).decode()[-2000:]}")
        return done.stdout.decode().strip()

    def run(self, name: str, project: str | None, service: str | None,
            labels: dict[str, str] | None = None, port: int | None = None,
            published: bool = False, args: tuple[str, ...] = (), body: str | None = None,
            network: str | None = None, stop_timeout: int | None = 2,
            serve: str = SERVE, also: tuple[str, ...] = ()) -> "Container":
        """A backend container of compose project ``project``, service ``service`` (None: no
        compose labels), answering ``GET /`` with ``body`` (default: its name).
        ``published``: on the default bridge, port 80 published on 127.0.0.1; ``network``: on
        that network, at its address there, port 80 (``args`` may add ``--ip``); else on the
        host network at ``port``. ``also``: more networks it is on from its start.
        ``stop_timeout`` None: Docker's default (10 s)."""
        port = port or free_port()
        listen = f"127.0.0.1:{port}" if not published and network is None else "80"
        net = (["-p", "127.0.0.1::80"] if published else ["--network", network] if network
               else ["--network", "host"])
        compose = {"com.docker.compose.project": project,
                   "com.docker.compose.service": service} if project and service else {}
        all_labels = {**compose, **(labels or {})}
        label_args = [a for k, v in all_labels.items() for a in ("--label", f"{k}={v}")]
        stop = ["--stop-timeout", str(stop_timeout)] if stop_timeout is not None else []
        cid = self.docker("create", "--name", name, *stop, *net, *label_args,
                          "-e", f"NAME={body or name}", "-e", f"LISTEN={listen}", *args,
                          IMAGE, "sh", "-c", serve)
        self.containers.append(cid)
        for more in also:
            self.docker("network", "connect", more, cid)
        self.docker("start", cid)
        if published:
            port = int(self.docker("port", cid, "80/tcp").splitlines()[0].rsplit(":", 1)[1])
        elif network is not None:
            ip = self.docker("inspect", "-f",
                             f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', cid)
            return Container(cid, name, 80, ip)
        return Container(cid, name, port)

    def network(self, name: str, subnet: str) -> str:
        """A bridge network, removed after the test."""
        self.docker("network", "create", "--subnet", subnet, name)
        self.networks.append(name)
        return name

    def running(self) -> set[str]:
        return set(self.docker("ps", "--format", "{{.Names}}").split())

    def cleanup(self) -> None:
        ids = self.docker("ps", "-aq", check=False).split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        services = self.docker("service", "ls", "-q", check=False).split()
        if services:
            self.docker("service", "rm", *services, check=False)
        if self.networks:
            self.docker("network", "rm", *self.networks, check=False)
            self.networks.clear()


@dataclass
class Container:
    id: str
    name: str
    port: int  # the port it answers on, at ``ip``
    ip: str = "127.0.0.1"

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


def _start_engine() -> Engine:
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    dockerd = shutil.which("dockerd")
    cli = docker_cli()
    if dockerd is None or cli is None:
        pytest.skip("dockerd or docker not installed (Debian: apt-get install docker.io)")
    if not _is_static(BUSYBOX):
        pytest.skip(f"no static busybox at {BUSYBOX} (Debian: apt-get install busybox-static)")
    # Short: the Unix socket's path must fit in 108 bytes.
    root = tempfile.mkdtemp(prefix="rtd-", dir="/tmp")
    log_path = os.path.join(root, "dockerd.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [dockerd, "--data-root", os.path.join(root, "data"), "--exec-root",
         os.path.join(root, "exec"), "-H", f"unix://{root}/docker.sock",
         "--pidfile", os.path.join(root, "docker.pid")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(root, proc, cli, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if os.path.exists(engine.socket) and engine.docker("version", check=False, timeout=10):
            return engine
        time.sleep(0.2)
    _stop_engine(engine)
    with open(log_path, errors="replace") as f:
        tail = f.read()[-1500:]
    pytest.skip(f"dockerd did not start: {tail}")


def _stop_engine(engine: Engine) -> None:
    terminate(engine.proc, 30)
    # dockerd leaves its network namespace file (nsfs) mounted under the exec root.
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(engine.root + "/")]
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(engine.root, ignore_errors=True)


def _busybox_image(engine: Engine) -> None:
    rootfs = os.path.join(engine.root, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
    for applet in ("sh", "httpd", "mkdir", "echo", "wget", "test", "touch", "sleep", "rm"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    os.makedirs(os.path.join(rootfs, "tmp"))
    tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True).stdout
    engine.docker("import", "--change", "ENV PATH=/bin", "-", IMAGE, input=tar)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """One dockerd for the whole session, with the test image imported."""
    eng = _start_engine()
    try:
        _busybox_image(eng)
        yield eng
    finally:
        eng.cleanup()
        eng.docker("swarm", "leave", "--force", check=False)
        _stop_engine(eng)


@pytest.fixture
def docker(engine: Engine) -> Iterator[Engine]:
    """The session's dockerd, with every container and service a test made removed after it."""
    yield engine
    engine.cleanup()


@pytest.fixture
def swarm(docker: Engine) -> Engine:
    """The session's dockerd as a one-node Swarm manager on loopback (a test may leave it)."""
    if docker.docker("info", "-f", "{{.Swarm.LocalNodeState}}") != "active":
        docker.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    return docker


class SocketProxy:
    """TCP on 127.0.0.1 to the Engine's Unix socket, that can be cut and restored."""

    def __init__(self, socket_path: str) -> None:
        self.path = socket_path
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.pipes):
            w.transport.abort()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_unix_connection(self.path)
        self.pipes.update((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.transport.abort()
                self.pipes.discard(w)
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


# -- the router under test ---------------------------------------------------------------------
def provider_config(engine: Engine, **docker: Any) -> dict[str, Any]:
    """A router configuration with no apps and the Docker provider on ``engine``."""
    return {"domain": "example.test", "apps": {},
            "providers": {"docker": {"endpoint": engine.endpoint, "swarm": False, **docker}}}


class Admin:
    """The admin API of a router process."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.s = session
        self.base = f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        typed = {"Content-Type": "application/json"} if data is not None else {}
        async with self.s.request(method, self.base + "/api/v1" + path, data=data,
                                  headers=typed) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = await self.call(method, path, body)
        assert status in (200, 201), (method, path, status, out)
        return out

    async def app(self, name: str) -> dict[str, Any] | None:
        status, out = await self.call("GET", f"/apps/{name}")
        return out if status == 200 else None

    async def metrics(self) -> dict[str, float]:
        async with self.s.get(self.base + "/metrics") as r:
            return parse_metrics(await r.text())

    async def until(self, what: str, check: Any, timeout: float = 20.0) -> Any:
        """Poll ``check()`` (async) until it returns something true; its result."""
        return await until(check, timeout, what, interval=0.05)

    async def services(self, app: str) -> dict[str, tuple[int, list[str]]]:
        """{service: (weight, backends)} of ``app``; {} while it does not exist."""
        a = await self.app(app)
        if a is None:
            return {}
        return {n: (s["weight"], sorted(s["backends"])) for n, s in a["services"].items()}


LABEL = {"aliyun.routing.port_80": "shop;http://shop.test/api"}
HOST = "shop.example.test"  # the label's "shop" under the domain of provider_config


async def get(s: aiohttp.ClientSession, url: str, host: str = HOST) -> tuple[int, str]:
    async with s.get(url, headers={"Host": host}) as r:
        return r.status, await r.text()


def routed(admin: Admin, app: str, expected: dict[str, tuple[int, list[str]]]) -> Any:
    """A check for ``Admin.until``: ``app``'s {service: (weight, backends)} is ``expected``."""
    async def check() -> Any:
        services = await admin.services(app)
        return services if services == expected else None
    return check


async def awaiting(admin: Admin, app: str = "shop") -> bool:
    a = await admin.app(app)
    return bool(a and a["release"] and a["release"]["status"] == "awaiting_confirmation")


async def release_with_removal(admin: Admin, old: str, new: str) -> dict[str, Any]:
    """The seed's release, once the new version is ready: its weight to 100, then the old one's
    to 0 (traffic flowing between the steps), then confirm, removing the old containers."""
    await admin.until("the release ready", lambda: awaiting(admin))
    await admin.ok("PUT", "/apps/shop/weights", {new: 100})
    await asyncio.sleep(0.5)
    await admin.ok("PUT", "/apps/shop/weights", {old: 0})
    await asyncio.sleep(0.5)
    app = await admin.ok("POST", "/apps/shop/release/confirm", {"remove": True})
    assert {n: x["weight"] for n, x in app["services"].items()} == {new: 100}
    assert app["release"] is None
    return app


async def next_version(docker: Engine, admin: Admin, load: Any = None,
                       ) -> tuple[Container, Container]:
    """web routed alone (then ``load`` started), then web-v2 started: its release open at
    weight 0."""
    web = docker.run("shop-web-1", "shop", "web", LABEL, published=True)
    await admin.until("web routed", routed(admin, "shop", {"web": (100, [web.addr])}))
    if load is not None:
        load.start()
        await asyncio.sleep(0.3)
    v2 = docker.run("shop-web-v2-1", "shop", "web-v2", LABEL, published=True)
    await admin.until("the new version at weight 0", routed(
        admin, "shop", {"web": (100, [web.addr]), "web-v2": (0, [v2.addr])}))
    return web, v2


def no_retries(m: dict[str, float]) -> None:
    """No request of app shop met a failing backend, not even one that a retry then saved."""
    assert metric_sum(m, "router_retries_total", app="shop") == 0
    assert metric_sum(m, "router_upstream_errors_total", app="shop") == 0


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's series whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        if key.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total
