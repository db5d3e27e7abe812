"""What runs in Docker, as versions of apps: pure functions of the Engine API's answers.

A *version* is one compose service (or one Swarm service) whose containers carry
``aliyun.routing.port_<P>`` labels: its project (``com.docker.compose.project`` or
``com.docker.stack.namespace``; "" for a container started without compose, which is a version
of its own named after the container), its name, the routes its labels declare and its
instances (running containers or tasks), each with the container's id, the address the router
reaches it at and Docker's health status. Which versions make up an app, and what the routing
state does with them, is ``reconcile``'s part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from ..config import NAME_PATTERN, NAME_RE, ConfigError, DockerProviderConfig, Route, parse_labels
from ..config.apps import parse_health_check
from ..config.scalars import format_hostport

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
STACK_LABEL = "com.docker.stack.namespace"
SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"
ROUTING_PORT_PREFIX = "aliyun.routing.port_"
# Per-container labels that only mean something for a container (not in a file's apps).
NETWORK_LABEL = "aliyun.routing.network"  # Traefik's traefik.docker.network
HEALTH_LABEL = "aliyun.routing.health_check"  # an HTTP path, as the seed's health checks
PROTOCOL_LABEL = "aliyun.routing.protocol"  # only "http": the router speaks HTTP/1.1 to backends
CONTAINER_LABELS = (NETWORK_LABEL, HEALTH_LABEL, PROTOCOL_LABEL)
# Task states on the way to running: Swarm reports no event when a task gets there, so the
# provider lists again until it does (docker.py).
_TASK_ON_THE_WAY = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing",
                              "ready", "starting"})

_HEALTH_RE = re.compile(r"\((healthy|unhealthy|health: starting)\)")


@dataclass(frozen=True, slots=True)
class Instance:
    """One container (or Swarm task) of a version."""

    container: str  # container id ("" for a Swarm task not yet given one)
    address: str | None  # "host:port" the router dials; None when none could be found
    # Docker's health status: "healthy", "starting", "unhealthy"; None when the image or the
    # service defines no health check (the router then probes it itself).
    health: str | None
    # A Swarm task that runs but that Swarm is shutting down (its replacement is running): a
    # backend only while no other instance of its version is ready (docker.py).
    leaving: bool = False


@dataclass(frozen=True, slots=True)
class Version:
    """One service (version) of an app, as Docker runs it now."""

    project: str
    name: str  # the app's service name: compose service, or Swarm service without the stack
    routes: tuple[Route, ...]
    sticky: bool | None  # aliyun.routing.session_sticky, None when absent
    created: float  # seconds since the epoch: the oldest container, or the Swarm service
    # Running containers (or tasks); none while the version's containers exist but are stopped.
    instances: tuple[Instance, ...]
    swarm_service: str | None = None  # the Swarm service's id (Swarm mode)
    health_path: str | None = None  # aliyun.routing.health_check: an HTTP check of this path
    stopped: tuple[str, ...] = ()  # ids of its containers that exist but do not run


@dataclass
class Listing:
    """Versions found, and why other labelled containers were left out (one line each).
    ``converging``: Swarm wants a task of a routed service running that does not run yet (or
    has no address yet)."""

    versions: list[Version]
    skipped: list[str]
    converging: bool = False


@dataclass(frozen=True, slots=True)
class _Routing:
    """What a container's (or a Swarm service's) routing labels say."""

    port: int
    routes: tuple[Route, ...]
    sticky: bool | None
    network: str | None  # aliyun.routing.network
    health_path: str | None  # aliyun.routing.health_check


def router_name(text: str) -> str | None:
    """A compose project or service name as an app or service name (``my_app`` -> ``my-app``);
    None if it cannot be one."""
    name = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")[:63]
    return name if NAME_RE.match(name) else None


def _routing(labels: dict[str, str], what: str, domain: str | None) -> _Routing:
    """What the labels declare; ConfigError naming ``what`` and the label."""
    source = f"docker {what}"
    parsed = parse_labels(labels, domain, "labels", source, CONTAINER_LABELS)
    ports = sorted(set(parsed.ports))
    if len(ports) > 1:
        raise ConfigError("labels", "routes on several ports: one port per service (split it "
                          "into one service per port)", ", ".join(map(str, ports)), source)
    protocol = labels.get(PROTOCOL_LABEL)
    if protocol is not None and protocol.strip().lower() != "http":
        raise ConfigError(f"labels.{PROTOCOL_LABEL}", "must be http: the router speaks HTTP/1.1 "
                          "to its backends (no TLS, HTTP/2 or TCP to backends)", protocol, source)
    network = labels.get(NETWORK_LABEL)
    if network is not None and not network.strip():
        raise ConfigError(f"labels.{NETWORK_LABEL}", "must name a network", network, source)
    health_path = None
    if HEALTH_LABEL in labels:
        check = parse_health_check({"path": labels[HEALTH_LABEL]}, f"labels.{HEALTH_LABEL}",
                                   source)
        assert check is not None
        health_path = check.path
    return _Routing(ports[0], tuple(dict.fromkeys(r for r, _ in parsed.routes)),
                    parsed.sticky[0] if parsed.sticky is not None else None,
                    network.strip() if network is not None else None, health_path)


def _identify(what: str, grouping: str, project: str, service: str, labels: dict[str, str],
              domain: str | None, skipped: list[str] | None,
              ) -> tuple[str, str, _Routing] | None:
    """(project, service, routing) of a labelled container or Swarm service, the names as the
    router's ("" for no project); None, with the reason in ``skipped``, if it cannot be
    routed."""
    app = router_name(project) if project else ""
    svc = router_name(service)
    if app is None or svc is None:
        if skipped is not None:
            names = f"{grouping} {project!r} or name {service!r}" if project else (
                f"name {service!r}")
            skipped.append(f"{what}: {names} cannot be an app or service name "
                           f"({NAME_PATTERN})")
        return None
    try:
        return app, svc, _routing(labels, what, domain)
    except ConfigError as e:
        if skipped is not None:
            skipped.append(str(e))
        return None


def _routed(labels: dict[str, str] | None) -> bool:
    return any(k.startswith(ROUTING_PORT_PREFIX) for k in labels or {})


def _health(status: str) -> str | None:
    m = _HEALTH_RE.search(status or "")
    if m is None:
        return None
    return "starting" if m.group(1) == "health: starting" else m.group(1)


def _published(ports: Iterable[dict[str, Any]], private: int, host: str,
               private_key: str, public_key: str, ip_key: str | None) -> str | None:
    """The host address of the port published for ``private``: an IPv4 binding first."""
    found = [p for p in ports if p.get(private_key) == private and p.get(public_key)
             and str(p.get("Type", p.get("Protocol", "tcp"))) == "tcp"]
    found.sort(key=lambda p: ":" in str(p.get(ip_key, "") if ip_key else ""))
    for p in found:
        ip = str(p.get(ip_key) or "") if ip_key else ""
        bound = host if ip in ("", "0.0.0.0", "::") else ip
        return format_hostport(bound, int(p[public_key]), ":" in bound)
    return None


def _pick_network(networks: list[str], wanted: str | None, label: bool, shared: frozenset[str],
                  ) -> tuple[str | None, str]:
    """The network (of ``networks``, those with an address) to reach a backend on: the one
    ``wanted`` (its label, else providers.docker.network); else its only one; else the only
    one it shares with the router's own container. (name, why there is none)."""
    if wanted is not None:
        if wanted in networks:
            return wanted, ""
        where = f"its {NETWORK_LABEL} label" if label else "providers.docker.network"
        return None, f"not on network {wanted!r} ({where})"
    if len(networks) == 1:
        return networks[0], ""
    common = [n for n in networks if n in shared]
    if len(common) == 1:
        return common[0], ""
    named = f" ({', '.join(sorted(networks))})" if networks else ""
    router = (f", {len(common)} of them shared with the router's container" if shared else "")
    return None, (f"on {len(networks)} networks with an address{named}{router}; name the one "
                  f"to use in its {NETWORK_LABEL} label or providers.docker.network")


