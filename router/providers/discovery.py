"""What runs in Docker, as versions of apps: pure functions of the Engine API's answers.

A *version* is one compose service (or one Swarm service) whose containers carry
``aliyun.routing.port_<P>`` labels: its project (``com.docker.compose.project`` or
``com.docker.stack.namespace``), its name, the routes its labels declare and its instances
(containers or tasks), each with the address the router reaches it at and Docker's health
status. Which versions make up an app, and what the routing state does with them, is
``reconcile``'s part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from ..config import NAME_RE, ConfigError, DockerProviderConfig, Route, parse_labels
from ..config.scalars import format_hostport

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
STACK_LABEL = "com.docker.stack.namespace"
SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"
ROUTING_PORT_PREFIX = "aliyun.routing.port_"

_HEALTH_RE = re.compile(r"\((healthy|unhealthy|health: starting)\)")


@dataclass(frozen=True, slots=True)
class Instance:
    """One container (or Swarm task) of a version."""

    container: str  # container id ("" for a Swarm task not yet given one)
    address: str | None  # "host:port" the router dials; None when none could be found
    # Docker's health status: "healthy", "starting", "unhealthy"; None when the image or the
    # service defines no health check (the router then probes it itself).
    health: str | None


@dataclass(frozen=True, slots=True)
class Version:
    """One service (version) of an app, as Docker runs it now."""

    project: str
    name: str  # the app's service name: compose service, or Swarm service without the stack
    routes: tuple[Route, ...]
    sticky: bool | None  # aliyun.routing.session_sticky, None when absent
    created: float  # seconds since the epoch: the oldest container, or the Swarm service
    instances: tuple[Instance, ...]
    swarm_service: str | None = None  # the Swarm service's id (Swarm mode)


@dataclass
class Listing:
    """Versions found, and why other labelled containers were left out (one line each)."""

    versions: list[Version]
    skipped: list[str]


def router_name(text: str) -> str | None:
    """A compose project or service name as an app or service name (``my_app`` -> ``my-app``);
    None if it cannot be one."""
    name = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")[:63]
    return name if NAME_RE.match(name) else None


def _routing(labels: dict[str, str], what: str, domain: str | None,
             ) -> tuple[int, tuple[Route, ...], bool | None]:
    """The port, routes and stickiness the labels declare; ConfigError naming ``what``."""
    parsed = parse_labels(labels, domain, "labels", f"docker {what}")
    ports = sorted(set(parsed.ports))
    if len(ports) > 1:
        raise ConfigError("labels", "routes on several ports: one port per service (split it "
                          "into one service per port)", ", ".join(map(str, ports)),
                          f"docker {what}")
    return ports[0], tuple(dict.fromkeys(r for r, _ in parsed.routes)), (
        parsed.sticky[0] if parsed.sticky is not None else None)


_Identity = tuple[str, str, int, tuple[Route, ...], bool | None]


def _identify(what: str, grouping: str, project: str, service: str, labels: dict[str, str],
              domain: str | None, skipped: list[str]) -> _Identity | None:
    """(app, service, port, routes, sticky) of a labelled container or Swarm service; None,
    with the reason in ``skipped``, if it cannot be routed."""
    app, svc = router_name(project), router_name(service)
    if app is None or svc is None:
        skipped.append(f"{what}: {grouping} {project!r} or service {service!r} cannot be an "
                       "app or service name (^[a-z0-9][a-z0-9-]{0,62}$)")
        return None
    try:
        return (app, svc, *_routing(labels, what, domain))
    except ConfigError as e:
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


def _container_address(c: dict[str, Any], port: int, cfg: DockerProviderConfig,
                       ) -> tuple[str | None, str]:
    """(address, why there is none)."""
    if cfg.published_ports:
        addr = _published(c.get("Ports") or [], port, cfg.host, "PrivatePort", "PublicPort", "IP")
        return addr, f"no host port published for port {port}"
    networks: dict[str, Any] = (c.get("NetworkSettings") or {}).get("Networks") or {}
    if (c.get("HostConfig") or {}).get("NetworkMode") == "host" or "host" in networks:
        return format_hostport(cfg.host, port, ":" in cfg.host), ""
    if cfg.network is not None:
        net = networks.get(cfg.network)
        if not net or not net.get("IPAddress"):
            return None, f"not on network {cfg.network!r} (providers.docker.network)"
        return format_hostport(net["IPAddress"], port, False), ""
    with_ip = [n for n in networks.values() if n.get("IPAddress")]
    if len(with_ip) != 1:
        return None, (f"on {len(with_ip)} networks with an address; name the one to use in "
                      "providers.docker.network")
    return format_hostport(with_ip[0]["IPAddress"], port, False), ""


def from_containers(containers: list[dict[str, Any]], cfg: DockerProviderConfig,
                    domain: str | None) -> Listing:
    """Versions from ``GET /containers/json`` (running containers). Containers of Swarm tasks
    are left to ``from_swarm``."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], int, tuple[Route, ...],
                                            bool | None]]] = {}
    skipped: list[str] = []
    for c in containers:
        labels = c.get("Labels") or {}
        if not _routed(labels) or SWARM_SERVICE_LABEL in labels:
            continue
        cname = ((c.get("Names") or ["/" + c.get("Id", "")[:12]])[0]).lstrip("/")
        what = f"container {cname}"
        project, service = labels.get(PROJECT_LABEL), labels.get(SERVICE_LABEL)
        if not project or not service:
            skipped.append(f"{what}: has routing labels but no {PROJECT_LABEL} and "
                           f"{SERVICE_LABEL} labels (compose sets them), so no app")
            continue
        identity = _identify(what, "project", project, service, labels, domain, skipped)
        if identity is None:
            continue
        app, svc, port, routes, sticky = identity
        groups.setdefault((app, svc), []).append((c, port, routes, sticky))
    versions = []
    for (app, svc), members in sorted(groups.items()):
        instances = []
        for c, port, _, _ in members:
            addr, why = _container_address(c, port, cfg)
            if addr is None:
                name = ((c.get("Names") or [""])[0]).lstrip("/")
                skipped.append(f"container {name}: {why}")
            instances.append(Instance(c["Id"], addr, _health(c.get("Status", ""))))
        routes = tuple(dict.fromkeys(r for m in members for r in m[2]))
        sticky = next((m[3] for m in members if m[3] is not None), None)
        created = min(float(c.get("Created", 0)) for c, *_ in members)
        versions.append(Version(app, svc, routes, sticky, created, tuple(instances)))
    return Listing(versions, skipped)


