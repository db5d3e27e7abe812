"""JSON <-> objects for the admin API: strict body parsing and the shapes of the app and release objects."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

from router.config import NAME_PATTERN, NAME_RE
from router.dataplane.counters import BackendStats, ServiceStats, Stats
from router.errors import BadRequest, Invalid, NotFound, PayloadTooLarge
from router.control.metrics import cumulative_buckets
from router.control.state import State, app_to_dict

if TYPE_CHECKING:
    from router.dataplane.table import RoutingTable

MAX_BODY = 1024 * 1024  # an app with thousands of backends fits; anything larger is a mistake


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# No object of the API nests deeper than 4; a generous bound that keeps every validator's
# recursion (and json's) far from Python's limit.
MAX_DEPTH = 32


def parse_body(raw: bytes, required: bool = True) -> Any:
    """JSON from a request body; NaN and Infinity are refused (json.loads accepts them)."""
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        if required:
            raise BadRequest("a JSON body is required")
        return None
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest(f"body is nested more than {MAX_DEPTH} levels deep") from None
    if _depth_over(body, MAX_DEPTH):
        raise BadRequest(f"body is nested more than {MAX_DEPTH} levels deep")
    return body


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` deep (no recursion: the
    body is the client's)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return False


def object_body(raw: bytes, required: bool = True) -> dict[str, Any]:
    if not required and not raw.strip():
        return {}
    body = parse_body(raw, required)
    if not isinstance(body, dict):  # JSON null included: it is not an empty body
        raise Invalid("the body must be a JSON object", None)
    return body


def check_query(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    """A query parameter the endpoint does not know is a mistake worth saying (a typo of
    ``dry_run`` would otherwise apply for real)."""
    for name in query:
        if name not in allowed:
            raise Invalid(f"unknown query parameter {name!r}; this endpoint takes "
                          f"{', '.join(allowed)}", name)


def query_flag(query: Mapping[str, str], name: str) -> bool:
    """``?name=1`` / ``true`` / ``0`` / ``false``; absent is false."""
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise Invalid(f"must be 1, true, 0 or false (got {value!r})", name)


_LIMIT_RE = re.compile(r"[0-9]{1,9}\Z")


def query_limit(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not _LIMIT_RE.match(value) or not 1 <= int(value) <= maximum:
        raise Invalid(f"must be an integer 1..{maximum} (got {value!r})", name)
    return int(value)


def check_name(name: str, kind: str) -> str:
    """``name`` from a path: 404 if it cannot be the name of an app or a service."""
    if not NAME_RE.match(name):
        raise NotFound(f"no {kind} {name!r} (names match {NAME_PATTERN})", kind)
    return name


def valid_app_name(name: str, field: str) -> str:
    """``name`` given as an app's (``field`` of the request): 400 if no app can have it."""
    if not NAME_RE.match(name):
        raise Invalid(f"app names match {NAME_PATTERN} (got {name!r})", field)
    return name


# Fields of an app object that the server computes: accepted back in a PUT and ignored, so
# that GET -> edit -> PUT works.
_READ_ONLY_APP = ("name", "generation", "release")
_READ_ONLY_SERVICE = ("healthy_backends", "backend_health")


def app_body(name: str, body: dict[str, Any]) -> dict[str, Any]:
    if "name" in body and body["name"] != name:
        raise Invalid(f"name {body['name']!r} does not match the URL's {name!r}", "name")
    out = {k: v for k, v in body.items() if k not in _READ_ONLY_APP}
    services = out.get("services")
    if isinstance(services, dict):
        out["services"] = {s: service_body(v) for s, v in services.items()}
        for s, v in services.items():
            if isinstance(v, dict) and "labels" in v:
                # Labels are the configuration file's shorthand; the API speaks routes.
                raise Invalid("unknown field 'labels' (use the app's routes and session_sticky)",
                              f"services.{s}.labels")
    return out


def service_body(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in _READ_ONLY_SERVICE}
    return body


# A backend's (state, reason): healthy | unhealthy | unchecked (router.dataplane.health).
HealthOf = Callable[[tuple[str, str, str]], tuple[str, str | None]]


def render_app(state: State, name: str, table: "RoutingTable",
               health: HealthOf | None = None) -> dict[str, Any]:
    """The app object; ``health`` gives each backend's state (without it: all unchecked)."""
    app = state.app(name)
    out: dict[str, Any] = {"name": name}
    out.update(app_to_dict(app))
    live = table.apps.get(name)
    for svc_name, svc in out["services"].items():
        lsvc = live.by_name.get(svc_name) if live is not None else None
        svc["healthy_backends"] = ([b.key for b in lsvc.backends if b.healthy]
                                   if lsvc is not None else list(svc["backends"]))
        known = {}
        for addr in svc["backends"]:
            st, reason = health((name, svc_name, addr)) if health is not None else ("unchecked", None)
            known[addr] = {"state": st, "reason": reason}
        svc["backend_health"] = known
    release = state.releases.get(name)
    out["release"] = release.to_dict() if release is not None else None
    out["generation"] = state.app_generations.get(name, state.generation)
    return out


def render_stats(stats: Stats, table: "RoutingTable", name: str, now: float) -> dict[str, Any]:
    """The live counters of an app's services (``GET /api/v1/apps/{app}/stats``): totals since
    the router started, so a client turns two readings into rates. ``errors`` are the 5xx
    answers given for the service; ``upstream_errors`` the failed attempts to use its backends.
    ``removed``: the last counters of the app's services deleted within the last minutes
    (``router.dataplane.table.REMOVED_KEEP``), so that the reading after a rollback still has the numbers
    of the version rolled back, ``weight`` the one it had when it went."""
    live = table.apps.get(name)
    services: dict[str, Any] = {}
    for svc in live.services if live is not None else ():
        bstats = [stats.backends.get((name, svc.name, be.key)) for be in svc.backends]
        services[svc.name] = _service_stats(stats.services.get((name, svc.name)) or ServiceStats(),
                                            [b for b in bstats if b is not None], svc.weight)
    removed = {svc: _service_stats(r.stats, list(r.backends.values()), r.weight)
               for (app, svc), r in sorted(stats.removed.items())
               if app == name and svc not in services}
    return {"app": name, "time": now, "services": services, "removed": removed}


def _service_stats(st: ServiceStats, backends: list[BackendStats], weight: int) -> dict[str, Any]:
    codes: dict[int, int] = {}
    upstream_errors = 0
    for bst in backends:
        for code, n in bst.codes.items():
            codes[code] = codes.get(code, 0) + n
        upstream_errors += sum(bst.errors.values())
    buckets = cumulative_buckets(st)
    return {
        "requests": sum(codes.values()),
        "errors": sum(n for code, n in codes.items() if code >= 500),
        "codes": {str(code): n for code, n in sorted(codes.items())},
        "upstream_errors": upstream_errors,
        "sticky": st.sticky,
        "preview": st.preview,
        "inflight": st.inflight,
        "weight": weight,
        "duration": {"count": buckets[-1][1], "sum": st.dsum, "buckets": dict(buckets)},
    }
