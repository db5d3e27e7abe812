"""The whole configuration file: its sections, and reading it from YAML.

``load_config(path)`` reads and validates a file; ``config_from_dict`` validates data already
parsed. Either gives a ``Config`` or raises ``ConfigError`` naming the file, the key path, the
reason and the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING, Any

import yaml

from .apps import parse_app_routes, parse_health_check
from .model import (
    DEFAULT_SOURCE,
    AccessLogConfig,
    AdminConfig,
    AppConfig,
    Config,
    ConfigError,
    DockerProviderConfig,
    HandoffConfig,
    Limits,
    LoggingConfig,
    NetworkType,
    PassiveHealthConfig,
    ProvidersConfig,
    Route,
    StickyConfig,
    Timeouts,
    UpstreamConfig,
)
from .scalars import (
    check_bool,
    check_int,
    check_mapping,
    check_str,
    is_dns_name,
    is_loopback,
    parse_duration,
    parse_listen,
    parse_size,
    positive_duration,
    read_secret_file,
    resolve_file,
    section,
    split_backend,
    web_origin,
)

_TOP_KEYS = (
    "listen",
    "admin",
    "domain",
    "sticky",
    "timeouts",
    "trusted_proxies",
    "access_log",
    "logging",
    "public_url",
    "limits",
    "upstream",
    "passive_health",
    "providers",
    "handoff",
    "apps",
)
_ADMIN_KEYS = ("listen", "token_file", "allowed_hosts", "allowed_origins", "metrics_public")
_STICKY_KEYS = ("cookie", "max_idle", "max_life", "secret_file")
_TIMEOUT_KEYS = ("connect", "response", "client_header", "client_idle", "client_body",
                 "client_send", "tunnel_idle", "grace", "drain_delay", "worker")
_PASSIVE_KEYS = ("failures", "cooldown")
_ACCESS_LOG_KEYS = ("enabled", "format")
_LOGGING_KEYS = ("format",)
_LOGGING_FORMATS = ("text", "json")
_PROVIDER_KEYS = ("docker",)
_DOCKER_KEYS = ("endpoint", "swarm", "network", "published_ports", "host", "health_check",
                "refresh", "empty_apps")
_EMPTY_APPS = ("keep", "delete")
_LIMIT_KEYS = ("max_request_line", "max_header", "max_headers", "max_header_fields",
               "max_connections")
_UPSTREAM_KEYS = ("reuse",)
_REUSE_POLICIES = ("safe", "always")
_HANDOFF_KEYS = ("socket",)
# A Unix socket's path is at most 107 bytes on Linux (sun_path).
_MAX_SOCKET_PATH = 107
_ACCESS_LOG_FORMATS = ("json", "combined")
# RFC 6265 cookie-name = token (RFC 2616 tchar).
_COOKIE_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}\Z")


def _parse_admin(data: dict[str, object], source: str, base_dir: str | None) -> AdminConfig:
    m = section(data, "admin", "", _ADMIN_KEYS, source)
    default = AdminConfig()
    host, port = default.host, default.port
    if m.get("listen") is not None:
        host, port = parse_listen(m["listen"], "admin.listen", source)
    token_file: str | None = None
    token: str | None = None
    if m.get("token_file") is not None:
        token_file = resolve_file(check_str(m["token_file"], "admin.token_file", source), base_dir)
        token = read_secret_file(token_file, "admin.token_file", source)
    else:
        token = os.environ.get("ROUTER_ADMIN_TOKEN", "").strip() or None
    if token is None and not is_loopback(host):
        raise ConfigError(
            "admin.token_file",
            "required when admin.listen is not on loopback (or set ROUTER_ADMIN_TOKEN)",
            m.get("token_file"),
            source,
        )
    hosts = tuple(_allowed_host(h, f"admin.allowed_hosts[{i}]", source)
                  for i, h in enumerate(_strings(m.get("allowed_hosts"), "admin.allowed_hosts",
                                                 source)))
    if "*" in hosts and token is None:
        raise ConfigError("admin.allowed_hosts", "'*' needs an admin token (admin.token_file): "
                          "without one, any web page could reach the admin API by DNS rebinding",
                          m.get("allowed_hosts"), source)
    origins = []
    for i, text in enumerate(_strings(m.get("allowed_origins"), "admin.allowed_origins", source)):
        origin = web_origin(text)
        if origin is None:
            raise ConfigError(f"admin.allowed_origins[{i}]", "must be an origin as a browser "
                              "sends it: http:// or https://, a host, an optional port, no path",
                              text, source)
        origins.append(origin)
    metrics_public = is_loopback(host)
    if m.get("metrics_public") is not None:
        metrics_public = check_bool(m["metrics_public"], "admin.metrics_public", source)
        if not metrics_public and token is None:
            raise ConfigError("admin.metrics_public", "false needs an admin token "
                              "(admin.token_file or ROUTER_ADMIN_TOKEN) for /metrics to ask for",
                              False, source)
    return AdminConfig(host=host, port=port, token_file=token_file, token=token,
                       allowed_hosts=hosts, allowed_origins=tuple(origins),
                       metrics_public=metrics_public)


def _strings(value: object, path: str, source: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(path, "must be a list of strings", value, source)
    return value


def _allowed_host(text: str, path: str, source: str) -> str:
    """An ``admin.allowed_hosts`` entry: ``*``, a name, or ``.name`` (it and every name under
    it); lower case, without a trailing dot."""
    host = text.lower().rstrip(".")
    if host == "*":
        return host
    if not is_dns_name(host[1:] if host.startswith(".") else host):
        raise ConfigError(path, "must be a host name without scheme or port (every port is "
                          "allowed), '.example.com' for it and every name under it, or '*'",
                          text, source)
    return host


# router.dataplane.sticky.load_or_create_secret refuses shorter secrets: an HMAC key needs some entropy.
_MIN_SECRET_BYTES = 16


def _check_sticky_secret_file(name: str, source: str) -> None:
    """Fail at load, not on first use: the secret file is read, or created when absent."""
    path = "sticky.secret_file"
    try:
        with open(name, "rb") as fh:
            secret = fh.read().strip()
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(name))
        if not os.path.isdir(directory):
            raise ConfigError(
                path, f"file does not exist and cannot be created: no directory {directory}",
                name, source,
            ) from None
        return
    except OSError as exc:
        raise ConfigError(path, f"cannot read file: {exc}", name, source) from None
    if len(secret) < _MIN_SECRET_BYTES:
        raise ConfigError(
            path, f"secret is shorter than {_MIN_SECRET_BYTES} bytes", name, source
        )


def _parse_sticky(data: dict[str, object], source: str, base_dir: str | None) -> StickyConfig:
    m = section(data, "sticky", "", _STICKY_KEYS, source)
    default = StickyConfig()
    cookie = default.cookie
    if "cookie" in m:
        cookie_value = m["cookie"]
        if not isinstance(cookie_value, str) or not _COOKIE_RE.match(cookie_value):
            raise ConfigError(
                "sticky.cookie",
                "must be a cookie name: 1..64 letters, digits or !#$%&'*+-.^_`|~ (RFC 6265 token)",
                cookie_value,
                source,
            )
        cookie = cookie_value
    secret_file: str | None = None
    if m.get("secret_file") is not None:
        secret_file = resolve_file(check_str(m["secret_file"], "sticky.secret_file", source), base_dir)
        _check_sticky_secret_file(secret_file, source)
    return StickyConfig(
        cookie=cookie,
        max_idle=positive_duration(m["max_idle"], "sticky.max_idle", source)
        if "max_idle" in m else default.max_idle,
        max_life=positive_duration(m["max_life"], "sticky.max_life", source)
        if "max_life" in m else default.max_life,
        secret_file=secret_file,
    )


def _parse_timeouts(data: dict[str, object], source: str) -> Timeouts:
    m = section(data, "timeouts", "", _TIMEOUT_KEYS, source)
    values: dict[str, float] = {}
    for key, raw in m.items():
        key_path = f"timeouts.{key}"
        # grace 0 means "stop at once"; every other timeout of 0 would fail every request.
        if key in ("grace", "drain_delay"):
            values[key] = parse_duration(raw, key_path, source)
        else:
            values[key] = positive_duration(raw, key_path, source)
    return Timeouts(**values)


def _parse_limits(data: dict[str, object], source: str) -> Limits:
    m = section(data, "limits", "", _LIMIT_KEYS, source)
    values: dict[str, int] = {}
    for key, raw in m.items():
        key_path = f"limits.{key}"
        if key in ("max_connections", "max_header_fields"):
            values[key] = check_int(raw, key_path, source)
        else:
            values[key] = parse_size(raw, key_path, source)
    return Limits(**values)


def _parse_upstream(data: dict[str, object], source: str) -> UpstreamConfig:
    m = section(data, "upstream", "", _UPSTREAM_KEYS, source)
    reuse = m.get("reuse", UpstreamConfig().reuse)
    if reuse not in _REUSE_POLICIES:
        raise ConfigError("upstream.reuse", "must be 'safe' or 'always'", reuse, source)
    assert isinstance(reuse, str)
    return UpstreamConfig(reuse=reuse)


def _parse_passive_health(data: dict[str, object], source: str) -> PassiveHealthConfig:
    m = section(data, "passive_health", "", _PASSIVE_KEYS, source)
    default = PassiveHealthConfig()
    return PassiveHealthConfig(
        failures=check_int(m["failures"], "passive_health.failures", source, minimum=0)
        if "failures" in m else default.failures,
        cooldown=positive_duration(m["cooldown"], "passive_health.cooldown", source)
        if "cooldown" in m else default.cooldown,
    )


def _parse_handoff(data: dict[str, object], source: str, base_dir: str | None) -> HandoffConfig:
    m = section(data, "handoff", "", _HANDOFF_KEYS, source)
    if m.get("socket") is None:
        return HandoffConfig()
    path = resolve_file(check_str(m["socket"], "handoff.socket", source), base_dir)
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ConfigError("handoff.socket", f"must be a path of at most {_MAX_SOCKET_PATH} bytes "
                          "(a Unix socket's limit)", path, source)
    return HandoffConfig(socket=path)


def _parse_access_log(data: dict[str, object], source: str) -> AccessLogConfig:
    m = section(data, "access_log", "", _ACCESS_LOG_KEYS, source)
    default = AccessLogConfig()
    enabled = default.enabled
    if "enabled" in m:
        enabled = check_bool(m["enabled"], "access_log.enabled", source)
    fmt = m.get("format", default.format)
    if fmt not in _ACCESS_LOG_FORMATS:
        raise ConfigError("access_log.format", "must be 'json' or 'combined'", fmt, source)
    assert isinstance(fmt, str)
    return AccessLogConfig(enabled=enabled, format=fmt)


def _parse_logging(data: dict[str, object], source: str) -> LoggingConfig:
    m = section(data, "logging", "", _LOGGING_KEYS, source)
    fmt = m.get("format", LoggingConfig().format)
    if fmt not in _LOGGING_FORMATS:
        raise ConfigError("logging.format", "must be 'text' or 'json'", fmt, source)
    assert isinstance(fmt, str)
    return LoggingConfig(format=fmt)


# scheme://HOST[:PORT], where HOST may be {host}: the route's host name.
_PUBLIC_URL_RE = re.compile(
    r"^https?://(\{host\}|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")


def _parse_public_url(value: object, source: str) -> str | None:
    if value is None:
        return None
    m = _PUBLIC_URL_RE.match(value) if isinstance(value, str) else None
    if m is None or (m.group(2) is not None and not 1 <= int(m.group(2)[1:]) <= 65535):
        raise ConfigError("public_url", "must be a scheme, a host (or {host}: the route's) and "
                          "an optional port, like https://{host} or http://{host}:8080 (no path)",
                          value, source)
    return m.string


def parse_docker_endpoint(value: object, path: str, source: str = DEFAULT_SOURCE) -> str:
    """``unix:///absolute/path`` or ``tcp://host:port`` (plain HTTP, as ``dockerd -H``)."""
    reason = "must be unix:///path/to/docker.sock or tcp://host:port"
    if not isinstance(value, str):
        raise ConfigError(path, reason, value, source)
    if value.startswith("unix://"):
        if not value[len("unix://"):].startswith("/"):
            raise ConfigError(path, "a unix:// endpoint needs an absolute path", value, source)
        return value
    if value.startswith(("tcp://", "http://")):
        rest = value.split("://", 1)[1].rstrip("/")
        host, port, ipv6 = split_backend(rest, path, source)
        if port is None:
            raise ConfigError(path, "a tcp:// endpoint needs a port (dockerd -H tcp://...:2375)",
                              value, source)
        return f"tcp://[{host}]:{port}" if ipv6 else f"tcp://{host}:{port}"
    raise ConfigError(path, reason, value, source)


