"""Discovery and reconciliation, pure: the Engine API's answers (in the shape Docker 20.10+
gives them) -> versions -> the routing state, with exact results."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from router.config import DockerProviderConfig, HealthCheckConfig, Route, config_from_dict
from router.providers.discovery import Instance, Version, from_containers, from_swarm, router_name
from router.providers.reconcile import Found, components, reconcile
from router.control.release import Status
from router.control.state import Discovered, State, confirm, delete_app, rollback, set_weights

CFG = DockerProviderConfig()
LABELS = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web",
          "aliyun.routing.port_80": "shop;http://shop.test/api"}


def container(cid: str, labels: dict[str, str], ip: str = "172.17.0.2", status: str = "Up 3 s",
              created: int = 1000, ports: list[dict[str, Any]] | None = None,
              mode: str = "default", networks: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Id": cid, "Names": [f"/{cid}"], "Labels": labels, "State": "running",
            "Status": status, "Created": created, "Ports": ports or [],
            "HostConfig": {"NetworkMode": mode},
            "NetworkSettings": {"Networks": networks if networks is not None else
                                {"bridge": {"IPAddress": ip}}}}


def test_router_names_from_compose_names():
    assert router_name("My_App") == "my-app"
    assert router_name("shop.v2") == "shop-v2"
    assert router_name("_x_") == "x"
    assert router_name("___") is None


def test_containers_become_versions_with_addresses_routes_and_health():
    listing = from_containers([
        container("a1", LABELS, "172.17.0.2", "Up 3 seconds (healthy)", 1000),
        container("a2", LABELS, "172.17.0.3", "Up 1 second (health: starting)", 1005),
        container("b1", {**LABELS, "com.docker.compose.service": "web_v2",
                         "aliyun.routing.session_sticky": "false"}, "172.17.0.4", created=2000),
        container("other", {"com.docker.compose.project": "shop"}),  # not routed
        container("task", {**LABELS, "com.docker.swarm.service.id": "x"}),  # Swarm's
    ], CFG, "example.test")
    assert listing.skipped == []
    web, v2 = listing.versions
    assert (web.project, web.name, web.created, web.sticky) == ("shop", "web", 1000.0, None)
    assert web.routes == (Route("shop.example.test"), Route("shop.test", "/api"))
    assert web.instances == (Instance("a1", "172.17.0.2:80", "healthy"),
                             Instance("a2", "172.17.0.3:80", "starting"))
    assert (v2.name, v2.sticky, v2.instances) == ("web-v2", False,
                                                  (Instance("b1", "172.17.0.4:80", None),))


def test_container_addresses_by_mode():
    published = [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
                 {"IP": "::", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
                 {"IP": "127.0.0.1", "PrivatePort": 443, "PublicPort": 32769, "Type": "tcp"}]
    c = container("a1", LABELS, ports=published)
    assert from_containers([c], DockerProviderConfig(published_ports=True, host="10.1.1.1"),
                           "x.test").versions[0].instances[0].address == "10.1.1.1:32768"
    host = container("h", LABELS, mode="host", networks={"host": {"IPAddress": ""}})
    assert from_containers([host], CFG, "x.test").versions[0].instances[0].address == "127.0.0.1:80"
    two = container("t", LABELS, networks={"front": {"IPAddress": "10.0.1.2"},
                                            "back": {"IPAddress": "10.0.2.2"}})
    listing = from_containers([two], CFG, "x.test")
    assert listing.versions[0].instances[0].address is None
    assert listing.skipped == ["container t: on 2 networks with an address (back, front); name "
                               "the one to use in its aliyun.routing.network label or "
                               "providers.docker.network"]
    chosen = from_containers([two], DockerProviderConfig(network="back"), "x.test")
    assert chosen.versions[0].instances[0].address == "10.0.2.2:80"
    unpublished = container("u", LABELS, ports=published[2:])
    none = from_containers([unpublished], DockerProviderConfig(published_ports=True), "x.test")
    assert none.versions[0].instances[0].address is None
    assert none.skipped == ["container u: no host port published for port 80"]


def test_containers_left_out_say_why():
    listing = from_containers([
        container("two", {**LABELS, "aliyun.routing.port_8080": "other"}),
        container("bad", {**LABELS, "aliyun.routing.port_80": "http://a.test:8080"}),
        container("tls", {**LABELS, "aliyun.routing.protocol": "https"}),
        container("hc", {**LABELS, "aliyun.routing.health_check": "healthz"}),
        container("typo", {**LABELS, "aliyun.routing.healthcheck": "/healthz"}),
        container("Bad_Name", {"aliyun.routing.port_80": "x", "com.docker.compose.service": "_"}),
        # Stopped: no instance, and no note about it either.
        {**container("off", {**LABELS, "aliyun.routing.protocol": "tcp"}), "State": "exited"},
    ], CFG, "x.test")
    nodomain = from_containers([container("nodomain", LABELS)], CFG, None)
    assert listing.versions == []
    assert listing.skipped == [
        "docker container two: labels: routes on several ports: one port per service (split it "
        "into one service per port) (got '80, 8080')",
        "docker container bad: labels.aliyun.routing.port_80: a port cannot be given here (the "
        "port is the label's); a context path starts with '/' (got 'http://a.test:8080')",
        "docker container tls: labels.aliyun.routing.protocol: must be http: the router speaks "
        "HTTP/1.1 to its backends (no TLS, HTTP/2 or TCP to backends) (got 'https')",
        "docker container hc: labels.aliyun.routing.health_check.path: must be a URL path "
        "starting with '/', without spaces (got 'healthz')",
        "docker container typo: labels.aliyun.routing.healthcheck: unknown label; known: "
        "aliyun.routing.port_<port>, aliyun.routing.session_sticky, aliyun.routing.network, "
        "aliyun.routing.health_check, aliyun.routing.protocol (got '/healthz')",
        "container Bad_Name: name '_' cannot be an app or service name "
        "(^[a-z0-9][a-z0-9-]{0,62}$)"]
    assert "needs the top-level 'domain'" in nodomain.skipped[0]


def test_a_container_without_compose_labels_is_a_version_named_after_it():
    listing = from_containers([
        container("Shop_Front", {"aliyun.routing.port_80": "x", "aliyun.routing.protocol": "HTTP",
                                 "aliyun.routing.health_check": "/healthz"}, "172.17.0.5"),
    ], CFG, "x.test")
    assert listing.skipped == []
    assert listing.versions == [Version("", "shop-front", (Route("x.x.test"),), None, 1000.0,
                                        (Instance("Shop_Front", "172.17.0.5:80", None),),
                                        health_path="/healthz")]
    # ... and an app named after it, whose service has the label's health check.
    st = step(EMPTY, [Found(listing.versions[0], ("172.17.0.5:80",))])
    assert weights(st, "shop-front") == {"shop-front": (100, ("172.17.0.5:80",))}
    assert st.discovered == {"shop-front": Discovered("", ("shop-front",))}
    assert st.app("shop-front").services[0].health_check == HealthCheckConfig(path="/healthz")


def test_stopped_containers_keep_their_version_present_without_instances():
    listing = from_containers([
        {**container("a1", LABELS, created=900), "State": "exited"},
        container("a2", LABELS, "172.17.0.3", created=1000),
        {**container("b1", {**LABELS, "com.docker.compose.service": "web-v2"}), "State": "exited"},
    ], CFG, "x.test")
    web, v2 = listing.versions
    assert (web.name, web.created, web.instances, web.stopped) == (
        "web", 900.0, (Instance("a2", "172.17.0.3:80", None),), ("a1",))
    assert (v2.name, v2.instances, v2.stopped) == ("web-v2", (), ("b1",))


def test_the_network_is_the_label_s_else_the_one_shared_with_the_router():
    nets = {"front": {"IPAddress": "10.0.1.2"}, "back": {"IPAddress": "10.0.2.2"}}
    labelled = container("l", {**LABELS, "aliyun.routing.network": "back"}, networks=nets)
    plain = container("p", LABELS, networks=nets)

    def address(c: dict[str, Any], cfg: DockerProviderConfig = CFG,
                shared: frozenset[str] = frozenset()) -> str | None:
        listing = from_containers([c], cfg, "x.test", shared)
        return listing.versions[0].instances[0].address
    assert address(labelled) == "10.0.2.2:80"
    # The label wins over the provider's setting.
    assert address(labelled, DockerProviderConfig(network="front")) == "10.0.2.2:80"
    assert address(plain, shared=frozenset({"front", "router-only"})) == "10.0.1.2:80"
    # Shared with the router on both: which one is not for the router to guess.
    both = from_containers([plain], CFG, "x.test", frozenset({"front", "back"}))
    assert both.versions[0].instances[0].address is None
    assert both.skipped == ["container p: on 2 networks with an address (back, front), 2 of them "
                            "shared with the router's container; name the one to use in its "
                            "aliyun.routing.network label or providers.docker.network"]
    missing = from_containers([container("m", {**LABELS, "aliyun.routing.network": "x"},
                                         networks=nets)], CFG, "x.test")
    assert missing.skipped == ["container m: not on network 'x' (its aliyun.routing.network "
                               "label)"]


def _service(sid: str, name: str, labels: dict[str, str], created: str,
             healthcheck: bool = False, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"Name": name, "Labels": labels, "TaskTemplate": {"ContainerSpec": {
        "Image": "x", **({"Healthcheck": {"Test": ["CMD", "true"]}} if healthcheck else {})}}}
    return {"ID": sid, "CreatedAt": created, "Spec": spec, "Endpoint": {"Ports": ports or []}}


def _task(tid: str, sid: str, state: str = "running", desired: str = "running",
          network: str = "shop_default", addr: str = "10.0.1.5/24", node: str = "n1") -> dict[str, Any]:
    return {"ID": tid, "ServiceID": sid, "NodeID": node, "DesiredState": desired,
            "Status": {"State": state, "ContainerStatus": {"ContainerID": "c-" + tid}},
            "NetworksAttachments": [
                {"Network": {"Spec": {"Name": "ingress", "Ingress": True}},
                 "Addresses": ["10.0.0.9/24"]},
                {"Network": {"Spec": {"Name": network}}, "Addresses": [addr]}]}


def test_swarm_services_and_tasks_become_versions():
    stack = {"com.docker.stack.namespace": "shop", "aliyun.routing.port_80": "shop"}
    services = [_service("s1", "shop_web", stack, "2026-11-29T14:26:55.939130466Z"),
                _service("s2", "shop_web-v2", stack, "2026-11-29T14:30:00Z", healthcheck=True),
                _service("s3", "lonely", {"aliyun.routing.port_80": "x"}, "2026-11-29T14:30:00Z")]
    tasks = [_task("t1", "s1", addr="10.0.1.5/24"), _task("t2", "s1", addr="10.0.1.6/24"),
             _task("t3", "s1", desired="shutdown", addr="10.0.1.7/24"),  # being stopped
             _task("t4", "s1", state="failed", addr="10.0.1.8/24"),
             _task("t5", "s2", state="starting", addr="10.0.1.9/24"),
             _task("t6", "s2", addr="10.0.1.10/24")]
    nodes = [{"ID": "n1", "Status": {"Addr": "192.0.2.1"}}]
    listing = from_swarm(services, tasks, nodes, CFG, "example.test")
    assert listing.skipped == []
    lonely, web, v2 = listing.versions
    assert (lonely.project, lonely.name, lonely.instances) == ("", "lonely", ())
    assert listing.converging  # t5 is starting
    assert (web.project, web.name, web.swarm_service) == ("shop", "web", "s1")
    assert web.created == pytest.approx(1795962415.93913)
    assert web.instances == (Instance("c-t1", "10.0.1.5:80", None),
                             Instance("c-t2", "10.0.1.6:80", None),
                             Instance("c-t3", "10.0.1.7:80", None, leaving=True))
    assert v2.instances == (Instance("c-t5", "10.0.1.9:80", "starting"),
                            Instance("c-t6", "10.0.1.10:80", "healthy"))
    host = from_swarm(services[:1], [_task("t1", "s1", network="host", addr="")], nodes, CFG, "x.t")
    assert host.versions[0].instances[0].address == "192.0.2.1:80"
    ingress = [_service("s1", "shop_web", stack, "2026-11-29T14:26:55Z",
                        ports=[{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8081,
                                "PublishMode": "ingress"}])]
    mesh = from_swarm(ingress, tasks[:2], nodes, DockerProviderConfig(published_ports=True), "x.t")
    assert {i.address for i in mesh.versions[0].instances} == {"127.0.0.1:8081"}


def test_swarm_tasks_on_their_way_to_running_make_the_listing_converging():
    stack = {"com.docker.stack.namespace": "shop", "aliyun.routing.port_80": "shop"}
    services = [_service("s1", "shop_web", stack, "2026-11-29T14:26:55Z")]
    nodes = [{"ID": "n1", "Status": {"Addr": "192.0.2.1"}}]

    def listing(*tasks: dict[str, Any]) -> Any:
        return from_swarm(services, list(tasks), nodes, CFG, "x.t")
    assert not listing(_task("t1", "s1")).converging
    for state in ("pending", "assigned", "preparing", "starting"):
        assert listing(_task("t1", "s1"), _task("t2", "s1", state=state)).converging, state
    # Done, or on the way out: nothing to wait for.
    assert not listing(_task("t1", "s1"), _task("t2", "s1", state="failed"),
                       _task("t3", "s1", state="pending", desired="shutdown")).converging
    # Running, without its address on the network yet.
    unaddressed = listing(_task("t1", "s1", addr=""))
    assert unaddressed.versions[0].instances[0].address is None
    assert unaddressed.converging
    # A service without routing labels is not waited for.
    other = [_service("s9", "other", {}, "2026-11-29T14:26:55Z")]
    assert not from_swarm(other, [_task("t9", "s9", state="pending")], nodes, CFG, "x.t").converging


# -- reconcile ---------------------------------------------------------------------------------
def version(name: str, created: float, routes: tuple[str, ...] = ("shop.test",),
            project: str = "shop", sticky: bool | None = None) -> Version:
    return Version(project, name, tuple(Route(*r.split("/", 1)) if "/" not in r else
                                        Route(r.split("/", 1)[0], "/" + r.split("/", 1)[1])
                                        for r in routes), sticky, created, ())


def found(name: str, created: float, *backends: str, **kw: Any) -> Found:
    return Found(version(name, created, **kw), tuple(backends))


def step(state: State, items: list[Found], notes: list[str] | None = None) -> State:
    outcome = reconcile(state, items, None, notes if notes is not None else [])
    if outcome is None:
        return state
    apps, releases, discovered = outcome
    return State(state.generation + 1, apps, dict(releases),
                 {a.name: state.generation + 1 for a in apps}, discovered=dict(discovered))


def apply(state: State, op: Any) -> State:
    outcome = op(state)
    return State(state.generation + 1, outcome[0], dict(outcome[1]), {},
                 discovered=dict(state.discovered))


def weights(state: State, app: str = "shop") -> dict[str, tuple[int, tuple[str, ...]]]:
    return {s.name: (s.weight, s.backends) for s in state.app(app).services}


EMPTY = State(1)


def test_first_sight_creates_the_app_from_the_oldest_ready_version():
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80", "10.0.0.3:80", sticky=False)])
    assert weights(st) == {"web": (100, ("10.0.0.2:80", "10.0.0.3:80"))}
    assert st.app("shop").routes == (Route("shop.test"),)
    assert st.app("shop").session_sticky is False
    assert st.discovered == {"shop": Discovered("shop", ("web",))}
    assert st.releases == {}
    assert reconcile(st, [found("web", 1, "10.0.0.2:80", "10.0.0.3:80", sticky=False)], None,
                     []) is None  # nothing to do twice


def test_nothing_ready_creates_nothing():
    assert reconcile(EMPTY, [found("web", 1)], None, []) is None


def test_a_new_version_opens_a_release_at_weight_0_and_one_at_a_time():
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80")])
    st = step(st, [found("web", 1, "10.0.0.2:80"), found("web-v2", 2, "10.0.0.4:80")])
    assert weights(st) == {"web": (100, ("10.0.0.2:80",)), "web-v2": (0, ("10.0.0.4:80",))}
    release = st.releases["shop"]
    assert (release.old, release.new, release.status) == (("web",), "web-v2", Status.IN_PROGRESS)
    notes: list[str] = []
    now = [found("web", 1, "10.0.0.2:80"), found("web-v2", 2, "10.0.0.4:80"),
           found("web-v3", 3, "10.0.0.5:80")]
    assert reconcile(st, now, None, notes) is None
    assert notes == ["app shop: version web-v3 waits for the open release of web-v2 to be "
                     "confirmed or rolled back"]
    # Confirmed (without removal): web is retired while its containers run; web-v3 goes next.
    st = apply(st, set_weights("shop", {"web-v2": 100}))
    st = replace_release_ready(st)
    st = apply(st, confirm("shop", False))
    st = step(st, now)
    assert weights(st) == {"web-v2": (100, ("10.0.0.4:80",)), "web-v3": (0, ("10.0.0.5:80",))}
    assert st.releases["shop"].old == ("web-v2",)
    assert st.discovered["shop"].services == ("web", "web-v2", "web-v3")
    # Rolled back: web-v3 retired too; once the containers of both are gone, both forgotten.
    st = apply(st, rollback("shop"))
    assert reconcile(st, now, None, []) is None
    st = step(st, [found("web-v2", 2, "10.0.0.4:80")])
    assert st.discovered["shop"].services == ("web-v2",)
    assert weights(st) == {"web-v2": (100, ("10.0.0.4:80",))}


def replace_release_ready(st: State) -> State:
    from router.control.state import mark_ready

    return apply(st, mark_ready("shop", st.releases["shop"].new))


def test_containers_gone_keep_the_weight_and_come_back_to_it():
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80")])
    st = step(st, [found("web", 1, "10.0.0.2:80"), found("web-v2", 2, "10.0.0.4:80")])
    st = apply(st, set_weights("shop", {"web": 30, "web-v2": 70}))
    st = step(st, [found("web", 1, "10.0.0.2:80")])  # web-v2's containers stopped
    assert weights(st) == {"web": (30, ("10.0.0.2:80",)), "web-v2": (70, ())}
    st = step(st, [])  # everything stopped: the app stays, with its weights
    assert weights(st) == {"web": (30, ()), "web-v2": (70, ())}
    assert st.discovered["shop"].services == ("web", "web-v2")
    st = step(st, [found("web", 1, "10.0.0.2:80"), found("web-v2", 2, "10.0.0.9:80")])
    assert weights(st) == {"web": (30, ("10.0.0.2:80",)), "web-v2": (70, ("10.0.0.9:80",))}


def test_an_app_deleted_through_the_api_stays_deleted_while_its_containers_run():
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80")])
    st = apply(st, delete_app("shop"))
    assert reconcile(st, [found("web", 1, "10.0.0.2:80")], None, []) is None
    st = step(st, [])
    assert st.discovered == {}
    st = step(st, [found("web", 5, "10.0.0.7:80")])
    assert weights(st) == {"web": (100, ("10.0.0.7:80",))}


def test_route_claimed_by_another_app_is_refused_with_a_note():
    cfg = config_from_dict({"apps": {"static": {"routes": ["shop.test"], "services": {
        "a": {"backends": ["127.0.0.1:9"]}}}}})
    notes: list[str] = []
    assert reconcile(State.initial(cfg.apps), [found("web", 1, "10.0.0.2:80")], None, notes) is None
    assert notes == ["project shop, service web: not routed: route shop.test belongs to app "
                     "'static'"]


def test_versions_of_one_project_group_by_shared_routes():
    items = [found("web", 1, "10.0.0.2:80"), found("api", 2, "10.0.0.3:80", routes=("api.test",)),
             found("web-v2", 3, "10.0.0.4:80", routes=("shop.test", "www.test"))]
    assert [[f.version.name for f in c] for c in components(items)] == [["web", "web-v2"], ["api"]]
    st = step(EMPTY, items)
    assert weights(st, "shop") == {"web": (100, ("10.0.0.2:80",)), "web-v2": (0, ("10.0.0.4:80",))}
    assert weights(st, "shop-api") == {"api": (100, ("10.0.0.3:80",))}
    assert st.discovered["shop-api"] == Discovered("shop", ("api",))
    # The app's routes are those of its versions in the app: www.test came with web-v2.
    assert st.app("shop").routes == (Route("shop.test"), Route("www.test"))


def test_a_new_version_after_all_old_containers_are_gone_is_a_release_of_the_same_app():
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80")])
    st = step(st, [found("web-v2", 2, "10.0.0.4:80")])
    assert weights(st) == {"web": (100, ()), "web-v2": (0, ("10.0.0.4:80",))}
    assert st.releases["shop"].new == "web-v2"


def test_health_check_of_the_provider_goes_to_new_versions():
    hc = HealthCheckConfig(path="/healthz")
    outcome = reconcile(EMPTY, [found("web", 1, "10.0.0.2:80")], hc, [])
    assert outcome is not None
    assert outcome[0][0].services[0].health_check == hc


def test_what_was_done_is_told_for_the_log():
    done: list[str] = []
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80")])
    reconcile(st, [found("web", 1, "10.0.0.2:80", "10.0.0.3:80"), found("web-v2", 2, "10.0.0.4:80")],
              None, [], done)
    assert done == ["app shop: web: backends 10.0.0.2:80, 10.0.0.3:80",
                    "app shop: new version web-v2: release opened at weight 0"]


def test_routerctl_apply_keeps_the_apps_from_docker():
    """A file's apps become the state's, but the apps discovery made are not the file's."""
    from router.control.state import apply_apps

    st = step(EMPTY, [found("web", 1, "10.0.0.2:80")])
    file_apps = config_from_dict({"apps": {"static": {"routes": ["static.test"], "services": {
        "a": {"backends": ["127.0.0.1:9"]}}}}}).apps
    after = apply(st, apply_apps(file_apps))
    assert [a.name for a in after.apps] == ["shop", "static"]


