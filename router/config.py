"""Configuration: frozen dataclasses, YAML loading, validation, Aliyun routing labels.

Everything here is validated once, at load (or by the admin API through ``parse_app`` /
``parse_service``), and then never changes: the dataclasses are frozen and hold only tuples, so a
``Config`` can be shared by every task without copying.  Every error is a :class:`ConfigError`
naming the file, the dotted key path, the reason and the offending value, e.g.::

    /etc/router.yaml: apps.shop.services.web.weight: must be an integer 0..100 (got 101)

Key paths use dots for mapping keys and ``[i]`` for list items
(``apps.shop.services.web.backends[1]``).  Label keys contain dots themselves and are appended as
written (``apps.shop.services.web.labels.aliyun.routing.port_80``).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import yaml

__all__ = [
    "NAME_RE",
    "AccessLogConfig",
    "AdminConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "HealthCheckConfig",
    "Limits",
    "PassiveHealthConfig",
    "Route",
    "ServiceConfig",
    "StickyConfig",
    "Timeouts",
    "config_from_dict",
    "load_config",
    "parse_app",
    "parse_backend",
    "parse_duration",
    "parse_health_check",
    "parse_listen",
    "parse_route",
    "parse_routing_label",
    "parse_service",
    "split_hostport",
]

# App and service names (SPEC 2).  ``\Z`` rather than ``$``: ``$`` also matches before a trailing
# newline, so ``NAME_RE.match("shop\n")`` would succeed with it.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")

NetworkType = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_SOURCE = "<config>"
# A value's repr is cut in messages beyond this many characters (a whole app mapping can be long).
_MAX_VALUE_REPR = 200


class ConfigError(Exception):
    """A configuration value that was refused, with where it was and why.

    ``str(err)`` is ``"{source}: {path}: {reason} (got {value!r})"``; when the error is about the
    document as a whole (``path == ""``) the empty path segment is left out.
    """

    def __init__(
        self, path: str, reason: str, value: object = None, source: str = _DEFAULT_SOURCE
    ) -> None:
        self.source = source
        self.path = path
        self.value = value
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        shown = repr(self.value)
        if len(shown) > _MAX_VALUE_REPR:
            shown = shown[: _MAX_VALUE_REPR - 3] + "..."
        where = f"{self.source}: {self.path}: " if self.path else f"{self.source}: "
        return f"{where}{self.reason} (got {shown})"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error picklable across worker processes despite the custom signature.
        return (type(self), (self.path, self.reason, self.value, self.source))


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """A host name, optionally with a path prefix (SPEC 2)."""

    host: str  # lower-case host name, no port
    path: str = "/"  # starts with "/", no trailing "/" except the root "/"

    def __str__(self) -> str:
        return self.host if self.path == "/" else self.host + self.path


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active health check of every backend of one service."""

    path: str | None = None  # None: TCP connect; else HTTP GET of this path
    interval: float = 2.0  # HAProxy's default "inter 2s"
    timeout: float = 1.0  # half the interval, so one probe never overlaps the next
    rise: int = 2  # HAProxy's default "rise 2": consecutive successes to become healthy
    fall: int = 3  # HAProxy's default "fall 3": consecutive failures to become unhealthy


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One version of an app: a weight and its backends."""

    name: str
    weight: int  # 0..100, relative to the other services of the app
    backends: tuple[str, ...]  # normalised "host:port" ("[::1]:8080" for IPv6), no duplicates
    health_check: HealthCheckConfig | None = None


@dataclass(frozen=True, slots=True)
class AppConfig:
    """An application: its routes and its services."""

    name: str
    routes: tuple[Route, ...]
    services: tuple[ServiceConfig, ...]  # in file order
    session_sticky: bool = True  # Aliyun's routing is sticky by default
    drain_timeout: float | None = None  # seconds; None: pinned clients drain forever


@dataclass(frozen=True, slots=True)
class StickyConfig:
    """The stickiness cookie (SPEC 4.3)."""

    cookie: str = "CONTAINERID"  # Aliyun's cookie name
    max_idle: float = 1800.0  # 30m, Aliyun's default
    max_life: float = 28800.0  # 8h, Aliyun's default
    secret_file: str | None = None  # file holding the HMAC secret; None: generated/stored


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Network timeouts in seconds (SPEC 3.1)."""

    # SPEC 3.1; nginx's proxy_connect_timeout of 60s is far too long to fail over to another backend
    connect: float = 3.0
    response: float = 60.0  # nginx's proxy_read_timeout default
    client_header: float = 10.0  # SPEC 4.2 (408 after 10 s); HAProxy's "timeout http-request 10s"
    client_idle: float = 60.0  # SPEC 3.1; nginx's keepalive_timeout is 75s
    # Longest pause between two reads of a request body (an idle timer, not a total): nginx's
    # client_body_timeout 60s. A header deadline alone would let a slowloris trickle the body.
    client_body: float = 60.0
    grace: float = 10.0  # Docker's stop timeout: SIGKILL follows SIGTERM after 10 s
    # After SIGTERM, /readyz answers 503 but new connections are still accepted this long, so
    # a load balancer polling readiness stops sending first (HAProxy's "grace"). 0: close the
    # listener at once.
    drain_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Request size and connection limits (SPEC 4.2)."""

    max_request_line: int = 8192  # nginx's large_client_header_buffers 8k -> 414
    max_header: int = 8192  # nginx's large_client_header_buffers 8k -> 431
    max_headers: int = 65536  # SPEC 4.2: all headers 64 KiB -> 431
    # HAProxy's maxconn idea: refuse early, well before a typical 65536 file-descriptor limit
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class PassiveHealthConfig:
    """Passive health: a backend whose requests fail ``failures`` times in a row (cannot connect,
    reset or closed before the response, malformed response, response timeout) gets no new
    requests for ``cooldown``; then it is tried again. ``failures: 0`` turns it off. The last
    healthy backend of a service is never ejected (nginx ignores max_fails for a lone server):
    retries then move its requests to another service instead of answering 503.
    """

    failures: int = 3  # between nginx's max_fails=1 (too jumpy) and Envoy's consecutive_5xx=5
    cooldown: float = 10.0  # nginx's fail_timeout and Envoy's base_ejection_time: 10s


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Where the admin API listens and how it authenticates."""

    host: str = "127.0.0.1"  # SPEC 3: admin API on loopback by default
    port: int = 9090
    token_file: str | None = None
    token: str | None = None  # read from token_file (stripped) or env ROUTER_ADMIN_TOKEN at load


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = False
    format: str = "json"  # "json" or "combined" (nginx/Apache combined log format)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file."""

    listen_host: str = "0.0.0.0"  # SPEC 3: data plane on 0.0.0.0:8080
    listen_port: int = 8080
    admin: AdminConfig = field(default_factory=AdminConfig)
    domain: str | None = None
    sticky: StickyConfig = field(default_factory=StickyConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    trusted_proxies: tuple[NetworkType, ...] = ()
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    passive_health: PassiveHealthConfig = field(default_factory=PassiveHealthConfig)
    apps: tuple[AppConfig, ...] = ()
    source: str | None = None  # the file path it was loaded from


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "listen",
    "admin",
    "domain",
    "sticky",
    "timeouts",
    "trusted_proxies",
    "access_log",
    "limits",
    "passive_health",
    "apps",
)
_ADMIN_KEYS = ("listen", "token_file")
_STICKY_KEYS = ("cookie", "max_idle", "max_life", "secret_file")
_TIMEOUT_KEYS = ("connect", "response", "client_header", "client_idle", "client_body", "grace",
                 "drain_delay")
