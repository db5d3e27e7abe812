"""The configuration's model: frozen dataclasses, names, and ConfigError.

Every value here was validated at load and never changes; the dataclasses hold only tuples,
so one ``Config`` is shared by every task without copying.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

# App and service names, as messages, the OpenAPI document and the web console
# (router/admin/ui/js/dialogs.js) spell the pattern. NAME_RE ends in ``\Z`` rather than ``$``: ``$``
# also matches before a trailing newline, so ``NAME_RE.match("shop\n")`` would succeed with it.
NAME_PATTERN = "^[a-z0-9][a-z0-9-]{0,62}$"
NAME_RE = re.compile(NAME_PATTERN.removesuffix("$") + r"\Z")
NetworkType = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_SOURCE = "<config>"
# A value's repr is cut in messages beyond this many characters (a whole app mapping can be long).
_MAX_VALUE_REPR = 200


class ConfigError(Exception):
    """A configuration value that was refused, with where it was and why.

    ``str(err)`` is ``"{source}: {path}: {reason} (got {value!r})"``; when the error is about the
    document as a whole (``path == ""``) the empty path segment is left out.
    """

    def __init__(
        self, path: str, reason: str, value: object = None, source: str = DEFAULT_SOURCE
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


@dataclass(frozen=True, slots=True)
class Route:
    """A host name, optionally with a path prefix (docs/behaviour.md, "Words")."""

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
    # Not a setting: the generation of the change that added the service to the routing state
    # (0: it came with the first seed, or from a state stored before incarnations were kept).
    # A service deleted and added again under its name is a new incarnation, which the sticky
    # cookies and preview tokens of the old one do not reach (router.control.state.incarnate).
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class PreviewConfig:
    """The request header that sends a request to the new version of an open release, whatever
    its weight (docs/release-ramp.md, "Preview")."""

    header: str  # a field name, as written ("X-Preview")
    value: str | None = None  # None: the new service's name ("X-Preview: web-v2")


@dataclass(frozen=True, slots=True)
class AppConfig:
    """An application: its routes and its services."""

    name: str
    routes: tuple[Route, ...]
    services: tuple[ServiceConfig, ...]  # in file order
    session_sticky: bool = True  # Aliyun's routing is sticky by default
    drain_timeout: float | None = None  # seconds; None: pinned clients drain forever
    preview: PreviewConfig | None = None  # None: no preview by header (the cookie still works)


@dataclass(frozen=True, slots=True)
class StickyConfig:
    """The stickiness cookie (docs/routing.md, "The pin")."""

    cookie: str = "CONTAINERID"  # Aliyun's cookie name
    max_idle: float = 1800.0  # 30m, Aliyun's default
    max_life: float = 28800.0  # 8h, Aliyun's default
    secret_file: str | None = None  # file holding the HMAC secret; None: generated/stored


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Network timeouts in seconds (docs/behaviour.md, "Limits and timeouts")."""

    # nginx's proxy_connect_timeout of 60s is far too long to fail over to another backend
    connect: float = 3.0
    response: float = 60.0  # nginx's proxy_read_timeout default
    client_header: float = 10.0  # 408 after 10 s: HAProxy's "timeout http-request 10s"
    client_idle: float = 60.0  # below nginx's keepalive_timeout of 75s
    # Longest pause between two reads of a request body (an idle timer, not a total): nginx's
    # client_body_timeout 60s. A header deadline alone would let a slowloris trickle the body.
    client_body: float = 60.0
    # No progress writing to a client for this long closes it (a client that does not read its
    # responses, or an unread pipeline): nginx's send_timeout 60s.
    client_send: float = 60.0
    # No byte either way in an upgraded connection (a WebSocket) for this long closes it:
    # HAProxy's "timeout tunnel", commonly 1h.
    tunnel_idle: float = 3600.0
    grace: float = 10.0  # Docker's stop timeout: SIGKILL follows SIGTERM after 10 s
    # After SIGTERM, /readyz answers 503 but new connections are still accepted this long, so
    # a load balancer polling readiness stops sending first (HAProxy's "grace"). 0: close the
    # listener at once.
    drain_delay: float = 0.0
    # With --workers N: a worker that does not answer the master within this (a ping, a new
    # state) is killed and replaced; an admin change waits at most this long for a hung worker.
    # A live worker answers in milliseconds; 2 s leaves room for a busy machine.
    worker: float = 2.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Request size and connection limits (docs/behaviour.md, "Limits and timeouts")."""

    max_request_line: int = 8192  # nginx's large_client_header_buffers 8k -> 414
    max_header: int = 8192  # nginx's large_client_header_buffers 8k -> 431
    max_headers: int = 65536  # all fields together: 64 KiB -> 431
    # Header fields in one request head -> 431: HAProxy's tune.http.maxhdr is 101.
    max_header_fields: int = 100
    # HAProxy's maxconn idea: refuse early, well before a typical 65536 file-descriptor limit
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How backend connections are shared (docs/request-path.md, "Backend connections")."""

    # "safe": the first request of each client connection goes on a new backend connection,
    # later ones may reuse idle ones (HAProxy's default http-reuse safe); "always": any
    # request may reuse an idle connection.
    reuse: str = "safe"


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

    host: str = "127.0.0.1"  # the admin API on loopback by default
    port: int = 9090
    token_file: str | None = None
    token: str | None = None  # read from token_file (stripped) or env ROUTER_ADMIN_TOKEN at load
    # Host names a request may name besides an address and localhost (the defence against DNS
    # rebinding), as Django's ALLOWED_HOSTS: "admin.example.com", ".example.com" (it and every
    # name under it), "*" (any; with a token only). Lower case, no trailing dot.
    allowed_hosts: tuple[str, ...] = ()
    # Origins (scheme://host[:port], as browsers send them) whose pages may call the admin
    # listener besides its own: a console behind a reverse proxy on another name or scheme.
    allowed_origins: tuple[str, ...] = ()
    # /metrics without the token; resolved at load: by default, when the listener is on
    # loopback (it names backend addresses).
    metrics_public: bool = True


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = False
    format: str = "json"  # "json" or "combined" (nginx/Apache combined log format)


