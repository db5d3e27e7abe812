"""``routerctl`` against a real ``router serve`` process with real backends on loopback.

Every command runs as its own subprocess (``python -m admin.ctl``) and is judged by its exit
code, its output, and what the admin API says afterwards. The subprocesses are awaited, never
run blocking: the backends live in this test's event loop and must keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import yaml

from tests.conftest import ROOT, Backend, RouterProcess, answering, app_config, free_port, get, terminate

CTL_TIMEOUT = 30.0


@dataclass
class Result:
    rc: int
    out: str
    err: str


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ROUTER_URL", "ROUTER_TOKEN", "ROUTER_ADMIN_TOKEN")}
    env.update(extra)
    return env


async def ctl(url: str | None, *args: str, env: dict[str, str] | None = None,
              timeout: float = CTL_TIMEOUT) -> Result:
    cmd = [sys.executable, "-m", "admin.ctl"]
    if url is not None:
        cmd += ["--url", url]
    proc = await asyncio.create_subprocess_exec(
        *cmd, *args, cwd=ROOT, env=env if env is not None else _env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"routerctl {' '.join(args)} did not finish in {timeout}s")
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def api(rp_url: str, path: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.get(rp_url + path, headers=headers) as r:
            return r.status, await r.json(), {k.lower(): v for k, v in r.headers.items()}


async def app_state(rp: RouterProcess, app: str = "shop") -> dict[str, Any]:
    status, body, _ = await api(rp.admin_url, f"/api/v1/apps/{app}")
    assert status == 200, body
    return body


async def global_generation(rp: RouterProcess) -> int:
    _, _, headers = await api(rp.admin_url, "/api/v1/apps")
    return int(headers["etag"].strip('"'))


def row(out: str, first: str) -> list[str]:
    """The table row whose first column is ``first``, split into columns."""
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0] == first:
            return cols
    raise AssertionError(f"no row {first!r} in:\n{out}")


@pytest.fixture
async def shop(backend: Callable[[str], Awaitable[Backend]],
               router_process: Callable[[dict[str, Any]], Awaitable[RouterProcess]],
               ) -> tuple[RouterProcess, Backend, Backend]:
    """A router with app ``shop``: service ``web`` (blue, weight 100); green is free for a
    release."""
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"apps": {"shop": app_config(
        {"web": (100, [blue.addr])}, routes=["shop.test"])}})
    return rp, blue, green


async def test_apps_table_and_json(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, blue, _ = shop
    r = await ctl(rp.admin_url, "apps")
    assert r.rc == 0, r.err
    assert row(r.out, "APP") == ["APP", "ROUTES", "STICKY", "SERVICES", "RELEASE", "GENERATION"]
    app = await app_state(rp)
    assert row(r.out, "shop") == ["shop", "shop.test", "on", "web=100", "-", str(app["generation"])]

    r = await ctl(rp.admin_url, "--json", "apps")
    assert r.rc == 0, r.err
    _, body, _ = await api(rp.admin_url, "/api/v1/apps")
    assert json.loads(r.out) == body

    # Global options are also accepted after the command.
    r = await ctl(rp.admin_url, "show", "shop", "--json")
    assert r.rc == 0, r.err
    assert json.loads(r.out) == await app_state(rp)

    r = await ctl(rp.admin_url, "show", "shop")
    assert r.rc == 0, r.err
    assert row(r.out, "routes:") == ["routes:", "shop.test"]
    assert row(r.out, "sticky:") == ["sticky:", "on"]
    assert row(r.out, "SERVICE") == ["SERVICE", "WEIGHT", "SHARE", "BACKENDS", "HEALTHY"]
    # No request yet, no health check: nothing has shown that blue works.
    assert row(r.out, "web") == ["web", "100", "100%", blue.addr, "0/1", "(1", "unchecked)"]
    assert row(r.out, "BACKEND") == ["BACKEND", "SERVICE", "STATE", "REASON"]
    assert row(r.out, blue.addr) == [blue.addr, "web", "unchecked", "-"]
    assert "release: -" in r.out
    async with aiohttp.ClientSession() as s:
        assert (await get(s, rp, host="shop.test"))[0] == 200
    r = await ctl(rp.admin_url, "show", "shop")
    assert row(r.out, "web") == ["web", "100", "100%", blue.addr, "1/1"]
    assert row(r.out, blue.addr) == [blue.addr, "web", "healthy", "-"]


async def test_weights_in_one_step(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, green = shop
    await ctl_ok(rp, "release", "start", "shop", "web-v2", "--backend", green.addr, "--wait",
                 "--wait-timeout", "20")
    before = await app_state(rp)
    gen_before = await global_generation(rp)

    r = await ctl(rp.admin_url, "weights", "shop", "web=25", "web-v2=75")
    assert r.rc == 0, r.err
    assert row(r.out, "web")[:3] == ["web", "25", "25%"]
    assert row(r.out, "web-v2")[:3] == ["web-v2", "75", "75%"]
    after = await app_state(rp)
    assert {n: s["weight"] for n, s in after["services"].items()} == {"web": 25, "web-v2": 75}
    assert await global_generation(rp) == gen_before + 1
    assert after["generation"] == before["generation"] + 1 == gen_before + 1

    r = await ctl(rp.admin_url, "show", "shop")
    assert row(r.out, "web")[:3] == ["web", "25", "25%"]
    assert row(r.out, "web-v2")[:3] == ["web-v2", "75", "75%"]


async def test_weights_errors(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, _ = shop
    gen = await global_generation(rp)

    # Refused locally: exit 2, nothing sent.
    for bad in (["web=abc"], ["web=1.5"], ["web"], ["=5"], ["web=5", "web=6"]):
        r = await ctl(rp.admin_url, "weights", "shop", *bad)
        assert r.rc == 2, (bad, r)
        assert r.err.startswith("routerctl: weights:"), r.err
        assert r.out == ""
    r = await ctl(rp.admin_url, "weights", "shop")
    assert r.rc == 2
    assert await global_generation(rp) == gen

    # Refused by the server: its message passes through.
    r = await ctl(rp.admin_url, "weights", "shop", "nope=5")
    assert r.rc == 1
    assert r.err.strip() == ("routerctl: 404 not_found: app 'shop' has no service 'nope' "
                             "(field: service)")
    r = await ctl(rp.admin_url, "weights", "shop", "web=101")
    assert r.rc == 1
    assert r.err.strip() == ("routerctl: 422 invalid: must be an integer 0..100 (got 101) "
                             "(field: web)")
    r = await ctl(rp.admin_url, "weights", "nosuch", "web=5")
    assert r.rc == 1 and "404 not_found: no app 'nosuch'" in r.err
    assert await global_generation(rp) == gen
    assert (await app_state(rp))["services"]["web"]["weight"] == 100


async def test_if_match(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, _ = shop
    gen = (await app_state(rp))["generation"]
    r = await ctl(rp.admin_url, "--if-match", str(gen + 5), "weights", "shop", "web=50")
    assert r.rc == 1
    assert r.err.startswith("routerctl: 412 precondition_failed: stale If-Match"), r.err
    r = await ctl(rp.admin_url, "--if-match", str(gen), "weights", "shop", "web=50")
    assert r.rc == 0, r.err
    assert (await app_state(rp))["services"]["web"]["weight"] == 50


async def test_sticky(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, _ = shop
    r = await ctl(rp.admin_url, "sticky", "shop", "off")
    assert r.rc == 0, r.err
    assert r.out.startswith("shop: session_sticky off")
    assert (await app_state(rp))["session_sticky"] is False
    r = await ctl(rp.admin_url, "--json", "sticky", "shop", "on")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["session_sticky"] is True
    assert (await app_state(rp))["session_sticky"] is True
    r = await ctl(rp.admin_url, "sticky", "shop", "maybe")
    assert r.rc == 2


async def ctl_ok(rp: RouterProcess, *args: str) -> Result:
    r = await ctl(rp.admin_url, *args)
    assert r.rc == 0, f"routerctl {' '.join(args)}: rc {r.rc}\n{r.out}\n{r.err}"
    return r


async def test_release_wait_confirm(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, blue, green = shop
    r = await ctl(rp.admin_url, "release", "status", "shop")
    assert r.rc == 1 and r.out.strip() == "shop: no open release"
    r = await ctl(rp.admin_url, "--json", "release", "status", "shop")
    assert r.rc == 1 and json.loads(r.out) is None

    # No health check: ready once a TCP connect to every new backend succeeds.
    r = await ctl_ok(rp, "release", "start", "shop", "web-v2", "--backend", green.addr,
                     "--wait", "--wait-timeout", "20")
    assert "awaiting_confirmation: 1/1 backends healthy" in r.err
    assert row(r.out, "STATUS") == ["STATUS", "awaiting_confirmation"]
    assert row(r.out, "NEW") == ["NEW", "web-v2"]

    app = await app_state(rp)
    assert app["release"]["status"] == "awaiting_confirmation"
    assert app["services"]["web-v2"]["weight"] == 0

    r = await ctl_ok(rp, "release", "status", "shop")
    assert row(r.out, "STATUS") == ["STATUS", "awaiting_confirmation"]
    assert row(r.out, "OLD") == ["OLD", "web"]
    r = await ctl_ok(rp, "--json", "release", "status", "shop")
    _, body, _ = await api(rp.admin_url, "/api/v1/apps/shop/release")
    assert json.loads(r.out) == body

    r = await ctl_ok(rp, "apps")
    assert row(r.out, "shop")[3:5] == ["web=100,web-v2=0", "awaiting_confirmation"]

    # A second release is the server's 409.
    r = await ctl(rp.admin_url, "release", "start", "shop", "web-v3", "--backend", blue.addr)
    assert r.rc == 1 and r.err.startswith("routerctl: 409 conflict:"), r.err

    # The new service has weight 0: confirming is refused by the server, nothing changes.
    gen = await global_generation(rp)
    r = await ctl(rp.admin_url, "release", "confirm", "shop")
    assert r.rc == 1
    assert r.err.strip() == (
        "routerctl: 409 conflict: service 'web-v2' has weight 0: confirming would leave 'shop' "
        "with no traffic; move weight first or confirm with --force (field: weight)")
    assert await global_generation(rp) == gen

    r = await ctl_ok(rp, "release", "confirm", "shop", "--force")
    assert r.out.startswith("shop: release confirmed")
    assert row(r.out, "web-v2")[:3] == ["web-v2", "100", "100%"]
    app = await app_state(rp)
    assert list(app["services"]) == ["web-v2"]
    assert app["services"]["web-v2"]["weight"] == 100
    assert app["release"] is None

    r = await ctl(rp.admin_url, "release", "confirm", "shop")
    assert r.rc == 1 and "404 not_found: app 'shop' has no open release" in r.err


async def test_release_with_health_path_and_rollback(
        shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, green = shop
    r = await ctl_ok(rp, "--json", "release", "start", "shop", "web-v2", "--backend", green.addr,
                     "--health-path", "/healthz", "--health-interval", "0.2s", "--wait",
                     "--wait-timeout", "20")
    assert json.loads(r.out)["status"] == "awaiting_confirmation"
    assert green.seen and any(s["path"] == "/healthz" for s in green.seen)
    app = await app_state(rp)
    assert app["services"]["web-v2"]["health_check"]["path"] == "/healthz"

    await ctl_ok(rp, "weights", "shop", "web=50", "web-v2=50")
    r = await ctl_ok(rp, "release", "rollback", "shop")
    assert r.out.startswith("shop: release rolled back")
    app = await app_state(rp)
    assert {n: s["weight"] for n, s in app["services"].items()} == {"web": 100}
    assert app["release"] is None

    r = await ctl(rp.admin_url, "release", "rollback", "shop")
    assert r.rc == 1 and "404 not_found" in r.err


async def test_release_wait_times_out(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, _ = shop
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    r = await ctl(rp.admin_url, "release", "start", "shop", "web-v2", "--backend", dead,
                  "--wait", "--wait-timeout", "1.5")
    assert r.rc == 1
    assert 1.0 < time.monotonic() - t0 < 15
    assert "in_progress: 1/1 backends healthy (no health check; waiting for a TCP connect)" in r.err
    assert "not ready after 1.5s" in r.err
    assert (await app_state(rp))["release"]["status"] == "in_progress"

    # While in_progress the server refuses a confirm, even forced.
    r = await ctl(rp.admin_url, "release", "confirm", "shop", "--force")
    assert r.rc == 1 and r.err.startswith("routerctl: 409 conflict:"), r.err
    await ctl_ok(rp, "release", "rollback", "shop")


async def test_through_localhost_as_through_ssh_tunnel(
        shop: tuple[RouterProcess, Backend, Backend]) -> None:
    """``ssh -L 9090:localhost:9090`` and ``routerctl --url http://localhost:9090``: every
    command, with a JSON body or none, passes the listener's web-page rules (Host, JSON)."""
    rp, blue, green = shop
    url = rp.admin_url.replace("127.0.0.1", "localhost")
    for args in (("release", "start", "shop", "web-v2", "--backend", green.addr, "--wait",
                  "--wait-timeout", "20"),
                 ("weights", "shop", "web=50", "web-v2=50"),
                 ("release", "rollback", "shop"),
                 ("sticky", "shop", "off")):
        r = await ctl(url, *args)
        assert r.rc == 0, f"routerctl {' '.join(args)}: rc {r.rc}\n{r.out}\n{r.err}"
    app = await app_state(rp)
    assert {n: s["weight"] for n, s in app["services"].items()} == {"web": 100}
    assert app["release"] is None and app["session_sticky"] is False