_PASSIVE_KEYS = ("failures", "cooldown")
_ACCESS_LOG_KEYS = ("enabled", "format")
_LIMIT_KEYS = ("max_request_line", "max_header", "max_headers", "max_connections")
_APP_KEYS = ("session_sticky", "drain_timeout", "routes", "services")
_SERVICE_KEYS = ("weight", "backends", "health_check")
_SERVICE_KEYS_WITH_LABELS = (*_SERVICE_KEYS, "labels")
_HEALTH_KEYS = ("path", "interval", "timeout", "rise", "fall")

_ACCESS_LOG_FORMATS = ("json", "combined")

# A service without "weight" takes all the traffic it can get: 100 is the top of Aliyun's 0..100
# weight range, so a single-version app needs no weight at all.
_DEFAULT_WEIGHT = 100

_LABEL_PREFIX = "aliyun.routing."
_LABEL_PORT_RE = re.compile(r"aliyun\.routing\.port_([0-9]{1,5})\Z")
_LABEL_STICKY = "aliyun.routing.session_sticky"
_PORT_LIKE_RE = re.compile(r"[0-9]+(?:/|\Z)")
_LABEL_MAX_LEN = 128  # Aliyun: domain and context root at most 128 characters each

# Route hosts: RFC 1123 labels, lower case (the caller lower-cases first).
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# Backend and listen hosts: looser, Docker names may carry "_" ("project_web_1").
_HOST_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
# RFC 3986 pchar (unreserved, sub-delims, ":", "@") and "%XX"; ";" is excluded as it separates
# label entries.
_PATH_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})+\Z")
# RFC 6265 cookie-name = token (RFC 2616 tchar).
_COOKIE_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}\Z")
_HC_PATH_RE = re.compile(r"/[\x21-\x7e]*\Z")

