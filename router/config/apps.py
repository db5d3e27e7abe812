"""Apps and services: a service's weight, backends and health check; an app's routes and
stickiness. Used for the configuration file and, through ``parse_app`` and
``parse_service``, by the admin API.
"""

from __future__ import annotations

import re

from .labels import Labels, parse_labels, parse_route
from .model import (
    DEFAULT_SOURCE,
    AppConfig,
    ConfigError,
    HealthCheckConfig,
    PreviewConfig,
    Route,
    ServiceConfig,
)
from .scalars import (
    check_bool,
    check_int,
    check_mapping,
    check_name,
    format_hostport,
    join_path,
    positive_duration,
    split_backend,
)

_APP_KEYS = ("session_sticky", "drain_timeout", "preview", "routes", "services")
_SERVICE_KEYS = ("weight", "backends", "health_check")
_SERVICE_KEYS_WITH_LABELS = (*_SERVICE_KEYS, "labels")
_HEALTH_KEYS = ("path", "interval", "timeout", "rise", "fall")
# A service without "weight" takes all the traffic it can get: 100 is the top of Aliyun's 0..100
# weight range, so a single-version app needs no weight at all.
_DEFAULT_WEIGHT = 100
_HC_PATH_RE = re.compile(r"/[\x21-\x7e]*\Z")
# RFC 9110 5.1: a field name is a token.
_FIELD_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")
_FIELD_VALUE_RE = re.compile(r"[\x21-\x7e]{1,256}\Z")
# Fields a preview marker cannot be: the framing, the routing and the router's own fields, and
# the cookie (the preview cookie is a cookie of its own).
_NOT_PREVIEW = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "proxy-connection", "te", "trailer", "upgrade", "expect", "cookie", "x-forwarded-for",
    "x-forwarded-proto", "x-forwarded-host", "x-request-id", "forwarded", "x-real-ip",
})
_PREVIEW_KEYS = ("header", "value")


def parse_preview(data: object, path: str, source: str = DEFAULT_SOURCE) -> PreviewConfig | None:
    """``{header: X-Preview, value: ...}`` (value optional: the new service's name); null: none."""
    if data is None:
        return None
    m = check_mapping(data, path, _PREVIEW_KEYS, source)
    header = m.get("header")
    if not isinstance(header, str) or not _FIELD_NAME_RE.match(header):
        raise ConfigError(join_path(path, "header"), "required: a header field name like "
                          "X-Preview (letters, digits and !#$%&'*+.^_`|~-, at most 64)",
                          header, source)
    if header.lower() in _NOT_PREVIEW:
        raise ConfigError(join_path(path, "header"), "is a field the router reads or sets "
                          "itself; choose another, like X-Preview", header, source)
    value = m.get("value")
    if value is not None and (not isinstance(value, str) or not _FIELD_VALUE_RE.match(value)):
        raise ConfigError(join_path(path, "value"), "must be 1..256 visible ASCII characters "
                          "(or null: the new service's name)", value, source)
    return PreviewConfig(header, value)


def parse_health_check(
    data: object, path: str, source: str = DEFAULT_SOURCE
) -> HealthCheckConfig | None:
    """A HealthCheckConfig from {path, interval, timeout, rise, fall}; null gives None."""
    if data is None:
        return None
    m = check_mapping(data, path, _HEALTH_KEYS, source)
    hc = HealthCheckConfig()
    check_path = m.get("path")
    if check_path is not None and (
        not isinstance(check_path, str) or not _HC_PATH_RE.match(check_path)
    ):
        raise ConfigError(
            join_path(path, "path"), "must be a URL path starting with '/', without spaces",
            check_path, source,
        )
    return HealthCheckConfig(
        path=check_path,
        interval=positive_duration(m["interval"], join_path(path, "interval"), source)
        if "interval" in m else hc.interval,
        timeout=positive_duration(m["timeout"], join_path(path, "timeout"), source)
        if "timeout" in m else hc.timeout,
        rise=check_int(m["rise"], join_path(path, "rise"), source) if "rise" in m else hc.rise,
        fall=check_int(m["fall"], join_path(path, "fall"), source) if "fall" in m else hc.fall,
    )