def test_empty_apps_delete_deletes_an_app_whose_containers_are_all_gone():
    st = step(EMPTY, [found("web", 1, "10.0.0.2:80"), found("api", 2, "10.0.0.3:80",
                                                             routes=("api.test",))])
    # Stopped (present, no backend): kept either way.
    stopped = [found("web", 1), found("api", 2, "10.0.0.3:80", routes=("api.test",))]
    kept = step(st, stopped)
    assert step(st, stopped) == kept and weights(kept) == {"web": (100, ())}
    done: list[str] = []
    outcome = reconcile(kept, [found("api", 2, "10.0.0.3:80", routes=("api.test",))], None, [],
                        done, delete_empty=True)
    assert outcome is not None
    apps, releases, discovered = outcome
    assert [a.name for a in apps] == ["shop-api"]
    assert set(discovered) == {"shop-api"}
    assert done == ["app shop: deleted: none of its containers exists "
                    "(providers.docker.empty_apps: delete)"]
    # By default the app stays, with its weights and no backends.
    assert weights(step(kept, [found("api", 2, "10.0.0.3:80", routes=("api.test",))])) == {
        "web": (100, ())}


def test_the_health_check_label_sets_the_service_s_check_and_follows_changes():
    base = HealthCheckConfig(interval=5.0)
    labelled = Found(Version("shop", "web", (Route("shop.test"),), None, 1, (),
                             health_path="/healthz"), ("10.0.0.2:80",))
    outcome = reconcile(EMPTY, [labelled], base, [])
    assert outcome is not None
    assert outcome[0][0].services[0].health_check == HealthCheckConfig(path="/healthz",
                                                                       interval=5.0)
    st = State(2, outcome[0], dict(outcome[1]), {}, discovered=dict(outcome[2]))
    moved = Found(replace(labelled.version, health_path="/ready"), labelled.backends)
    done: list[str] = []
    outcome = reconcile(st, [moved], base, [], done)
    assert outcome is not None
    assert outcome[0][0].services[0].health_check == HealthCheckConfig(path="/ready",
                                                                       interval=5.0)
    assert done == ["app shop: web: backends 10.0.0.2:80, health check /ready (label)"]
    # Without the label, the service's check is the operator's to set: left alone.
    assert reconcile(st, [Found(replace(labelled.version, health_path=None),
                                labelled.backends)], base, []) is None