_DURATION_RE = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:us|ms|s|m|h|d))+\Z")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(us|ms|s|m|h|d)")
_DURATION_UNITS = {
    "us": Fraction(1, 1_000_000),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_DURATION_REASON = (
    "must be a duration like '2s', '500ms', '30m', '1h30m' or a number of seconds >= 0"
)

_SIZE_RE = re.compile(r"([0-9]+)\s*(B|KiB|MiB|GiB|k|K|m|M)?\Z")
# "k"/"m" as in nginx ("8k"); "KB" is refused: 1000 or 1024 would be a guess.
_SIZE_UNITS: dict[str | None, int] = {
    None: 1, "B": 1, "KiB": 1024, "k": 1024, "K": 1024,
    "MiB": 1024**2, "m": 1024**2, "M": 1024**2, "GiB": 1024**3,
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(
    data: object, path: str, allowed: tuple[str, ...], source: str, what: str = "a mapping"
) -> dict[str, object]:
    """Check that ``data`` is a mapping with string keys drawn from ``allowed``."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"must be {what}", data, source)
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(path, "keys must be strings", key, source)
        if key not in allowed:
            raise ConfigError(
                _join(path, key),
                f"unknown key; allowed keys: {', '.join(allowed)}",
                value,
                source,
            )
    return data


def _section(data: dict[str, object], key: str, path: str, allowed: tuple[str, ...],
             source: str) -> dict[str, object]:
    """An optional sub-mapping; absent or null means all defaults."""
    value = data.get(key)
    if value is None:
        return {}
    return _mapping(value, _join(path, key), allowed, source)


def _check_name(name: object, path: str, kind: str, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            path, f"{kind} names must match ^[a-z0-9][a-z0-9-]{{0,62}}$", name, source
        )
    return name


def _bool(value: object, path: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, "must be true or false", value, source)
    return value


def _int(value: object, path: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(path, f"must be an integer >= {minimum}", value, source)
    return value


def _str(value: object, path: str, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a non-empty string", value, source)
    return value


def _positive_duration(value: object, path: str, source: str) -> float:
    seconds = parse_duration(value, path, source)
    if seconds <= 0:
        raise ConfigError(path, "must be a duration > 0", value, source)
    return seconds


def _is_dns_name(host: str, max_len: int = 253) -> bool:
    if not host or len(host) > max_len:
        return False
    return all(_DNS_LABEL_RE.match(label) for label in host.split("."))


def _parse_port(text: str, path: str, value: object, source: str, minimum: int) -> int:
    if not _PORT_RE.match(text) or not minimum <= int(text) <= 65535:
        raise ConfigError(path, f"port must be an integer {minimum}..65535", value, source)
    return int(text)


def _normalise_host(host: str, path: str, value: object, source: str) -> tuple[str, bool]:
    """Validate a backend or listen host; return (normalised host, is_ipv6)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return str(ip), ip.version == 6
    lowered = host.lower()
    labels = lowered.split(".")
    if len(lowered) > 253 or not all(_HOST_LABEL_RE.match(label) for label in labels):
        raise ConfigError(
            path,
            "host must be an IP address or a host name of letters, digits, '-', '_' and '.'"
            " (labels of at most 63, at most 253 in all)",
            value,
            source,
        )
    if all(label.isdigit() for label in labels):
        # "010.0.0.5" or "1.2.3" would be read by inet_aton in odd ways; refuse them.
        raise ConfigError(path, "host is not a valid IPv4 address", value, source)
    return lowered, False


def _split_address(
    text: str, path: str, value: object, source: str
) -> tuple[str, str | None, bool]:
    """Split "host:port", "[v6]:port", "host", "[v6]" into (host, port text or None, bracketed)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(path, "unclosed '[' in IPv6 address", value, source)
        host, rest = text[1:end], text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                path, "not a valid IPv6 address inside [...]", value, source
            ) from None
        if not rest:
            return host, None, True
        if not rest.startswith(":"):
            raise ConfigError(path, "expected ':port' after ']'", value, source)
        return host, rest[1:], True
    if text.count(":") > 1:
        raise ConfigError(
            path, "IPv6 addresses must be written in brackets, like [::1]:8080", value, source
        )
    if ":" in text:
        host, port = text.split(":", 1)
        return host, port, False
    return text, None, False


def _format_hostport(host: str, port: int, ipv6: bool) -> str:
    return f"[{host}]:{port}" if ipv6 else f"{host}:{port}"


def _resolve_file(name: str, base_dir: str | None) -> str:
    if base_dir is not None and not os.path.isabs(name):
        return os.path.join(base_dir, name)
    return name


def _read_secret_file(name: str, path: str, source: str) -> str:
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read file: {exc}", name, source) from None
    if not text:
        raise ConfigError(path, "file is empty", name, source)
    return text


# --------------------------------------------------------------------------------------------
# Scalars: durations, sizes, addresses
# --------------------------------------------------------------------------------------------


def parse_duration(value: object, path: str, source: str = _DEFAULT_SOURCE) -> float:
    """Seconds from "30m", "8h", "2s", "500ms", "1h30m", "1.5s" or an int/float of seconds.

    Units: us, ms, s, m, h, d (as HAProxy).  Booleans, negative numbers, NaN/inf and unit-less
    strings are refused: "10" alone is seconds to some tools and milliseconds to HAProxy.
    """
    if isinstance(value, bool):
        raise ConfigError(path, _DURATION_REASON, value, source)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(path, _DURATION_REASON, value, source)
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(path, _DURATION_REASON, value, source)
    text = value.strip()
    if not _DURATION_RE.match(text):
        raise ConfigError(path, _DURATION_REASON, value, source)
    total = Fraction(0)
    for number, unit in _DURATION_PART_RE.findall(text):
        total += Fraction(number) * _DURATION_UNITS[unit]
    return float(total)


def _parse_size(value: object, path: str, source: str) -> int:
    """Bytes from an int > 0 or "8KiB", "64KiB", "1MiB" (nginx's "8k" too)."""
    reason = "must be a size in bytes > 0, like 8192, '8KiB' or '1MiB'"
    if isinstance(value, bool):
        raise ConfigError(path, reason, value, source)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value.strip())):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ConfigError(path, reason, value, source)
    if size <= 0:
        raise ConfigError(path, reason, value, source)
    return size


def parse_listen(value: object, path: str, source: str = _DEFAULT_SOURCE) -> tuple[str, int]:
    """(host, port) from "0.0.0.0:8080", "[::1]:9090", ":8080" or a bare port number.

    An empty host (":8080", or an int) means all IPv4 interfaces, "0.0.0.0".  Port 0 asks the
    kernel for a free port (tests use it).  IPv6 hosts come back without brackets.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 65535:
            raise ConfigError(path, "port must be an integer 0..65535", value, source)
        return "0.0.0.0", value
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be 'host:port', '[ipv6]:port' or ':port'", value, source)
    host, port_text, _ = _split_address(value, path, value, source)
    if port_text is None:
        raise ConfigError(path, "missing ':port'", value, source)
    port = _parse_port(port_text, path, value, source, minimum=0)
    if not host:
        return "0.0.0.0", port
    host, _ = _normalise_host(host, path, value, source)
    return host, port


def _split_backend(value: object, path: str, source: str) -> tuple[str, int | None, bool]:
    """(normalised host, port or None, is_ipv6) of a backend address."""
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a 'host:port' string", value, source)
    host_text, port_text, bracketed = _split_address(value, path, value, source)
    if not host_text:
        raise ConfigError(path, "missing host", value, source)
    host, ipv6 = _normalise_host(host_text, path, value, source)
    if ipv6 and not bracketed:  # unreachable: _split_address refuses bare IPv6; kept as a guard
        raise ConfigError(path, "IPv6 addresses must be written in brackets", value, source)
    port = None if port_text is None else _parse_port(port_text, path, value, source, minimum=1)
    return host, port, ipv6


def parse_backend(
    value: object, path: str, default_port: int | None = None, source: str = _DEFAULT_SOURCE
) -> str:
    """Normalised "host:port" of a backend: "10.0.0.5:80", "localhost:80", "[::1]:80".

    A port-less "10.0.0.5" (or "[::1]") is accepted only with ``default_port``.  Host names are
    lower-cased, IP addresses written in their canonical form.
    """
    host, port, ipv6 = _split_backend(value, path, source)
    if port is None:
        if default_port is None:
            raise ConfigError(path, "missing ':port'", value, source)
        port = default_port
    return _format_hostport(host, port, ipv6)


def split_hostport(addr: str) -> tuple[str, int]:
    """Inverse of the normalised backend form: "[::1]:80" -> ("::1", 80).

    Raises ValueError on anything that is not "host:port" or "[v6]:port".
    """
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or addr[end + 1:end + 2] != ":":
            raise ValueError(f"not a host:port address: {addr!r}")
        host, port_text = addr[1:end], addr[end + 2:]
    else:
        host, sep, port_text = addr.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"not a host:port address: {addr!r}")
    if not host or not _PORT_RE.match(port_text):
        raise ValueError(f"not a host:port address: {addr!r}")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Routes and Aliyun labels
# --------------------------------------------------------------------------------------------


def _normalise_path(text: str, path: str, value: object, source: str) -> str:
    """A path prefix: starts with "/", trailing "/" dropped, no empty or dot segments."""
    if not text.startswith("/"):
        raise ConfigError(path, "path prefix must start with '/'", value, source)
    stripped = text.rstrip("/")
    if not stripped:
        return "/"
    for segment in stripped[1:].split("/"):
        if segment in ("", ".", ".."):
            raise ConfigError(
                path, "path prefix must not contain empty, '.' or '..' segments", value, source
            )
        if not _PATH_SEGMENT_RE.match(segment):
            raise ConfigError(
                path, "path prefix has characters that are not allowed in a URL path", value, source
            )
    return stripped


def parse_route(value: object, path: str, source: str = _DEFAULT_SOURCE) -> Route:
    """A Route from "host" or "host/path/prefix"; the host is lower-cased."""
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a string 'host' or 'host/path'", value, source)
    if "://" in value:
        raise ConfigError(path, "write the host without a scheme", value, source)
    host, slash, rest = value.partition("/")
    host = host.lower()
    if ":" in host:
        raise ConfigError(path, "a route host has no port", value, source)
    if not _is_dns_name(host):
        raise ConfigError(path, "host must be a valid DNS name", value, source)
    prefix = _normalise_path(slash + rest, path, value, source) if slash else "/"
    return Route(host, prefix)


def _parse_label_entry(entry: str, domain: str | None, path: str, source: str) -> Route:
    text = entry
    if text[:7].lower() == "http://":
        text = text[7:]
    elif "://" in text:
        raise ConfigError(path, "only http:// is supported", entry, source)
    cut = min((i for i in (text.find(":"), text.find("/")) if i >= 0), default=len(text))
    name, rest = text[:cut].lower(), text[cut:]
    if rest.startswith(":"):
        context = rest[1:]
        if not context:
            raise ConfigError(path, "empty context path after ':'", entry, source)
        if _PORT_LIKE_RE.match(context):  # "wp.sample.com:8080" or ":8080/ctx": not a path
            raise ConfigError(
                path,
                "a port cannot be given here (the port is the label's); a context path starts"
                " with '/'",
                entry,
                source,
            )
        if not context.startswith("/"):
            context = "/" + context
    else:
        context = rest
    if not name:
        raise ConfigError(path, "missing domain or domain prefix", entry, source)
    if "." in name:
        host = name
    else:
        if not _DNS_LABEL_RE.match(name):
            raise ConfigError(path, "domain prefix must be one valid DNS label", entry, source)
        if domain is None:
            raise ConfigError(
                path,
                f"a bare prefix {name!r} needs the top-level 'domain' to be configured",
                entry,
                source,
            )
        host = f"{name}.{domain}"
    if len(host) > _LABEL_MAX_LEN:
        raise ConfigError(path, f"domain is longer than {_LABEL_MAX_LEN} characters", entry, source)
    if not _is_dns_name(host):
        raise ConfigError(path, "domain must be a valid DNS name", entry, source)
    if len(context) > _LABEL_MAX_LEN:
        raise ConfigError(
            path, f"context path is longer than {_LABEL_MAX_LEN} characters", entry, source
        )
    prefix = _normalise_path(context, path, entry, source) if context else "/"
    return Route(host, prefix)


def parse_routing_label(
    value: str, domain: str | None, path: str, source: str = _DEFAULT_SOURCE
) -> tuple[Route, ...]:
    """Routes from an ``aliyun.routing.port_<P>`` label value.

    Grammar (Aliyun): ``[http://]<domain>|<prefix>[:<context_path>]``, several joined by ``;``.
    The context path may also follow the domain directly, as in Aliyun's own example
    ``wordpress;http://wp.sample.com/context``.  A prefix (no dot) becomes ``<prefix>.<domain>``.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, "must be a non-empty string of routes", value, source)
    routes: list[Route] = []
    for raw in value.split(";"):
        entry = raw.strip()
        if not entry:
            raise ConfigError(path, "empty entry between ';'", value, source)
        route = _parse_label_entry(entry, domain, path, source)
        if route not in routes:
            routes.append(route)
    return tuple(routes)


def _labels_mapping(data: object, path: str, source: str) -> dict[str, object]:
    """Labels as a mapping, or as compose's list form ["key=value", ...]."""
    if data is None:
        return {}
    if isinstance(data, list):
        result: dict[str, object] = {}
        for i, item in enumerate(data):
            item_path = f"{path}[{i}]"
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(item_path, "must be a 'key=value' string", item, source)
            key, _, val = item.partition("=")
            if key in result:
                raise ConfigError(item_path, "duplicate label", item, source)
            result[key] = val
        return result
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a mapping of label names to strings", data, source)
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(path, "label names must be strings", key, source)
    return data


@dataclass(frozen=True, slots=True)
class _Labels:
    """What a service's Aliyun labels say: routes (with their key paths), ports, stickiness."""

    routes: tuple[tuple[Route, str], ...] = ()
    ports: tuple[int, ...] = ()
    sticky: tuple[bool, str] | None = None


def _parse_labels(data: object, domain: str | None, path: str, source: str) -> _Labels:
    labels = _labels_mapping(data, path, source)
    routes: list[tuple[Route, str]] = []
    ports: list[int] = []
    sticky: tuple[bool, str] | None = None
    for key, value in labels.items():
        if not key.startswith(_LABEL_PREFIX):
            continue  # an ordinary container label (aliyun.scale, com.docker..., ...)
        key_path = f"{path}.{key}"
        if key == _LABEL_STICKY:
            if isinstance(value, bool):
                sticky = (value, key_path)
            elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
                sticky = (value.strip().lower() == "true", key_path)
            else:
                raise ConfigError(key_path, "must be 'true' or 'false'", value, source)
            continue
        m = _LABEL_PORT_RE.match(key)
        if m is None:
            raise ConfigError(
                key_path,
                f"unknown label; known: {_LABEL_PREFIX}port_<port>, {_LABEL_STICKY}",
                value,
                source,
            )
        port = int(m.group(1))
        if not 1 <= port <= 65535:
            raise ConfigError(key_path, "port must be an integer 1..65535", key, source)
        if not isinstance(value, str):
            raise ConfigError(key_path, "must be a string of routes", value, source)
        ports.append(port)
        for route in parse_routing_label(value, domain, key_path, source):
            routes.append((route, key_path))
    return _Labels(tuple(routes), tuple(ports), sticky)


# --------------------------------------------------------------------------------------------
# Apps and services
# --------------------------------------------------------------------------------------------


def parse_health_check(
    data: object, path: str, source: str = _DEFAULT_SOURCE
) -> HealthCheckConfig | None:
    """A HealthCheckConfig from {path, interval, timeout, rise, fall}; null gives None."""
    if data is None:
        return None
    m = _mapping(data, path, _HEALTH_KEYS, source)
    hc = HealthCheckConfig()
    check_path = m.get("path")
    if check_path is not None and (
        not isinstance(check_path, str) or not _HC_PATH_RE.match(check_path)
    ):
        raise ConfigError(
            _join(path, "path"), "must be a URL path starting with '/', without spaces",
            check_path, source,
        )
    return HealthCheckConfig(
        path=check_path,
        interval=_positive_duration(m["interval"], _join(path, "interval"), source)
        if "interval" in m else hc.interval,
        timeout=_positive_duration(m["timeout"], _join(path, "timeout"), source)
        if "timeout" in m else hc.timeout,
        rise=_int(m["rise"], _join(path, "rise"), source) if "rise" in m else hc.rise,
        fall=_int(m["fall"], _join(path, "fall"), source) if "fall" in m else hc.fall,
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
) -> tuple[ServiceConfig, _Labels]:
    svc_name = _check_name(name, path, "service", source)
    m = _mapping(data, path, _SERVICE_KEYS_WITH_LABELS if allow_labels else _SERVICE_KEYS, source)
    weight = (
        _parse_weight(m["weight"], _join(path, "weight"), source)
        if "weight" in m else _DEFAULT_WEIGHT
    )
    labels = _parse_labels(m.get("labels"), domain, _join(path, "labels"), source)

    backends_path = _join(path, "backends")
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
        host, port, ipv6 = _split_backend(raw, item_path, source)
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
        backend = _format_hostport(host, port, ipv6)
        if backend in backends:
            raise ConfigError(item_path, f"duplicate backend {backend}", raw, source)
        backends.append(backend)

    health = parse_health_check(m.get("health_check"), _join(path, "health_check"), source)
    return ServiceConfig(svc_name, weight, tuple(backends), health), labels


def parse_service(
    name: str, data: object, path: str, source: str = _DEFAULT_SOURCE
) -> ServiceConfig:
    """A service from {weight, backends, health_check}, as the admin API receives it.

    Labels are a configuration-file feature (they change the app's routes and stickiness) and are
    refused here; ``path`` is e.g. "apps.shop.services.web".
    """
    service, _ = _parse_service(name, data, None, path, source, allow_labels=False)
    return service


def _parse_app(
    name: object, data: object, domain: str | None, path: str, source: str
) -> tuple[AppConfig, dict[Route, str]]:
    """The app and, for each of its routes, the key path that declared it."""
    app_name = _check_name(name, path, "app", source)
    m = _mapping(data, path, _APP_KEYS, source)

    sticky_path = _join(path, "session_sticky")
    explicit_sticky: bool | None = None
    if "session_sticky" in m:
        explicit_sticky = _bool(m["session_sticky"], sticky_path, source)
    drain = m.get("drain_timeout")
    drain_timeout: float | None = None
    if drain is not None:
        drain_timeout = _positive_duration(drain, _join(path, "drain_timeout"), source)

    routes_path = _join(path, "routes")
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

    services_path = _join(path, "services")
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
    )
    return app, origins


def parse_app(
    name: str, data: object, domain: str | None, path: str, source: str = _DEFAULT_SOURCE
) -> AppConfig:
    """An AppConfig from its mapping; ``path`` is its key path, e.g. "apps.shop".

    Checks everything about one app; routes claimed by two apps are checked by the caller
    (``config_from_dict`` for the file).
    """
    app, _ = _parse_app(name, data, domain, path, source)
    return app


# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------


def _parse_admin(data: dict[str, object], source: str, base_dir: str | None) -> AdminConfig:
    m = _section(data, "admin", "", _ADMIN_KEYS, source)
    default = AdminConfig()
    host, port = default.host, default.port
    if m.get("listen") is not None:
        host, port = parse_listen(m["listen"], "admin.listen", source)
    token_file: str | None = None
    token: str | None = None
    if m.get("token_file") is not None:
        token_file = _resolve_file(_str(m["token_file"], "admin.token_file", source), base_dir)
        token = _read_secret_file(token_file, "admin.token_file", source)
    else:
        token = os.environ.get("ROUTER_ADMIN_TOKEN", "").strip() or None
    if token is None and not _is_loopback(host):
        raise ConfigError(
            "admin.token_file",
            "required when admin.listen is not on loopback (or set ROUTER_ADMIN_TOKEN)",
            m.get("token_file"),
            source,
        )
    return AdminConfig(host=host, port=port, token_file=token_file, token=token)


# router.sticky.load_or_create_secret refuses shorter secrets: an HMAC key needs some entropy.
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
    m = _section(data, "sticky", "", _STICKY_KEYS, source)
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
        secret_file = _resolve_file(_str(m["secret_file"], "sticky.secret_file", source), base_dir)
        _check_sticky_secret_file(secret_file, source)
    return StickyConfig(
        cookie=cookie,
        max_idle=_positive_duration(m["max_idle"], "sticky.max_idle", source)
        if "max_idle" in m else default.max_idle,
        max_life=_positive_duration(m["max_life"], "sticky.max_life", source)
        if "max_life" in m else default.max_life,
        secret_file=secret_file,
    )


def _parse_timeouts(data: dict[str, object], source: str) -> Timeouts:
    m = _section(data, "timeouts", "", _TIMEOUT_KEYS, source)
    values: dict[str, float] = {}
    for key, raw in m.items():
        key_path = f"timeouts.{key}"
        # grace 0 means "stop at once"; every other timeout of 0 would fail every request.
        if key in ("grace", "drain_delay"):
            values[key] = parse_duration(raw, key_path, source)
        else:
            values[key] = _positive_duration(raw, key_path, source)
    return Timeouts(**values)


def _parse_limits(data: dict[str, object], source: str) -> Limits:
    m = _section(data, "limits", "", _LIMIT_KEYS, source)
    values: dict[str, int] = {}
    for key, raw in m.items():
        key_path = f"limits.{key}"
        if key == "max_connections":
            values[key] = _int(raw, key_path, source)
        else:
            values[key] = _parse_size(raw, key_path, source)
    return Limits(**values)


def _parse_passive_health(data: dict[str, object], source: str) -> PassiveHealthConfig:
    m = _section(data, "passive_health", "", _PASSIVE_KEYS, source)
    default = PassiveHealthConfig()
    return PassiveHealthConfig(
        failures=_int(m["failures"], "passive_health.failures", source, minimum=0)
        if "failures" in m else default.failures,
        cooldown=_positive_duration(m["cooldown"], "passive_health.cooldown", source)
        if "cooldown" in m else default.cooldown,
    )


def _parse_access_log(data: dict[str, object], source: str) -> AccessLogConfig:
    m = _section(data, "access_log", "", _ACCESS_LOG_KEYS, source)
    default = AccessLogConfig()
    enabled = default.enabled
    if "enabled" in m:
        enabled = _bool(m["enabled"], "access_log.enabled", source)
    fmt = m.get("format", default.format)
    if fmt not in _ACCESS_LOG_FORMATS:
        raise ConfigError("access_log.format", "must be 'json' or 'combined'", fmt, source)
    assert isinstance(fmt, str)
    return AccessLogConfig(enabled=enabled, format=fmt)


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
    if not isinstance(value, str) or not _is_dns_name(value.lower()):
        raise ConfigError("domain", "must be a DNS name like example.com", value, source)
    return value.lower()


def _addresses_overlap(a: str, b: str) -> bool:
    return a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def _config_from_dict(data: object, source: str, base_dir: str | None) -> Config:
    if data is None:
        data = {}
    top = _mapping(data, "", _TOP_KEYS, source, what="a mapping of keys at the top level")
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
        app, origins = _parse_app(name, app_data, domain, f"apps.{name}", source)
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
        trusted_proxies=_parse_trusted_proxies(top.get("trusted_proxies"), source),
        access_log=_parse_access_log(top, source),
        passive_health=_parse_passive_health(top, source),
        apps=tuple(apps),
        source=None if source == _DEFAULT_SOURCE else source,
    )