def _parse_docker(value: object, source: str) -> DockerProviderConfig:
    path = "providers.docker"
    default = DockerProviderConfig()
    if value is None:  # "docker:" with nothing under it: every default
        return default
    m = check_mapping(value, path, _DOCKER_KEYS, source)
    swarm = m.get("swarm", "auto")
    if swarm == "auto":
        swarm = None
    elif not isinstance(swarm, bool):
        raise ConfigError(f"{path}.swarm", "must be true, false or auto", swarm, source)
    network = default.network
    if m.get("network") is not None:
        network = check_str(m["network"], f"{path}.network", source)
    host = default.host
    if "host" in m:
        host, _, _ = split_backend(m["host"], f"{path}.host", source)
    empty_apps = m.get("empty_apps", default.empty_apps)
    if empty_apps not in _EMPTY_APPS:
        raise ConfigError(f"{path}.empty_apps", "must be keep or delete", empty_apps, source)
    return DockerProviderConfig(
        endpoint=parse_docker_endpoint(m.get("endpoint", default.endpoint), f"{path}.endpoint",
                                       source),
        swarm=swarm,
        network=network,
        published_ports=check_bool(m["published_ports"], f"{path}.published_ports", source)
        if "published_ports" in m else default.published_ports,
        host=host,
        health_check=parse_health_check(m.get("health_check"), f"{path}.health_check", source),
        refresh=positive_duration(m["refresh"], f"{path}.refresh", source)
        if "refresh" in m else default.refresh,
        empty_apps=str(empty_apps),
    )


