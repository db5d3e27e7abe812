"""The Grafana dashboard and the Prometheus alert rules under deploy/, checked against a real
Prometheus (Debian package ``prometheus``): ``promtool check rules`` and ``promtool test rules``
on the rules; then a Prometheus on loopback scraping a live router (two workers, etcd store)
under load through a scenario that gives every panel and every alert something to show -- a
release whose ramp rolls back, one that pauses, one that finishes, a preview, clients pinned
to a weight-0 version, a failing version, a dead backend, and at last etcd stopped -- and every
panel's query and every rule's expression evaluated through Prometheus's HTTP API, each
returning series."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from typing import Any, AsyncIterator

import aiohttp
import pytest
import yaml

from tests.conftest import ROOT, answering, app_config, free_port, terminate, until
from tests.integration.test_admin_api import Api, _awaiting
from tests.integration.test_etcd import etcd  # noqa: F401  (a fixture)
from tests.ramp.conftest import follow_ramp

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
DEPLOY = os.path.join(ROOT, "deploy")
RULES = os.path.join(DEPLOY, "prometheus", "router-alerts.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "router-release.json")
APPS = ("shop", "cart", "api")
# Grafana's variables as a dashboard at a 1 s scrape interval would fill them in.
VARIABLES = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "1m"}

need_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Prometheus is not installed (Debian package prometheus; scripts/system-deps.sh "
           "installs it when run as root)")


def _panels() -> list[dict[str, Any]]:
    with open(DASHBOARD) as f:
        return [p for p in json.load(f)["panels"] if p["type"] != "row"]


def _rules() -> list[dict[str, Any]]:
    with open(RULES) as f:
        return [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def test_dashboard_is_a_grafana_dashboard_of_this_router() -> None:
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash["uid"] and dash["schemaVersion"] >= 36
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "app"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in _panels()}
    # What a release is watched by.
    for title in ("Requests per second per service", "Traffic share per service",
                  "Error rate per service", "Latency per service",
                  "Sticky traffic to weight-0 versions", "Preview traffic", "Ramp step",
                  "Store up", "Workers up"):
        assert title in titles
    for p in _panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert p["description"], p["title"]
    # The app's changes marked on every time series, from the router's own metric.
    (changes,) = dash["annotations"]["list"]
    assert changes["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "router_app_generation" in changes["expr"] and changes["enable"]


@need_prometheus
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", RULES], ["test", "rules", "router-alerts.test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=os.path.dirname(RULES),  # type: ignore[list-item]
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


# -- the live check ---------------------------------------------------------------------------
class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: str) -> None:
        self.url, self.proc, self.log = url, proc, log

    async def query(self, s: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with s.get(self.url + "/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body.get("status") == "success", (expr, body)
        return body["data"]["result"]

    async def points(self, s: aiohttp.ClientSession, expr: str, start: float, step: str,
                     ) -> list[list[Any]]:
        """Every point of every series of a range query from ``start`` to now."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{time.time():.3f}",
                  "step": step}
        async with s.get(self.url + "/api/v1/query_range", params=params) as r:
            body = await r.json()
        assert body.get("status") == "success", (expr, body)
        return [v for series in body["data"]["result"] for v in series["values"]]

    async def until(self, s: aiohttp.ClientSession, expr: str, timeout: float) -> None:
        await until(lambda: self.query(s, expr), timeout, f"a series for {expr!r}", 0.25)


@pytest.fixture
async def prometheus(tmp_path: Any) -> AsyncIterator[Any]:
    started: list[Prometheus] = []

    async def start(targets: list[str]) -> Prometheus:
        port = free_port()
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "rule_files": [RULES],
               "scrape_configs": [{"job_name": "router",
                                   "static_configs": [{"targets": targets}]}]}
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        log = str(tmp_path / "prometheus.log")
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"],  # type: ignore[list-item]
                stdout=f, stderr=subprocess.STDOUT)
        p = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        started.append(p)
        await answering(p.url + "/-/ready", proc, log)
        return p

    yield start
    for p in started:
        terminate(p.proc, 15)


