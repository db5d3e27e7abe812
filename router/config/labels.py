"""Routes (``host`` or ``host/path``) and the Aliyun routing labels that declare them on a
service (``aliyun.routing.port_80: nginx``, ``aliyun.routing.session_sticky``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .model import DEFAULT_SOURCE, ConfigError, Route
from .scalars import DNS_LABEL_RE, is_dns_name

_LABEL_PREFIX = "aliyun.routing."
_LABEL_PORT_RE = re.compile(r"aliyun\.routing\.port_([0-9]{1,5})\Z")
_LABEL_STICKY = "aliyun.routing.session_sticky"
_PORT_LIKE_RE = re.compile(r"[0-9]+(?:/|\Z)")
_LABEL_MAX_LEN = 128  # Aliyun: domain and context root at most 128 characters each
# RFC 3986 pchar (unreserved, sub-delims, ":", "@") and "%XX"; ";" is excluded as it separates
# label entries.
_PATH_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})+\Z")


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


def parse_route(value: object, path: str, source: str = DEFAULT_SOURCE) -> Route:
    """A Route from "host" or "host/path/prefix"; the host is lower-cased."""
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a string 'host' or 'host/path'", value, source)
    if "://" in value:
        raise ConfigError(path, "write the host without a scheme", value, source)
    host, slash, rest = value.partition("/")
    host = host.lower()
    if ":" in host:
        raise ConfigError(path, "a route host has no port", value, source)
    if not is_dns_name(host):
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
        if not DNS_LABEL_RE.match(name):
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
    if not is_dns_name(host):
        raise ConfigError(path, "domain must be a valid DNS name", entry, source)
    if len(context) > _LABEL_MAX_LEN:
        raise ConfigError(
            path, f"context path is longer than {_LABEL_MAX_LEN} characters", entry, source
        )
    prefix = _normalise_path(context, path, entry, source) if context else "/"
    return Route(host, prefix)


def parse_routing_label(
    value: str, domain: str | None, path: str, source: str = DEFAULT_SOURCE
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
class Labels:
    """What a service's Aliyun labels say: routes (with their key paths), ports, stickiness."""

    routes: tuple[tuple[Route, str], ...] = ()
    ports: tuple[int, ...] = ()
    sticky: tuple[bool, str] | None = None


def parse_labels(data: object, domain: str | None, path: str, source: str,
                 extra: tuple[str, ...] = ()) -> Labels:
    """``extra``: further ``aliyun.routing.*`` labels the caller reads itself (the Docker
    provider's per-container ones): skipped here, and named among the known ones."""
    labels = _labels_mapping(data, path, source)
    routes: list[tuple[Route, str]] = []
    ports: list[int] = []
    sticky: tuple[bool, str] | None = None
    for key, value in labels.items():
        if not key.startswith(_LABEL_PREFIX) or key in extra:
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
                f"unknown label; known: {', '.join((f'{_LABEL_PREFIX}port_<port>', _LABEL_STICKY, *extra))}",
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
    return Labels(tuple(routes), tuple(ports), sticky)
