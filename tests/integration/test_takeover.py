"""A takeover that fails leaves the old router serving (docs/upgrade.md, "Failures").

The successor is either a real ``router serve --takeover`` (a bad configuration, other
addresses, another store, a second one) or this test speaking the protocol itself through
``router.process.handoff.Takeover``, which lets it stop at every step and vanish there, as a successor
that crashes would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from router.process.handoff import PROTOCOL, Takeover
from router.process.ipc import Channel
from tests.integration.test_etcd import etcd  # noqa: F401  (a fixture)
from tests.processes import ROOT, until
from tests.reliability import lifecycle as T
from tests.reliability.harness import metric_sum, metrics
from tests.reliability.production import admin_call


@pytest.fixture
async def old(request):
    """A running router (one process, or ``--workers`` the test's parameter) with its backend,
    on a state directory of its own."""
    seen: Counter[bytes] = Counter()
    backend = await T.echo_backend(seen)
    routers = T.Routers(f"127.0.0.1:{backend.sockets[0].getsockname()[1]}",
                        getattr(request, "param", 1))
    await routers.start()
    yield routers
    routers.cleanup()
    backend.close()


def _store(routers: T.Routers) -> str:
    return os.path.join(routers.dir, "router-state.yaml")


def _handoff(routers: T.Routers) -> str:
    return os.path.join(routers.dir, "handoff.sock")


async def _serves(routers: T.Routers) -> None:
    """The router answers on a new connection, and takes an admin change (it holds its store)."""
    status, _ = await T.sticky_probe(routers.port)
    assert status == "200"
    status, body, _ = await admin_call(routers.admin_port, "PUT", "/api/v1/apps/shop/weights",
                                       b'{"blue": 30, "green": 70}')
    assert status == 200, body


async def _until_logged(routers: T.Routers, text: str, timeout: float = 10.0) -> None:
    assert routers.live is not None
    live = routers.live
    await until(lambda: text in live.log(), timeout, f"{text!r} in the log:\n{live.log()[-2000:]}")


async def _release(routers: T.Routers, addr: str) -> None:
    """A release of the app's new version "teal" at ``addr``."""
    status, body, _ = await admin_call(routers.admin_port, "POST", "/api/v1/apps/shop/release",
                                       b'{"service": "teal", "backends": ["%s"]}' % addr.encode())
    assert status == 201, body


def _successor(routers: T.Routers, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", "serve", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


async def _run(routers: T.Routers, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: _successor(routers, *args))


async def test_bad_configuration_is_refused_and_told_to_the_old_router(old):
    bad = os.path.join(old.dir, "router-bad.yaml")
    with open(bad, "w") as f:
        f.write("listen: 127.0.0.1:1\ntimeouts: {grace: soon}\n")
    done = await _run(old, "--config", bad, "--takeover")
    assert done.returncode == 2
    assert "timeouts.grace" in done.stderr
    await _until_logged(old, "could not start")
    assert "timeouts.grace" in old.live.log()
    await _serves(old)


async def test_other_addresses_are_refused(old):
    other = os.path.join(old.dir, "router-other.yaml")
    with open(old.config) as f:
        cfg = yaml.safe_load(f)
    cfg["listen"] = "127.0.0.1:1"
    with open(other, "w") as f:
        yaml.safe_dump(cfg, f)
    done = await _run(old, "--config", other, "--takeover")
    assert done.returncode == 1, done.stderr
    assert "a takeover keeps the addresses" in done.stderr
    await _until_logged(old, "a takeover keeps the addresses")
    await _serves(old)


async def test_another_store_is_refused(old):
    done = await _run(old, "--config", old.config, "--store", os.path.join(old.dir, "x.yaml"),
                      "--takeover", _handoff(old))
    assert done.returncode == 1
    assert "a takeover keeps the state where it is" in done.stderr
    await _until_logged(old, "a takeover keeps the state where it is")
    await _serves(old)


async def test_other_protocol_version_is_refused(old):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(_handoff(old))
    channel = Channel(sock)
    await channel.send({"op": "hello", "protocol": PROTOCOL + 1, "version": "9.9",
                        "pid": os.getpid(), "store": _store(old)})
    msg, fds = await channel.recv()
    channel.close()
    assert (msg["op"], fds) == ("refused", [])
    assert f"handoff protocol {PROTOCOL + 1}" in msg["reason"]
    await _until_logged(old, "refused")
    await _serves(old)


async def test_a_second_takeover_while_one_runs_is_refused(old):
    first = Takeover(_handoff(old))
    await first.connect(_store(old))  # holds the takeover at its first step
    try:
        done = await _run(old, "--config", old.config, "--takeover")
        assert done.returncode == 1
        assert "a takeover by pid" in done.stderr and "is running" in done.stderr
    finally:
        await first.abort("the test is done")
        for _, s in first.sockets:
            s.close()
    await _until_logged(old, "gave up: the test is done")
    await _serves(old)


@pytest.mark.parametrize("old", [1, 2], indirect=True, ids=lambda n: f"workers{n}")
@pytest.mark.parametrize("step", ["listeners", "released", "handing-over"])
async def test_successor_vanishing_at_each_step_leaves_the_old_router_serving(old, step):
    # A request whose body is still coming: its connection is never idle, so the old router is
    # still handing over when the successor vanishes. It is in flight (routed to the backend)
    # before the load starts, so that the gauge counts it alone.
    reader, writer = await asyncio.open_connection("127.0.0.1", old.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: app.test\r\nX-Test-Id: held\r\n"
                 b"Content-Length: 4\r\n\r\nab")

    async def held_in_flight() -> bool:
        return metric_sum(await metrics(old.admin_port), "router_inflight_requests") == 1

    await until(held_in_flight, 10, "the held request in flight")
    stop, load = asyncio.Event(), T.Load()
    clients = asyncio.ensure_future(T.run_clients(old.port, 4, stop, load, (0.0, 0.02)))
    await T.answered(load, 20)  # the clients' connections are open, and idle between requests
    successor = Takeover(_handoff(old))
    await successor.connect(_store(old))
    if step != "listeners":
        assert await successor.release() >= 1
    assert successor.channel is not None
    if step == "handing-over":
        await successor.serving()  # the old router stops accepting and hands over
        # ... the idle connections first: the successor vanishes holding one.
        msg, fds = await asyncio.wait_for(successor.channel.recv(), 10)
        assert msg["op"] == "connections" and fds, msg
        for fd in fds:
            os.close(fd)
    successor.channel.close()  # gone without a word, as in a crash
    for _, s in successor.sockets:
        s.close()
    await _until_logged(old, "this router serves on")
    writer.write(b"cd")  # the held request ends: the old router answers it
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()
    await T.answered(load, 20)
    stop.set()
    await clients
    await _serves(old)
    if step != "handing-over":
        # Nothing left the old router: not one request failed.
        assert load.failed == [] and load.closed == 0, load.failed
    else:
        # The idle connections it had handed over were lost with the successor; their clients
        # connected to the old router again, which accepts again.
        assert load.ok > 0 and load.connections > 4
        assert "takeover by pid" in old.live.log() and "failed at step connections" in old.live.log()
    assert await old.stop() == 0


async def test_sigterm_during_a_takeover_calls_it_off(old):
    successor = Takeover(_handoff(old))
    await successor.connect(_store(old))
    assert old.live is not None and successor.channel is not None
    old.live.proc.send_signal(signal.SIGTERM)
    msg, _ = await asyncio.wait_for(successor.channel.recv(), 10)
    assert msg == {"op": "abort", "reason": "the old router is stopping"}
    for _, s in successor.sockets:
        s.close()
    successor.close()
    live = old.live
    # Its exit, to the one SIGTERM (old.stop() would send another if it had not exited yet).
    code = await asyncio.get_running_loop().run_in_executor(None, live.proc.wait, 30)
    assert code == 0, live.log()[-3000:]
    assert "called off: this router is stopping" in live.log()


async def test_a_second_router_on_the_state_is_refused(old):
    other = os.path.join(old.dir, "router-other.yaml")  # other ports, the same state directory
    with open(old.config) as f:
        cfg = yaml.safe_load(f)
    cfg["listen"], cfg["admin"] = "127.0.0.1:0", {"listen": "127.0.0.1:0"}
    with open(other, "w") as f:
        yaml.safe_dump(cfg, f)
    done = await _run(old, "--config", other)
    assert done.returncode == 1
    assert "in use by another router" in done.stderr and "--takeover" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another user")
async def test_another_user_is_refused(old):
    os.chmod(old.dir, 0o755)
    os.chmod(_handoff(old), 0o666)  # the mode alone would let it in: the peer's uid does not
    code = (
        "import asyncio, os, socket\n"
        "from router.process.ipc import Channel\n"
        "async def main():\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"    s.connect({_handoff(old)!r})\n"
        "    c = Channel(s)\n"
        "    await c.send({'op': 'hello', 'protocol': 1, 'store': 'x'})\n"
        "    msg, fds = await c.recv()\n"
        "    print(msg['op'], len(fds))\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "asyncio.run(main())\n")
    done = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30))
    assert done.stdout.strip() == "refused 0", done.stderr
    await _until_logged(old, "refused a process of uid 65534")
    await _serves(old)


async def test_etcd_store_and_the_ramp_lease_go_to_the_successor(etcd):  # noqa: F811
    seen: Counter[bytes] = Counter()
    backend = await T.echo_backend(seen)
    addr = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
    routers = T.Routers(addr, 1, args=("--store", etcd.url("/takeover")))
    routers.args += ("--state-dir", routers.dir)  # the handoff socket's directory
    try:
        await routers.start()
        await _release(routers, addr)

        async def ramp_started() -> bool:  # once the release is ready
            status, _, _ = await admin_call(routers.admin_port, "POST",
                                            "/api/v1/apps/shop/release/ramp",
                                            b'{"steps": [10, 50, 100], "interval": "60s"}')
            return status == 201
        await until(ramp_started, 10, "the ramp started")

        async def driving() -> bool:
            return metric_sum(await metrics(routers.admin_port), "router_ramp_driver") == 1

        await until(driving, 10, "the router holding the lease of the ramp's driver")
        before = T.routing_state(await T.admin_get(routers.admin_port, "/api/v1/apps"))
        stop, load = asyncio.Event(), T.Load()
        clients = asyncio.ensure_future(T.run_clients(routers.port, 4, stop, load))
        await routers.takeover()
        # The old router revoked its lease as it let go of the store: the successor drives at
        # its first try (one a second), not after the lease's time to live (LEASE_TTL).
        await until(driving, 3, "the successor driving")
        stop.set()
        await clients
        assert load.failed == [] and load.closed == 0, load.failed
        assert T.routing_state(await T.admin_get(routers.admin_port, "/api/v1/apps")) == before
        status, body, _ = await admin_call(routers.admin_port, "POST",
                                           "/api/v1/apps/shop/release/ramp/abort")
        assert status == 200, body  # it writes to etcd
        assert await routers.stop() == 0
    finally:
        routers.cleanup()
        backend.close()


async def test_takeover_with_no_router_there_is_a_plain_start():
    backend = await T.echo_backend(Counter())
    routers = T.Routers(f"127.0.0.1:{backend.sockets[0].getsockname()[1]}", 1)
    try:
        routers.live = routers._spawn("--takeover")  # the same command, first or next
        await T.answering(f"http://127.0.0.1:{routers.admin_port}/readyz", routers.live.proc,
                          routers.live.log_path, 30)
        assert "no router to take over at" in routers.live.log()
        await _serves(routers)
        await routers.takeover()  # and the next one with it takes over from this one
        await _serves(routers)
        assert await routers.stop() == 0
    finally:
        routers.cleanup()
        backend.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a tmpfs to fill")
async def test_no_takeover_while_a_change_is_not_stored():
    from tests.reliability.store import DiskFull

    disk = DiskFull()
    await disk.setup()
    backend = await T.echo_backend(Counter())
    addr = f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"
    routers = T.Routers(addr, 1, args=disk.args)
    try:
        await routers.start()
        await _release(routers, addr)
        await disk.begin()  # the state disk is full: a rollback is in effect, not stored

        async def rolled_back() -> bool:
            status, body, _ = await admin_call(routers.admin_port, "POST",
                                               "/api/v1/apps/shop/release/rollback")
            assert status in (202, 409), body  # 409: not ready yet, try again
            return status == 202
        await until(rolled_back, 10, "the rollback in effect")
        done = await _run(routers, "--config", routers.config, *disk.args, "--takeover")
        assert done.returncode == 1
        assert "the store has not taken yet" in done.stderr, done.stderr
        assert routers.live is not None and "failed at step store" in routers.live.log()
        state = T.routing_state(await T.admin_get(routers.admin_port, "/api/v1/apps/shop/release"))
        assert state.get("unstored"), state  # the rollback still in effect, still waiting
        await disk.end()

        async def stored() -> bool:
            m = await metrics(routers.admin_port)
            return metric_sum(m, "router_store_pending_changes") == 0
        await until(stored, 20, "the rollback stored")
        await routers.takeover()  # now it may go
        status, body, _ = await admin_call(routers.admin_port, "GET", "/api/v1/apps/shop/release")
        assert status == 404 or b"rolled_back" in body, body
        assert await routers.stop() == 0
    finally:
        routers.cleanup()
        await disk.close()
        backend.close()