async def test_bad_release_start(shop: tuple[RouterProcess, Backend, Backend]) -> None:
    rp, _, _ = shop
    r = await ctl(rp.admin_url, "release", "start", "shop", "web-v2")
    assert r.rc == 2 and "--backend" in r.err
    r = await ctl(rp.admin_url, "release", "start", "shop", "web-v2", "--backend", "not-an-addr")
    assert r.rc == 1 and r.err.startswith("routerctl: 422 invalid:"), r.err
    assert (await app_state(rp))["release"] is None


def _links(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith("  http")]


async def test_preview_link_reaches_the_router_and_the_header_is_set(backend, router_process):
    blue, green = await backend("blue"), await backend("green")
    cfg = {"apps": {"shop": app_config({"web": (100, [blue.addr])}, routes=["localhost"])}}
    rp = await router_process(cfg)
    await ctl_ok(rp, "release", "start", "shop", "web-v2", "--backend", green.addr, "--wait",
                 "--wait-timeout", "20")
    r = await ctl_ok(rp, "release", "preview", "shop")
    (link,) = _links(r.out)
    # The data plane's port: the link works as printed (not port 80 of the same host).
    assert link.startswith(f"http://localhost:{rp.port}/?router-preview=")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(link) as resp:
            assert (resp.status, await resp.text()) == (200, "green\n")  # web-v2, at weight 0

    # The preview header, set and removed by routerctl.
    r = await ctl_ok(rp, "preview-header", "shop", "X-Preview")
    assert r.out.startswith("shop: preview header X-Preview: <the new service> (generation")
    assert (await app_state(rp))["preview"] == {"header": "X-Preview", "value": None}
    async with aiohttp.ClientSession() as s:
        assert (await get(s, rp, host="localhost", headers={"X-Preview": "web-v2"}))[2] == b"green\n"
    r = await ctl_ok(rp, "preview-header", "shop", "X-Canary", "--value", "s3cret")
    assert (await app_state(rp))["preview"] == {"header": "X-Canary", "value": "s3cret"}
    assert "or the header: X-Canary: s3cret" in (await ctl_ok(rp, "release", "preview", "shop")).out
    await ctl_ok(rp, "preview-header", "shop", "none")
    assert (await app_state(rp))["preview"] is None
    r = await ctl(rp.admin_url, "preview-header", "shop", "Host")
    assert r.rc == 1 and "is a field the router reads or sets itself" in r.err

    # Behind a load balancer: the address clients use, from public_url (a reload takes it).
    rp.write_config({**cfg, "public_url": "https://{host}"})
    rp.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not _links((await ctl_ok(rp, "release", "preview", "shop")).out)[0].startswith(
            "https://localhost/?router-preview="):
        assert time.monotonic() < deadline, "the reload did not change the link"
        await asyncio.sleep(0.1)
    assert "reload of" in rp.log() and "public_url none -> https://{host}" in rp.log()