def _timestamp(text: str) -> float:
    # Docker writes nanoseconds ("2026-11-29T14:26:55.939130466Z"); datetime takes microseconds.
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", text or "")
    if m is None:
        return 0.0
    base = datetime.fromisoformat(m.group(1) + "+00:00").timestamp()
    return base + float("0." + m.group(2)) if m.group(2) else base


def _task_address(task: dict[str, Any], service: dict[str, Any], port: int,
                  nodes: dict[str, str], cfg: DockerProviderConfig) -> tuple[str | None, str]:
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
    if cfg.network is not None:
        chosen = by_name.get(cfg.network)
        if chosen is None:
            return None, f"not on network {cfg.network!r} (providers.docker.network)"
    elif len(attachments) == 1:
        chosen = attachments[0]
    else:
        return None, (f"on {len(attachments)} networks; name the one to use in "
                      "providers.docker.network")
    addresses = chosen.get("Addresses") or []
    if not addresses:
        return None, "no address on its network yet"
    ip = str(addresses[0]).split("/")[0]
    return format_hostport(ip, port, ":" in ip), ""


def from_swarm(services: list[dict[str, Any]], tasks: list[dict[str, Any]],
               nodes: list[dict[str, Any]], cfg: DockerProviderConfig,
               domain: str | None) -> Listing:
    """Versions from ``GET /services``, ``/tasks`` and ``/nodes`` of a Swarm manager: the whole
    Swarm, whichever node answers."""
    node_addr = {n["ID"]: str((n.get("Status") or {}).get("Addr") or "") for n in nodes}
    by_service: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        # A task the orchestrator is shutting down goes first: it is about to be stopped.
        if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") in (
                "starting", "running"):
            by_service.setdefault(t.get("ServiceID", ""), []).append(t)
    versions, skipped = [], []
    for s in services:
        spec = s.get("Spec") or {}
        template = spec.get("TaskTemplate") or {}
        container_spec = template.get("ContainerSpec") or {}
        labels = {**(container_spec.get("Labels") or {}), **(spec.get("Labels") or {})}
        if not _routed(labels):
            continue
        what = f"service {spec.get('Name')}"
        stack = labels.get(STACK_LABEL)
        if not stack:
            skipped.append(f"{what}: has routing labels but no {STACK_LABEL} label "
                           "(docker stack deploy sets it), so no app")
            continue
        full = str(spec.get("Name", ""))
        name = full[len(stack) + 1:] if full.startswith(stack + "_") else full
        identity = _identify(what, "stack", stack, name, labels, domain, skipped)
        if identity is None:
            continue
        app, svc, port, routes, sticky = identity
        test = (container_spec.get("Healthcheck") or {}).get("Test") or []
        checked = bool(test) and test[0] != "NONE"
        instances = []
        for t in by_service.get(s["ID"], []):
            addr, why = _task_address(t, s, port, node_addr, cfg)
            if addr is None:
                skipped.append(f"{what}: task {t.get('ID', '')[:12]}: {why}")
            state = (t.get("Status") or {}).get("State")
            health = ("healthy" if state == "running" else "starting") if checked else (
                None if state == "running" else "starting")
            container = ((t.get("Status") or {}).get("ContainerStatus") or {}).get(
                "ContainerID") or ""
            instances.append(Instance(container, addr, health))
        versions.append(Version(app, svc, routes, sticky, _timestamp(s.get("CreatedAt", "")),
                                tuple(instances), s["ID"]))
    versions.sort(key=lambda v: (v.project, v.name))
    return Listing(versions, skipped)