def _container_address(c: dict[str, Any], port: int, cfg: DockerProviderConfig,
                       network: str | None, shared: frozenset[str]) -> tuple[str | None, str]:
    """(address, why there is none)."""
    if cfg.published_ports:
        addr = _published(c.get("Ports") or [], port, cfg.host, "PrivatePort", "PublicPort", "IP")
        return addr, f"no host port published for port {port}"
    networks: dict[str, Any] = (c.get("NetworkSettings") or {}).get("Networks") or {}
    if (c.get("HostConfig") or {}).get("NetworkMode") == "host" or "host" in networks:
        return format_hostport(cfg.host, port, ":" in cfg.host), ""
    with_ip = [name for name, n in networks.items() if n.get("IPAddress")]
    chosen, why = _pick_network(with_ip, network or cfg.network, network is not None, shared)
    if chosen is None:
        return None, why
    return format_hostport(networks[chosen]["IPAddress"], port, False), ""


def _running(c: dict[str, Any]) -> bool:
    # Listed with all=1: exited, created, restarting and paused containers too, which keep
    # their version present but take no traffic.
    return c.get("State", "running") == "running"


def from_containers(containers: list[dict[str, Any]], cfg: DockerProviderConfig,
                    domain: str | None, shared: frozenset[str] = frozenset()) -> Listing:
    """Versions from ``GET /containers/json?all=1``: every labelled container makes its
    version present, the running ones are its instances. ``shared``: the networks of the
    router's own container. Containers of Swarm tasks are left to ``from_swarm``."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], _Routing]]] = {}
    skipped: list[str] = []
    for c in containers:
        labels = c.get("Labels") or {}
        if not _routed(labels) or SWARM_SERVICE_LABEL in labels:
            continue
        cname = ((c.get("Names") or ["/" + c.get("Id", "")[:12]])[0]).lstrip("/")
        what = f"container {cname}"
        # Without compose's labels a container is a version of its own, named after it.
        project = labels.get(PROJECT_LABEL) or ""
        service = labels.get(SERVICE_LABEL) or cname
        identity = _identify(what, "project", project, service, labels, domain,
                             skipped if _running(c) else None)
        if identity is not None:
            groups.setdefault(identity[:2], []).append((c, identity[2]))
    versions = []
    for (app, svc), members in sorted(groups.items()):
        instances = []
        for c, routing in members:
            if not _running(c):
                continue
            addr, why = _container_address(c, routing.port, cfg, routing.network, shared)
            if addr is None:
                name = ((c.get("Names") or [""])[0]).lstrip("/")
                skipped.append(f"container {name}: {why}")
            instances.append(Instance(c["Id"], addr, _health(c.get("Status", ""))))
        # The labels of the running containers, if any run: stopped ones may have old labels.
        labelled = [m[1] for m in members if _running(m[0])] or [m[1] for m in members]
        routes = tuple(dict.fromkeys(r for m in labelled for r in m.routes))
        sticky = next((m.sticky for m in labelled if m.sticky is not None), None)
        health_path = next((m.health_path for m in labelled if m.health_path), None)
        created = min(float(c.get("Created", 0)) for c, _ in members)
        stopped = tuple(c["Id"] for c, _ in members if not _running(c))
        versions.append(Version(app, svc, routes, sticky, created, tuple(instances),
                                health_path=health_path, stopped=stopped))
    return Listing(versions, skipped)


def _timestamp(text: str) -> float:
    # Docker writes nanoseconds ("2026-11-29T14:26:55.939130466Z"); datetime takes microseconds.
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", text or "")
    if m is None:
        return 0.0
    base = datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
    return base + float("0." + m.group(2)) if m.group(2) else base


def _task_address(task: dict[str, Any], service: dict[str, Any], port: int,
                  nodes: dict[str, str], cfg: DockerProviderConfig, network: str | None,
                  shared: frozenset[str]) -> tuple[str | None, str]:
    node = nodes.get(task.get("NodeID", ""), "")
    if cfg.published_ports:
        ports = (service.get("Endpoint") or {}).get("Ports") or []
        ingress = [p for p in ports if p.get("PublishMode", "ingress") == "ingress"]
        addr = _published(ingress, port, cfg.host, "TargetPort", "PublishedPort", None)
        if addr is None and node:
            host_ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
            addr = _published(host_ports, port, node, "TargetPort", "PublishedPort", None)
        return addr, f"no port published for port {port}"
    attachments = [a for a in task.get("NetworksAttachments") or []
                   if not ((a.get("Network") or {}).get("Spec") or {}).get("Ingress")]
    by_name = {((a.get("Network") or {}).get("Spec") or {}).get("Name"): a for a in attachments}
    if "host" in by_name:
        if not node:
            return None, "on the host network of a node whose address is unknown"
        return format_hostport(node, port, ":" in node), ""
    chosen, why = _pick_network([str(n) for n in by_name], network or cfg.network,
                                network is not None, shared)
    if chosen is None:
        return None, why
    addresses = [a for a in by_name[chosen].get("Addresses") or [] if a]
    if not addresses:
        return None, "no address on its network yet"
    ip = str(addresses[0]).split("/")[0]
    return format_hostport(ip, port, ":" in ip), ""


def from_swarm(services: list[dict[str, Any]], tasks: list[dict[str, Any]],
               nodes: list[dict[str, Any]], cfg: DockerProviderConfig,
               domain: str | None, shared: frozenset[str] = frozenset()) -> Listing:
    """Versions from ``GET /services``, ``/tasks`` and ``/nodes`` of a Swarm manager: the whole
    Swarm, whichever node answers. ``shared``: the networks of the router's own container."""
    node_addr = {n["ID"]: str((n.get("Status") or {}).get("Addr") or "") for n in nodes}
    by_service: dict[str, list[dict[str, Any]]] = {}
    on_the_way: set[str] = set()
    for t in tasks:
        state = (t.get("Status") or {}).get("State")
        if t.get("DesiredState") != "running":
            if state == "running":  # being shut down: its container's stop comes next
                by_service.setdefault(t.get("ServiceID", ""), []).append(t)
            continue
        if state in ("starting", "running"):
            by_service.setdefault(t.get("ServiceID", ""), []).append(t)
        if state in _TASK_ON_THE_WAY:
            on_the_way.add(t.get("ServiceID", ""))
    versions, skipped = [], []
    converging = False
    for s in services:
        spec = s.get("Spec") or {}
        template = spec.get("TaskTemplate") or {}
        container_spec = template.get("ContainerSpec") or {}
        labels = {**(container_spec.get("Labels") or {}), **(spec.get("Labels") or {})}
        if not _routed(labels):
            continue
        what = f"service {spec.get('Name')}"
        stack = labels.get(STACK_LABEL) or ""
        full = str(spec.get("Name", ""))
        # Without a stack (docker service create) the service is a version of its own.
        name = full[len(stack) + 1:] if stack and full.startswith(stack + "_") else full
        identity = _identify(what, "stack", stack, name, labels, domain, skipped)
        if identity is None:
            continue
        app, svc, routing = identity
        test = (container_spec.get("Healthcheck") or {}).get("Test") or []
        checked = bool(test) and test[0] != "NONE"
        converging = converging or s["ID"] in on_the_way
        instances = []
        for t in by_service.get(s["ID"], []):
            addr, why = _task_address(t, s, routing.port, node_addr, cfg, routing.network, shared)
            state = (t.get("Status") or {}).get("State")
            leaving = t.get("DesiredState") != "running"
            if addr is None and state == "running" and not leaving:
                # (One starting, or on its way out, may have no published port yet or any more.)
                skipped.append(f"{what}: task {t.get('ID', '')[:12]}: {why}")
                converging = converging or why == "no address on its network yet"
            health = ("healthy" if state == "running" else "starting") if checked else (
                None if state == "running" else "starting")
            container = ((t.get("Status") or {}).get("ContainerStatus") or {}).get(
                "ContainerID") or ""
            instances.append(Instance(container, addr, health, leaving))
        versions.append(Version(app, svc, routing.routes, routing.sticky,
                                _timestamp(s.get("CreatedAt", "")), tuple(instances), s["ID"],
                                routing.health_path))
    versions.sort(key=lambda v: (v.project, v.name))
    return Listing(versions, skipped, converging)