async def test_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = await ctl(url, "apps")
    assert r.rc == 3
    assert r.err.startswith(f"routerctl: cannot reach the admin API at {url}:"), r.err
    r = await ctl(None, "apps", env=_env(ROUTER_URL=url))
    assert r.rc == 3 and url in r.err
    r = await ctl("ftp://example", "apps")
    assert r.rc == 2


async def test_command_line() -> None:
    """Usage errors exit 2 before anything is sent; ``--help`` exits 0."""
    url = f"http://127.0.0.1:{free_port()}"  # would be exit 3 if anything were sent
    r = await ctl(url, "--help")
    assert r.rc == 0 and "weights" in r.out and "release" in r.out
    for args in ([], ["release"], ["nope"], ["show"], ["--timeout", "0", "apps"],
                 ["--if-match", "x", "apps"], ["release", "start", "shop", "v2"]):
        r = await ctl(url, *args)
        assert r.rc == 2, (args, r)
    if shutil.which("routerctl"):  # the console script of pyproject.toml, once installed
        proc = await asyncio.create_subprocess_exec(
            "routerctl", "--url", url, "apps", env=_env(), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), CTL_TIMEOUT)
        assert proc.returncode == 3 and url in err.decode()


@pytest.fixture
async def token_router(tmp_path: Any, backend: Callable[[str], Awaitable[Backend]]
                       ) -> AsyncIterator[tuple[str, str]]:
    """``router serve`` with ``admin.token_file``: the conftest fixture rewrites the admin
    block, so this one writes its own configuration. Yields (admin URL, token)."""
    blue = await backend("blue")
    d = tmp_path / "token-router"
    d.mkdir()
    token = "s3cret-token-for-ctl"
    (d / "token").write_text(token + "\n")
    admin_port = free_port()
    cfg = {"listen": f"127.0.0.1:{free_port()}",
           "admin": {"listen": f"127.0.0.1:{admin_port}", "token_file": str(d / "token")},
           "timeouts": {"grace": "1s"},
           "apps": {"shop": app_config({"web": (100, [blue.addr])}, routes=["shop.test"])}}
    (d / "router.yaml").write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{admin_port}"
    with open(d / "router.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config",
                                 str(d / "router.yaml")], cwd=ROOT, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        await answering(url + "/readyz", proc, str(d / "router.log"), 15)
        yield url, token
    finally:
        terminate(proc, 15)


async def test_token(token_router: tuple[str, str]) -> None:
    url, token = token_router
    r = await ctl(url, "apps")
    assert r.rc == 1
    assert r.err.strip() == ("routerctl: 401 unauthorized: missing bearer token "
                             "(field: Authorization)")
    r = await ctl(url, "--token", "wrong", "sticky", "shop", "off")
    assert r.rc == 1 and "401 unauthorized" in r.err
    _, body, _ = await api(url, "/api/v1/apps/shop", token)
    assert body["session_sticky"] is True

    r = await ctl(url, "--token", token, "apps")
    assert r.rc == 0, r.err
    assert row(r.out, "shop")[3] == "web=100"
    r = await ctl(None, "sticky", "shop", "off", env=_env(ROUTER_URL=url, ROUTER_TOKEN=token))
    assert r.rc == 0, r.err
    _, body, _ = await api(url, "/api/v1/apps/shop", token)
    assert body["session_sticky"] is False