def _parse_weight(value: object, path: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ConfigError(path, "must be an integer 0..100", value, source)
    return value


def _parse_service(
    name: object,
    data: object,
    domain: str | None,
    path: str,
    source: str,
    allow_labels: bool,
) -> tuple[ServiceConfig, Labels]:
    svc_name = check_name(name, path, "service", source)
    m = check_mapping(data, path, _SERVICE_KEYS_WITH_LABELS if allow_labels else _SERVICE_KEYS, source)
    weight = (
        _parse_weight(m["weight"], join_path(path, "weight"), source)
        if "weight" in m else _DEFAULT_WEIGHT
    )
    labels = parse_labels(m.get("labels"), domain, join_path(path, "labels"), source)

    backends_path = join_path(path, "backends")
    if "backends" not in m:
        raise ConfigError(
            backends_path, "required: a list of 'host:port' (may be empty)", None, source
        )
    raw_backends = m["backends"]
    if not isinstance(raw_backends, list):
        raise ConfigError(backends_path, "must be a list of 'host:port'", raw_backends, source)
    backends: list[str] = []
    for i, raw in enumerate(raw_backends):
        item_path = f"{backends_path}[{i}]"
        host, port, ipv6 = split_backend(raw, item_path, source)
        if port is None:
            if not labels.ports:
                raise ConfigError(
                    item_path,
                    "missing ':port' (and no aliyun.routing.port_<P> label gives one)",
                    raw,
                    source,
                )
            if len(set(labels.ports)) > 1:
                raise ConfigError(
                    item_path,
                    "missing ':port' is ambiguous: the service has labels for ports "
                    + ", ".join(str(p) for p in sorted(set(labels.ports))),
                    raw,
                    source,
                )
            port = labels.ports[0]
        backend = format_hostport(host, port, ipv6)
        if backend in backends:
            raise ConfigError(item_path, f"duplicate backend {backend}", raw, source)
        backends.append(backend)

    health = parse_health_check(m.get("health_check"), join_path(path, "health_check"), source)
    return ServiceConfig(svc_name, weight, tuple(backends), health), labels


def parse_service(
    name: str, data: object, path: str, source: str = DEFAULT_SOURCE
) -> ServiceConfig:
    """A service from {weight, backends, health_check}, as the admin API receives it.

    Labels are a configuration-file feature (they change the app's routes and stickiness) and are
    refused here; ``path`` is e.g. "apps.shop.services.web".
    """
    service, _ = _parse_service(name, data, None, path, source, allow_labels=False)
    return service


def parse_app_routes(
    name: object, data: object, domain: str | None, path: str, source: str
) -> tuple[AppConfig, dict[Route, str]]:
    """The app and, for each of its routes, the key path that declared it."""
    app_name = check_name(name, path, "app", source)
    m = check_mapping(data, path, _APP_KEYS, source)

    sticky_path = join_path(path, "session_sticky")
    explicit_sticky: bool | None = None
    if "session_sticky" in m:
        explicit_sticky = check_bool(m["session_sticky"], sticky_path, source)
    drain = m.get("drain_timeout")
    drain_timeout: float | None = None
    if drain is not None:
        drain_timeout = positive_duration(drain, join_path(path, "drain_timeout"), source)
    preview = parse_preview(m.get("preview"), join_path(path, "preview"), source)

    routes_path = join_path(path, "routes")
    raw_routes = m.get("routes")
    if raw_routes is None:
        raw_routes = []
    if not isinstance(raw_routes, list):
        raise ConfigError(
            routes_path, "must be a list of 'host' or 'host/path' strings", raw_routes, source
        )
    origins: dict[Route, str] = {}
    for i, raw in enumerate(raw_routes):
        item_path = f"{routes_path}[{i}]"
        route = parse_route(raw, item_path, source)
        if route in origins:
            raise ConfigError(
                item_path, f"route {route} is listed twice in app {app_name!r}", raw, source
            )
        origins[route] = item_path

    services_path = join_path(path, "services")
    raw_services = m.get("services")
    if not isinstance(raw_services, dict) or not raw_services:
        raise ConfigError(
            services_path, "must be a mapping with at least one service", raw_services, source
        )
    services: list[ServiceConfig] = []
    label_sticky: tuple[bool, str] | None = None
    for svc_name, svc_data in raw_services.items():
        service, labels = _parse_service(
            svc_name, svc_data, domain, f"{services_path}.{svc_name}", source, allow_labels=True
        )
        services.append(service)
        # Blue and green versions usually carry the same routing label: merge, don't refuse.
        for route, origin in labels.routes:
            origins.setdefault(route, origin)
        if labels.sticky is not None:
            value, origin = labels.sticky
            if explicit_sticky is not None and value != explicit_sticky:
                raise ConfigError(
                    origin,
                    f"conflicts with {sticky_path}: {str(explicit_sticky).lower()}",
                    value,
                    source,
                )
            if label_sticky is not None and label_sticky[0] != value:
                raise ConfigError(
                    origin,
                    f"conflicts with {label_sticky[1]} (stickiness is per app)",
                    value,
                    source,
                )
            label_sticky = labels.sticky

    if not origins:
        raise ConfigError(
            routes_path,
            "an app needs at least one route (in routes or an aliyun.routing.port_<P> label)",
            m.get("routes"),
            source,
        )
    if explicit_sticky is not None:
        session_sticky = explicit_sticky
    elif label_sticky is not None:
        session_sticky = label_sticky[0]
    else:
        session_sticky = True
    app = AppConfig(
        name=app_name,
        routes=tuple(origins),
        services=tuple(services),
        session_sticky=session_sticky,
        drain_timeout=drain_timeout,
        preview=preview,
    )
    return app, origins


def parse_app(
    name: str, data: object, domain: str | None, path: str, source: str = DEFAULT_SOURCE
) -> AppConfig:
    """An AppConfig from its mapping; ``path`` is its key path, e.g. "apps.shop".

    Checks everything about one app; routes claimed by two apps are checked by the caller
    (``config_from_dict`` for the file).
    """
    app, _ = parse_app_routes(name, data, domain, path, source)
    return app
