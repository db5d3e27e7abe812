"""Small values of the configuration: mappings and their keys, booleans, integers, durations,
sizes, listen addresses and backend addresses; and the routing state's timestamps. Each parser
names the key path and the value it refuses.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

from .model import DEFAULT_SOURCE, NAME_PATTERN, NAME_RE, ConfigError

DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_HOST_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
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


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_mapping(
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
                join_path(path, key),
                f"unknown key; allowed keys: {', '.join(allowed)}",
                value,
                source,
            )
    return data


def section(data: dict[str, object], key: str, path: str, allowed: tuple[str, ...],
             source: str) -> dict[str, object]:
    """An optional sub-mapping; absent or null means all defaults."""
    value = data.get(key)
    if value is None:
        return {}
    return check_mapping(value, join_path(path, key), allowed, source)


def check_name(name: object, path: str, kind: str, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            path, f"{kind} names must match {NAME_PATTERN}", name, source
        )
    return name


def check_bool(value: object, path: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, "must be true or false", value, source)
    return value


def check_int(value: object, path: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(path, f"must be an integer >= {minimum}", value, source)
    return value


def check_str(value: object, path: str, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a non-empty string", value, source)
    return value


def positive_duration(value: object, path: str, source: str) -> float:
    seconds = parse_duration(value, path, source)
    if seconds <= 0:
        raise ConfigError(path, "must be a duration > 0", value, source)
    return seconds


def is_dns_name(host: str, max_len: int = 253) -> bool:
    if not host or len(host) > max_len:
        return False
    return all(DNS_LABEL_RE.match(label) for label in host.split("."))


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


def format_hostport(host: str, port: int, ipv6: bool) -> str:
    return f"[{host}]:{port}" if ipv6 else f"{host}:{port}"


def resolve_file(name: str, base_dir: str | None) -> str:
    if base_dir is not None and not os.path.isabs(name):
        return os.path.join(base_dir, name)
    return name


def read_secret_file(name: str, path: str, source: str) -> str:
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read file: {exc}", name, source) from None
    if not text:
        raise ConfigError(path, "file is empty", name, source)
    return text


def parse_duration(value: object, path: str, source: str = DEFAULT_SOURCE) -> float:
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


def format_duration(seconds: float) -> str:
    """The spelling of ``seconds`` that :func:`parse_duration` reads back exactly, in the
    largest whole unit: 600.0 -> "10m", 0.25 -> "250ms", 90.0 -> "90s", 0.0 -> "0s"."""
    for unit in ("d", "h", "m", "s", "ms"):
        n = round(seconds / _DURATION_UNITS[unit])
        if n and float(n * _DURATION_UNITS[unit]) == seconds:
            return f"{n}{unit}"
    if seconds == 0:
        return "0s"
    # repr is the shortest decimal that reads back as the same float; written out without an
    # exponent, which the duration syntax does not have.
    return format(Decimal(repr(seconds)), "f") + "s"


def parse_size(value: object, path: str, source: str) -> int:
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


def parse_listen(value: object, path: str, source: str = DEFAULT_SOURCE) -> tuple[str, int]:
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


def split_backend(value: object, path: str, source: str) -> tuple[str, int | None, bool]:
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
    value: object, path: str, default_port: int | None = None, source: str = DEFAULT_SOURCE
) -> str:
    """Normalised "host:port" of a backend: "10.0.0.5:80", "localhost:80", "[::1]:80".

    A port-less "10.0.0.5" (or "[::1]") is accepted only with ``default_port``.  Host names are
    lower-cased, IP addresses written in their canonical form.
    """
    host, port, ipv6 = split_backend(value, path, source)
    if port is None:
        if default_port is None:
            raise ConfigError(path, "missing ':port'", value, source)
        port = default_port
    return format_hostport(host, port, ipv6)


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def web_origin(text: str) -> str | None:
    """``text`` as a browser names an origin, ``scheme://host[:port]`` (http or https, the host
    in lower case, no default port), or None if it is not one (``null`` included)."""
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (parts.scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/")
            or parts.query or parts.fragment or "@" in parts.netloc):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


# RFC 3339 date-time (section 5.6).  Checked by pattern rather than ``datetime.fromisoformat``,
# which accepts ISO 8601 forms RFC 3339 does not (week dates, no offset, ...).
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339, whole seconds in UTC with "Z": the one spelling the state file is written in."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp -> aware datetime; ValueError if it is not one."""
    m = _RFC3339_RE.match(text)
    if m is None:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if m.group(7):
        tz = timezone.utc
    else:
        sign = 1 if m.group(8) == "+" else -1
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise ValueError("not an RFC 3339 timestamp")
        tz = timezone(sign * timedelta(hours=off_h, minutes=off_m))
    try:
        # datetime refuses Feb 30, hour 24, second 60 (leap seconds cannot be represented).
        return datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        raise ValueError("not an RFC 3339 timestamp") from None


def value_error(path: str, reason: str, value: object) -> ValueError:
    """A ValueError naming the key path, why, and the value (cut short): a stored object that
    cannot be (the routing state's, which is not the configuration: no ConfigError)."""
    text = repr(value)
    if len(text) > 200:
        text = text[:200] + "..."
    return ValueError(f"{path}: {reason} (got {text})")