def _parse_providers(data: dict[str, object], source: str) -> ProvidersConfig:
    m = section(data, "providers", "", _PROVIDER_KEYS, source)
    if "docker" not in m:
        return ProvidersConfig()
    return ProvidersConfig(docker=_parse_docker(m["docker"], source))


def _parse_trusted_proxies(value: object, source: str) -> tuple[NetworkType, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(
            "trusted_proxies", "must be a list of CIDRs or IP addresses", value, source
        )
    networks: list[NetworkType] = []
    for i, raw in enumerate(value):
        item_path = f"trusted_proxies[{i}]"
        if not isinstance(raw, str):
            raise ConfigError(
                item_path, "must be a CIDR like 10.0.0.0/8 or an IP address", raw, source
            )
        try:
            network = ipaddress.ip_network(raw.strip())
        except ValueError as exc:
            raise ConfigError(
                item_path, f"must be a CIDR like 10.0.0.0/8 or an IP address ({exc})", raw, source
            ) from None
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def _parse_domain(value: object, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_dns_name(value.lower()):
        raise ConfigError("domain", "must be a DNS name like example.com", value, source)
    return value.lower()


def _addresses_overlap(a: str, b: str) -> bool:
    return a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def _config_from_dict(data: object, source: str, base_dir: str | None) -> Config:
    if data is None:
        data = {}
    top = check_mapping(data, "", _TOP_KEYS, source, what="a mapping of keys at the top level")
    default = Config()

    listen_host, listen_port = default.listen_host, default.listen_port
    if top.get("listen") is not None:
        listen_host, listen_port = parse_listen(top["listen"], "listen", source)
    admin = _parse_admin(top, source, base_dir)
    if (
        listen_port != 0
        and admin.port == listen_port
        and _addresses_overlap(listen_host, admin.host)
    ):
        raise ConfigError(
            "admin.listen",
            "must not be the data plane's listen address",
            f"{admin.host}:{admin.port}",
            source,
        )
    domain = _parse_domain(top.get("domain"), source)

    raw_apps = top.get("apps")
    if raw_apps is None:
        raw_apps = {}
    if not isinstance(raw_apps, dict):
        raise ConfigError("apps", "must be a mapping of app names to apps", raw_apps, source)
    apps: list[AppConfig] = []
    claimed: dict[Route, str] = {}  # route -> app name
    for name, app_data in raw_apps.items():
        app, origins = parse_app_routes(name, app_data, domain, f"apps.{name}", source)
        for route, origin in origins.items():
            owner = claimed.get(route)
            if owner is not None:
                raise ConfigError(
                    origin,
                    f"route {route} is claimed by both apps {owner!r} and {app.name!r}",
                    str(route),
                    source,
                )
            claimed[route] = app.name
        apps.append(app)

    return Config(
        listen_host=listen_host,
        listen_port=listen_port,
        admin=admin,
        domain=domain,
        sticky=_parse_sticky(top, source, base_dir),
        timeouts=_parse_timeouts(top, source),
        limits=_parse_limits(top, source),
        upstream=_parse_upstream(top, source),
        trusted_proxies=_parse_trusted_proxies(top.get("trusted_proxies"), source),
        access_log=_parse_access_log(top, source),
        logging=_parse_logging(top, source),
        public_url=_parse_public_url(top.get("public_url"), source),
        passive_health=_parse_passive_health(top, source),
        providers=_parse_providers(top, source),
        handoff=_parse_handoff(top, source, base_dir),
        apps=tuple(apps),
        source=None if source == DEFAULT_SOURCE else source,
    )


def config_from_dict(data: object, source: str = DEFAULT_SOURCE) -> Config:
    """A validated Config from already-parsed YAML/JSON data (None gives the defaults).

    Relative ``token_file`` / ``secret_file`` paths are taken as they are (relative to the
    working directory); ``load_config`` resolves them against the file's directory.
    """
    return _config_from_dict(data, source, None)


_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


# libyaml's loader when PyYAML was built with it (faster), else the pure Python one.
if TYPE_CHECKING:
    from yaml import SafeLoader as _SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """Safe YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _YAML_MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=False)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def read_yaml(path: str) -> object:
    """The YAML document in the file ``path``, parsed as the configuration is (safe, duplicate
    keys refused); ``ConfigError`` naming the file, and the line for a syntax error."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = f"cannot read configuration file: {exc.strerror or exc}"
        raise ConfigError("", reason, path, path) from None
    return parse_yaml(raw, path)


def parse_yaml(raw: bytes, source: str) -> object:
    """:func:`read_yaml` of bytes already read; ``source`` names them in errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        raise ConfigError("", reason, raw[exc.start : exc.start + 8], source) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is None:
            raise ConfigError("", f"invalid YAML: {problem}", None, source) from None
        lines = text.splitlines()
        line_text = lines[mark.line].strip() if mark.line < len(lines) else ""
        raise ConfigError(
            "",
            f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}",
            line_text,
            source,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}", None, source) from None


def load_config(path: str) -> Config:
    """Read, parse and validate a YAML configuration file.

    Every failure is a ConfigError with ``source=path``: unreadable file, YAML syntax error
    (with its line), a top level that is not a mapping, and every validation error.  An empty
    file gives the default Config.  Relative file names inside (token_file, secret_file) are
    resolved against the file's directory, as the file store is kept next to it.
    """
    data = read_yaml(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    return _config_from_dict(data, path, base_dir)
