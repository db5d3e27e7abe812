"""`routerctl apply`, `export`, and the commands that change apps, against the real `router
serve` process: dry runs, refusals without --force, If-Match, the export | apply round trip."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import yaml

from tests.conftest import ROOT, Backend, RouterProcess, app_config
from tests.integration.test_ctl import _env, app_state, ctl, global_generation, row

async def ok(rp: RouterProcess, *args: str):
    r = await ctl(rp.admin_url, *args)
    assert r.rc == 0, f"routerctl {' '.join(args)}: rc {r.rc}\n{r.out}\n{r.err}"
    return r


async def history(rp: RouterProcess) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(rp.admin_url + "/api/v1/history") as r:
            return (await r.json())["history"]


def write(path: str, apps: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump({"apps": apps}, f)
    return path


async def shop(backend, router_process) -> tuple[RouterProcess, Backend, Backend]:
    blue, green = await backend("blue"), await backend("green")
    rp = await router_process({"timeouts": {"grace": "1s"}, "apps": {
        "shop": app_config({"web": (100, [blue.addr])}, routes=["shop.test"])}})
    return rp, blue, green


async def test_apply_dry_run_then_apply(backend, router_process, tmp_path):
    rp, blue, green = await shop(backend, router_process)
    path = write(str(tmp_path / "new.yaml"), {
        "shop": app_config({"web": (50, [blue.addr]), "web-v2": (50, [green.addr])},
                           routes=["shop.test"]),
        "cart": app_config({"web": (100, [green.addr])}, routes=["cart.test"], sticky=False)})
    changes = [
        f"  shop: service web-v2 added (weight 50; backends {green.addr})",
        "  shop: weights web 100->50",
        "  cart: app added (routes cart.test; session_sticky off; drain_timeout none)",
        f"  cart: service web added (weight 100; backends {green.addr})"]
    r = await ok(rp, "apply", path, "--dry-run")
    assert r.out.splitlines() == [
        f"{path}: would change generation 1 (dry run: nothing applied)", *changes]
    assert await global_generation(rp) == 1 and len(await history(rp)) == 1

    r = await ok(rp, "apply", path)
    assert r.out.splitlines() == [f"{path}: applied (generation 2)", *changes]
    entry = (await history(rp))[0]
    assert (entry["generation"], entry["operation"], entry["apps"], entry["client"]) == (
        2, "apply", ["shop", "cart"], "127.0.0.1")
    assert ["  " + c for c in entry["changes"]] == changes
    assert "generation 2: apply of shop, cart by 127.0.0.1: shop: service web-v2 added" in rp.log()

    # The same file again: nothing to do, no new generation.
    r = await ok(rp, "apply", path)
    assert r.out.strip() == f"{path}: no changes (generation 2)"
    r = await ok(rp, "--json", "apply", path, "--dry-run")
    assert json.loads(r.out) == {"dry_run": True, "generation": 2, "apps": [], "changes": [],
                                 "refused": None}
    assert await global_generation(rp) == 2


async def test_apply_refuses_to_close_a_release_without_force(backend, router_process, tmp_path):
    rp, blue, green = await shop(backend, router_process)
    await ok(rp, "release", "start", "shop", "web-v2", "--backend", green.addr, "--wait",
             "--wait-timeout", "20")
    await ok(rp, "weights", "shop", "web=0", "web-v2=100")
    gen = await global_generation(rp)
    path = write(str(tmp_path / "old.yaml"), {
        "shop": app_config({"web": (100, [blue.addr])}, routes=["shop.test"])})
    # In routerctl's terms: the option to add, not the API's field.
    refusal = ("apply closes the open release of 'shop': the file has no service 'web-v2'; "
               "add --force to do it anyway")
    r = await ctl(rp.admin_url, "apply", path)
    assert r.rc == 1 and r.err.strip() == f"routerctl: 409 conflict: {refusal}"
    app = await app_state(rp)
    assert app["release"]["status"] == "awaiting_confirmation" and await global_generation(rp) == gen

    # A dry run says what the apply would refuse, and exits 4: a CI job stops there.
    r = await ctl(rp.admin_url, "apply", path, "--dry-run")
    assert r.rc == 4 and r.out.splitlines() == [
        f"{path}: would change generation {gen} (dry run: nothing applied)",
        "  shop: service web-v2 deleted", "  shop: weights web 0->100",
        "  shop: release of web-v2 rolled back (web-v2 deleted)",
        f"refused without --force: {refusal}"]
    r = await ok(rp, "apply", path, "--dry-run", "--force")
    assert "refused" not in r.out
    r = await ok(rp, "apply", path, "--force")
    assert r.out.splitlines()[0] == f"{path}: applied (generation {gen + 1})"
    app = await app_state(rp)
    assert app["release"] is None and list(app["services"]) == ["web"]

    # Deleting the whole app closes its release too.
    await ok(rp, "release", "start", "shop", "web-v3", "--backend", green.addr)
    r = await ctl(rp.admin_url, "apply", write(str(tmp_path / "none.yaml"), {}))
    assert r.rc == 1 and "apply deletes app 'shop', closing its open release of 'web-v3'" in r.err


async def test_apply_refuses_to_delete_a_service_clients_are_pinned_to(backend, router_process,
                                                                       tmp_path):
    rp, blue, green = await shop(backend, router_process)
    await ok(rp, "service", "set", "shop", "web-v2", "--backend", green.addr)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(rp.url + "/", headers={"Host": "shop.test"}) as r:
            assert await r.text() == "blue\n"  # pinned to web
        await ok(rp, "weights", "shop", "web=0", "web-v2=100")
        async with client.get(rp.url + "/", headers={"Host": "shop.test"}) as r:
            assert await r.text() == "blue\n"  # drained: still pinned
    path = write(str(tmp_path / "v2.yaml"), {
        "shop": app_config({"web-v2": (100, [green.addr])}, routes=["shop.test"])})
    r = await ctl(rp.admin_url, "apply", path)
    assert r.rc == 1 and ("apply deletes service 'web' of 'shop', which clients are still pinned "
                          "to (recent requests by cookie)") in r.err
    assert list((await app_state(rp))["services"]) == ["web", "web-v2"]
    await ok(rp, "apply", path, "--force")
    assert list((await app_state(rp))["services"]) == ["web-v2"]


async def test_apply_refuses_to_delete_a_weighted_service_clients_are_pinned_to(
        backend, router_process, tmp_path):
    """Pinned is pinned at any weight: the file that deletes the version serving every client
    (weight 100, clients holding its cookie) is refused as a drained one is."""
    rp, blue, green = await shop(backend, router_process)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        for _ in range(2):  # the cookie, then a request routed by it
            async with client.get(rp.url + "/", headers={"Host": "shop.test"}) as r:
                assert await r.text() == "blue\n"
    path = write(str(tmp_path / "v2.yaml"), {
        "shop": app_config({"web-v2": (100, [green.addr])}, routes=["shop.test"])})
    refusal = ("apply deletes service 'web' of 'shop', which clients are still pinned to (recent "
               "requests by cookie); add --force to do it anyway")
    r = await ctl(rp.admin_url, "apply", path, "--dry-run")
    assert r.rc == 4 and r.out.splitlines()[-1] == f"refused without --force: {refusal}"
    r = await ctl(rp.admin_url, "apply", path)
    assert r.rc == 1 and r.err.strip() == f"routerctl: 409 conflict: {refusal}"
    assert list((await app_state(rp))["services"]) == ["web"]
    await ok(rp, "apply", path, "--force")
    assert list((await app_state(rp))["services"]) == ["web-v2"]


async def test_apply_if_match_and_bad_files(backend, router_process, tmp_path):
    rp, blue, _ = await shop(backend, router_process)
    path = write(str(tmp_path / "a.yaml"), {
        "shop": app_config({"web": (10, [blue.addr])}, routes=["shop.test"])})
    await ok(rp, "sticky", "shop", "off")  # generation 2: a dry run at 1 is stale now
    r = await ctl(rp.admin_url, "--if-match", "1", "apply", path)
    assert r.rc == 1 and "412 precondition_failed: stale If-Match: 1 is not the current " \
                         "generation 2" in r.err
    await ok(rp, "--if-match", "2", "apply", path)

    bad = tmp_path / "bad.yaml"
    bad.write_text("apps:\n  shop:\n    routes: [shop.test]\n    services:\n"
                   "      web: {weight: 101, backends: []}\n")
    r = await ctl(rp.admin_url, "apply", str(bad))
    assert r.rc == 1 and r.err.strip() == ("routerctl: 422 invalid: must be an integer 0..100 "
                                           "(got 101) (field: apps.shop.services.web.weight)")
    bad.write_text("apps: {shop: [\n")
    r = await ctl(rp.admin_url, "apply", str(bad))
    assert r.rc == 2 and r.err.startswith(f"routerctl: {bad}: invalid YAML at line 2")
    bad.write_text("listen: 0.0.0.0:8080\n")
    r = await ctl(rp.admin_url, "apply", str(bad))
    assert r.rc == 2 and "no apps section: nothing to apply" in r.err
    r = await ctl(rp.admin_url, "apply", str(tmp_path / "missing.yaml"))
    assert r.rc == 2 and "cannot read configuration file" in r.err
    assert await global_generation(rp) == 3


async def test_export_apply_round_trip(backend, router_process, tmp_path):
    rp, blue, green = await shop(backend, router_process)
    await ok(rp, "create", "cart", "--route", "cart.test", "--route", "example.test/cart",
             "--backend", blue.addr, "--backend", green.addr, "--sticky", "off",
             "--drain-timeout", "90s", "--health-path", "/healthz", "--health-interval", "250ms")
    await ok(rp, "release", "start", "shop", "web-v2", "--backend", green.addr, "--wait",
             "--wait-timeout", "20")
    await ok(rp, "weights", "shop", "web=30", "web-v2=70")
    gen = await global_generation(rp)
    r = await ok(rp, "export")
    assert r.out.splitlines()[0] == (f"# The apps of the router at {rp.admin_url}, generation "
                                     f"{gen}. `routerctl apply FILE` makes")
    assert yaml.safe_load(r.out) == {"apps": {
        "shop": {"routes": ["shop.test"], "session_sticky": True, "services": {
            "web": {"weight": 30, "backends": [blue.addr]},
            "web-v2": {"weight": 70, "backends": [green.addr]}}},
        "cart": {"routes": ["cart.test", "example.test/cart"], "session_sticky": False,
                 "drain_timeout": "90s", "services": {"web": {
                     "weight": 100, "backends": [blue.addr, green.addr], "health_check": {
                         "path": "/healthz", "interval": "250ms", "timeout": "1s", "rise": 2,
                         "fall": 3}}}}}}
    path = tmp_path / "exported.yaml"
    path.write_text(r.out)
    r = await ok(rp, "apply", str(path))
    assert r.out.strip() == f"{path}: no changes (generation {gen})"
    # Through a pipe, as `routerctl export | routerctl apply --dry-run` (or `apply -`).
    cmd = f"{sys.executable} -m admin.ctl --url {rp.admin_url}"
    for dash in ("", " -"):
        proc = await asyncio.create_subprocess_shell(
            f"{cmd} export | {cmd} apply{dash} --dry-run", cwd=ROOT, env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert out.decode().strip() == (f"<stdin>: no changes against generation {gen} "
                                        "(dry run: nothing applied)")
    # A reader that stops reading (`| head -1`) is not an error: no traceback, exit 0.
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first byte is written
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.ctl", "--url", rp.admin_url, "export", cwd=ROOT,
        env=_env(), stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
        stderr=asyncio.subprocess.PIPE)
    os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, err.decode()) == (0, "")
    assert await global_generation(rp) == gen
    assert (await app_state(rp))["release"]["status"] == "awaiting_confirmation"
    r = await ok(rp, "export", "cart")
    assert list(yaml.safe_load(r.out)["apps"]) == ["cart"]
    r = await ctl(rp.admin_url, "export", "nope")
    assert r.rc == 1 and "export: no app 'nope' (apps: shop, cart)" in r.err


async def test_app_and_service_commands(backend, router_process):
    rp, blue, green = await shop(backend, router_process)
    r = await ok(rp, "create", "blog", "--route", "blog.test", "--backend", blue.addr)
    assert r.out.splitlines()[0] == "blog: created (generation 2)"
    # A new app's backend: nothing has shown yet that it works there.
    assert row(r.out, "web") == ["web", "100", "100%", blue.addr, "0/1", "(1", "unchecked)"]
    r = await ctl(rp.admin_url, "create", "blog", "--route", "blog2.test", "--backend", blue.addr)
    assert r.rc == 1 and r.err.strip() == "routerctl: create: app blog exists (routerctl show blog)"

    r = await ok(rp, "service", "set", "blog", "v2", "--backend", green.addr)
    assert r.out.splitlines()[0] == "blog: service v2 added (generation 3)"
    assert row(r.out, "v2")[:3] == ["v2", "0", "0%"]  # a new service gets no traffic
    r = await ok(rp, "service", "set", "blog", "v2", "--weight", "40", "--health-path", "/healthz")
    svc = (await app_state(rp, "blog"))["services"]["v2"]
    assert (svc["weight"], svc["backends"], svc["health_check"]["path"]) == (40, [green.addr],
                                                                              "/healthz")
    await ok(rp, "service", "set", "blog", "v2", "--health-interval", "5s")
    svc = (await app_state(rp, "blog"))["services"]["v2"]
    assert (svc["health_check"]["path"], svc["health_check"]["interval"]) == ("/healthz", 5.0)
    await ok(rp, "service", "set", "blog", "v2", "--no-health-check")
    assert (await app_state(rp, "blog"))["services"]["v2"]["health_check"] is None
    r = await ctl(rp.admin_url, "service", "set", "blog", "v3")
    assert r.rc == 2 and "v3 is a new service of blog: give its --backend" in r.err
    r = await ok(rp, "service", "delete", "blog", "v2")
    assert r.out.strip() == "blog: service v2 deleted"

    r = await ok(rp, "routes", "blog", "blog.test", "www.blog.test/x")
    assert r.out.strip().startswith("blog: routes blog.test,www.blog.test/x (generation")
    r = await ok(rp, "drain-timeout", "blog", "10m")
    assert r.out.strip().startswith("blog: drain_timeout 10m (generation")
    r = await ok(rp, "drain-timeout", "blog", "none")
    assert r.out.strip().startswith("blog: drain_timeout - (generation")
    r = await ctl(rp.admin_url, "drain-timeout", "blog", "soon")
    assert r.rc == 1 and "422 invalid" in r.err and "drain_timeout" in r.err
    r = await ok(rp, "show", "blog")
    assert row(r.out, "routes:") == ["routes:", "blog.test,www.blog.test/x"]

    r = await ok(rp, "delete", "blog")
    assert r.out.strip() == "blog: deleted"
    r = await ctl(rp.admin_url, "delete", "blog")
    assert r.rc == 1 and "404 not_found: no app 'blog'" in r.err
    ops = [e["operation"] for e in await history(rp)]
    assert ops == ["delete_app", "patch_app", "patch_app", "patch_app", "delete_service",
                   "put_service", "put_service", "put_service", "put_service", "put_app", "seed"]


async def test_versions():
    for cmd in (["admin.ctl"], ["router.cli"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *cmd, "--version", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        name = "routerctl" if cmd == ["admin.ctl"] else "router"
        assert proc.returncode == 0 and out.decode().strip() == f"{name} 0.1.0"