@dataclass(frozen=True, slots=True)
class HandoffConfig:
    """Where the router listens for its successor (docs/upgrade.md)."""

    socket: str | None = None  # None: handoff.sock in the state directory


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """The event log on standard error (not the access log)."""

    format: str = "text"  # "text": one line a human reads; "json": one JSON object a line


@dataclass(frozen=True, slots=True)
class DockerProviderConfig:
    """Where the Docker provider finds the Engine API and how it turns containers into backends
    (docs/docker.md)."""

    endpoint: str = "unix:///var/run/docker.sock"  # the Engine's default socket
    swarm: bool | None = None  # None: services and tasks when the engine is a Swarm manager
    network: str | None = None  # None: the container's only network (or the host network)
    published_ports: bool = False  # True: the host port published for <P>, at ``host``
    host: str = "127.0.0.1"  # the address of published ports and host-network containers
    health_check: HealthCheckConfig | None = None  # given to every discovered service
    # A full listing this often besides the event stream: Swarm tasks have no events of their
    # own; Traefik's swarmModeRefreshSeconds default is 15s.
    refresh: float = 15.0
    # An app none of whose containers exists any more: "keep" it (503, weights kept for when
    # they come back) or "delete" it (404, its routes free); Traefik's allowEmptyServices.
    empty_apps: str = "keep"


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """Sources of apps besides the file and the admin API."""

    docker: DockerProviderConfig | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file."""

    listen_host: str = "0.0.0.0"  # the data plane on 0.0.0.0:8080
    listen_port: int = 8080
    admin: AdminConfig = field(default_factory=AdminConfig)
    domain: str | None = None
    sticky: StickyConfig = field(default_factory=StickyConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    trusted_proxies: tuple[NetworkType, ...] = ()
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Where clients reach the data plane, for the links the router hands out (a release's
    # preview): "https://{host}" behind a load balancer that terminates TLS on 443. None: http://
    # the route's host and the port the data plane listens on.
    public_url: str | None = None
    passive_health: PassiveHealthConfig = field(default_factory=PassiveHealthConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    apps: tuple[AppConfig, ...] = ()
    source: str | None = None  # the file path it was loaded from

    def public_base(self, host: str, port: int) -> str:
        """The scheme, host and port a client uses to reach ``host``'s routes through this
        router: ``public_url`` with ``{host}`` filled in, else ``http://HOST:PORT`` with the
        port the data plane listens on (none for 80)."""
        if self.public_url is not None:
            return self.public_url.replace("{host}", host)
        return f"http://{host}" if port == 80 else f"http://{host}:{port}"