def config_from_dict(data: object, source: str = _DEFAULT_SOURCE) -> Config:
    """A validated Config from already-parsed YAML/JSON data (None gives the defaults).

    Relative ``token_file`` / ``secret_file`` paths are taken as they are (relative to the
    working directory); ``load_config`` resolves them against the file's directory.
    """
    return _config_from_dict(data, source, None)


_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
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
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def load_config(path: str) -> Config:
    """Read, parse and validate a YAML configuration file.

    Every failure is a ConfigError with ``source=path``: unreadable file, YAML syntax error
    (with its line), a top level that is not a mapping, and every validation error.  An empty
    file gives the default Config.  Relative file names inside (token_file, secret_file) are
    resolved against the file's directory, as the file store is kept next to it.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        reason = f"cannot read configuration file: {exc.strerror or exc}"
        raise ConfigError("", reason, path, path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        raise ConfigError("", reason, raw[exc.start : exc.start + 8], path) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is None:
            raise ConfigError("", f"invalid YAML: {problem}", None, path) from None
        lines = text.splitlines()
        line_text = lines[mark.line].strip() if mark.line < len(lines) else ""
        raise ConfigError(
            "",
            f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}",
            line_text,
            path,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}", None, path) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    return _config_from_dict(data, path, base_dir)