async def _traffic(url: str, hosts: list[tuple[str, dict[str, str]]], stop: asyncio.Event,
                   cookies: bool = False) -> int:
    """Requests to each host in turn until ``stop`` (at most 60 s); the number sent."""
    sent = 0
    jar: aiohttp.abc.AbstractCookieJar = (aiohttp.CookieJar(unsafe=True) if cookies
                                          else aiohttp.DummyCookieJar())
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        while not stop.is_set() and time.monotonic() < deadline:
            for host, headers in hosts:
                try:
                    async with s.get(url, headers={"Host": host, **headers}) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass
                sent += 1
            await asyncio.sleep(0.002)  # the clients' pace
    return sent


async def _ok(api: Api, method: str, path: str, body: Any = None) -> Any:
    status, out, _ = await api.call(method, path, body)
    assert status in (200, 201), (path, status, out)
    return out


@pytest.mark.slow
@need_prometheus
async def test_every_panel_and_rule_returns_series_from_a_live_router(
        backend, flaky, router_process, prometheus, etcd):  # noqa: F811
    blue, green = await backend("blue"), await flaky("green", every=5)
    one, two = await flaky("one", every=10), await backend("two")
    v1, v2 = await backend("v1"), await backend("v2")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    # Accepts and hangs up at once: its connect check passes, every request on it fails (and
    # is retried on another backend).
    closer = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    rude = f"127.0.0.1:{closer.sockets[0].getsockname()[1]}"
    check = {"interval": "500ms", "timeout": "500ms"}
    cfg = {"apps": {
        "shop": app_config({"blue": (100, [blue.addr])}, routes=["shop.test"],
                           preview={"header": "X-Preview"}),
        "cart": {"routes": ["cart.test"], "services": {
            "one": {"weight": 0, "backends": [one.addr, dead, rude], "health_check": check},
            "two": {"weight": 100, "backends": [two.addr]}}},
        "api": app_config({"v1": (100, [v1.addr])}, routes=["api.test"], sticky=False)}}
    rp = await router_process(cfg, ("--workers", "2", "--store", etcd.url("/dash")))
    prom = await prometheus([f"127.0.0.1:{rp.admin_port}"])
    stop = asyncio.Event()
    began = time.time()
    async with aiohttp.ClientSession() as s:
        api = Api(s, rp.admin_port)
        # Prometheus hands its first targets to the scrapers a few seconds after it starts.
        await prom.until(s, 'up{job="router"} == 1', 30)
        # A client pinned to cart's "two" before its weight goes to 0: it keeps coming.
        pinned = asyncio.ensure_future(_traffic(rp.url, [("cart.test", {})], stop, cookies=True))
        await until(lambda: two.requests > 0, 10, "the client pinned to two")
        await _ok(api, "PUT", "/apps/cart/weights", {"one": 100, "two": 0})
        load = asyncio.ensure_future(_traffic(rp.url, [
            ("shop.test", {}), ("cart.test", {}), ("api.test", {}), ("shop.test", {}),
            ("shop.test", {"X-Preview": "green"})], stop))
        try:
            # shop: a release whose ramp rolls back (green fails 1 in 5) ...
            await _ok(api, "POST", "/apps/shop/release", {"service": "green",
                                                          "backends": [green.addr]})
            await _awaiting(api, "shop")
            await _ok(api, "POST", "/apps/shop/release/ramp",
                      {"steps": [20, 100], "interval": "2s", "min_requests": 5})
            assert (await follow_ramp(api, "shop", timeout=30)).end == "gone"
            # ... then one that pauses: it can never get the traffic it asks for.
            await _ok(api, "POST", "/apps/shop/release", {"service": "green2",
                                                          "backends": [green.addr]})
            await _awaiting(api, "shop")
            await _ok(api, "POST", "/apps/shop/release/ramp",
                      {"steps": [20, 100], "interval": "1s", "min_requests": 1_000_000,
                       "max_waits": 0})
            assert (await follow_ramp(api, "shop", timeout=30)).end == "paused"
            # api: a ramp that finishes.
            await _ok(api, "POST", "/apps/api/release", {"service": "v2", "backends": [v2.addr]})
            await _awaiting(api, "api")
            await _ok(api, "POST", "/apps/api/release/ramp",
                      {"steps": [50, 100], "interval": "1s", "min_requests": 5,
                       "latency_floor": "250ms"})
            assert (await follow_ramp(api, "api", timeout=30)).end == "done"

            # Every panel query has series for some app once there were a few scrapes (rates).
            missing: list[tuple[str, str]] = []

            async def every_panel() -> bool:
                missing.clear()
                for panel in _panels():
                    for target in panel["targets"]:
                        expr = target["expr"]
                        for name, value in VARIABLES.items():
                            expr = expr.replace(name, value)
                        found = [app for app in APPS
                                 if await prom.query(s, expr.replace("$app", app))]
                        if not found:
                            missing.append((panel["title"], expr))
                return not missing
            try:
                await until(every_panel, 30, "a series for every panel query", interval=1.0)
            except AssertionError:
                raise AssertionError(f"no series: {missing}") from None

            rules = _rules()
            assert {r["alert"] for r in rules} == {
                "RouterStoreDown", "RouterBackendDown", "RouterVersionErrorRate",
                "RouterRampRolledBack", "RouterRampPaused"}
            for rule in rules:
                if rule["alert"] != "RouterStoreDown":
                    assert await prom.query(s, rule["expr"]), rule["alert"]
            down = {(r["metric"]["app"], r["metric"]["service"], r["metric"]["backend"])
                    for r in await prom.query(s, _expr(rules, "RouterBackendDown"))}
            # The dead one, and the rude one if passive health has it out of rotation now.
            assert ("cart", "one", dead) in down and down <= {("cart", "one", dead),
                                                              ("cart", "one", rude)}
            erring = await prom.query(s, _expr(rules, "RouterVersionErrorRate"))
            # cart's one fails 1 in 10; shop's green2 (paused at 20 %) 1 in 5; the rest none.
            # shop's green, rolled back by its ramp, failed as often within the rule's 5
            # minutes, but it is gone: no alert for a version that no longer exists.
            assert {(r["metric"]["app"], r["metric"]["service"]) for r in erring} == {
                ("cart", "one"), ("shop", "green2")}
            # The change markers: points where the app changed, at most one a step per
            # change (Grafana steps the annotation query at $__interval).
            with open(DASHBOARD) as f:
                (changes,) = json.load(f)["annotations"]["list"]
            marks = {}
            for app in APPS:
                expr = changes["expr"].replace("$app", app)
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                marks[app] = await prom.points(s, expr, began, VARIABLES["$__interval"])
            history = (await _ok(api, "GET", "/history?app=shop&limit=1000"))["history"]
            assert 0 < len(marks["shop"]) <= len(history) and marks["api"], marks
        finally:
            stop.set()
            sent = await load + await pinned
            closer.close()
        # The store goes away: the data plane keeps serving, the alert's expression fires.
        assert not await prom.query(s, _expr(rules, "RouterStoreDown"))
        etcd.stop()
        await prom.until(s, _expr(rules, "RouterStoreDown"), 20)
        async with s.get(prom.url + "/api/v1/rules") as r:
            groups = (await r.json())["data"]["groups"]
        assert {(x["name"], x["health"]) for g in groups for x in g["rules"]} == {
            (rule["alert"], "ok") for rule in rules}
    print(f"\ndashboards: {sum(len(p['targets']) for p in _panels())} panel queries and "
          f"{len(rules)} rule expressions returned series; {sent} requests")


def _expr(rules: list[dict[str, Any]], alert: str) -> str:
    return next(r["expr"] for r in rules if r["alert"] == alert)
