"""The JSON schemas of the admin API's bodies: the components of its OpenAPI document
(``router.admin.openapi``), kept apart from the paths that name them."""

from __future__ import annotations

from typing import Any

from router.config import NAME_PATTERN
from router.control.ramp import (DEFAULT_INTERVAL, DEFAULT_LATENCY_FLOOR, DEFAULT_MAX_ERROR_RATE,
                                 DEFAULT_MAX_LATENCY_RATIO, DEFAULT_MAX_WAITS,
                                 DEFAULT_MIN_REQUESTS, DEFAULT_QUANTILE)

NAME = {"type": "string", "pattern": NAME_PATTERN}
WEIGHT = {"type": "integer", "minimum": 0, "maximum": 100}
BACKEND = {"type": "string", "description": "host:port", "example": "10.0.0.5:80"}
DURATION = {"oneOf": [{"type": "number", "exclusiveMinimum": 0},
                      {"type": "string", "example": "2s"}]}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "field"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": ["string", "null"]}},
    }},
}

_HEALTH_CHECK = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": ["string", "null"], "pattern": "^/"},
        "interval": DURATION, "timeout": DURATION,
        "rise": {"type": "integer", "minimum": 1}, "fall": {"type": "integer", "minimum": 1},
    },
}

_SERVICE_IN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["backends"],
    "properties": {
        "weight": WEIGHT,
        "backends": {"type": "array", "items": BACKEND, "uniqueItems": True},
        "health_check": {"$ref": "#/components/schemas/HealthCheck"},
        "healthy_backends": {"type": "array", "items": BACKEND, "readOnly": True},
        "backend_health": {"type": "object", "readOnly": True},
    },
}

_BACKEND_HEALTH = {
    "type": "object",
    "description": "what is known of each backend: healthy (an active check passed or a request "
                   "got a response), unhealthy (out of rotation: failed checks, or ejected by "
                   "passive health), unchecked (nothing has shown yet that it works; it takes "
                   "requests meanwhile)",
    "additionalProperties": {
        "type": "object",
        "required": ["state", "reason"],
        "properties": {
            "state": {"type": "string", "enum": ["healthy", "unhealthy", "unchecked"]},
            "reason": {"type": ["string", "null"],
                       "examples": ["3 failed checks", "ejected: 3 requests failed in a row"]},
        },
    },
}

_SERVICE = {
    "type": "object",
    "required": ["weight", "backends", "health_check", "healthy_backends", "backend_health"],
    "properties": {
        "weight": WEIGHT,
        "backends": {"type": "array", "items": BACKEND},
        "health_check": {"$ref": "#/components/schemas/HealthCheck"},
        "healthy_backends": {"type": "array", "items": BACKEND,
                             "description": "the backends that take new requests (healthy or "
                                            "unchecked)"},
        "backend_health": _BACKEND_HEALTH,
    },
}

# The defaults are the server's own (router.control.release): a client (the console's ramp form) fills
# them in from here.
_RAMP_SETTINGS: dict[str, Any] = {
    "steps": {"type": "array", "minItems": 1, "maxItems": 20,
              "items": {"type": "integer", "minimum": 1, "maximum": 100},
              "description": "the new version's share at each step, percent, increasing",
              "example": [5, 25, 50, 100]},
    "interval": {**DURATION, "default": DEFAULT_INTERVAL,
                 "description": "each step is judged over this long (default 60s; 0.1s..1d)"},
    "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1,
                       "default": DEFAULT_MAX_ERROR_RATE,
                       "description": "how far the new version's error rate may exceed the old "
                                      "one's (0.01: one percentage point; the default)"},
    "max_latency_ratio": {"type": "number", "minimum": 1, "maximum": 1000,
                          "default": DEFAULT_MAX_LATENCY_RATIO,
                          "description": "how many times the old version's latency quantile "
                                         "the new one's may be (default 2)"},
    "quantile": {"type": "number", "minimum": 0.5, "maximum": 0.999,
                 "default": DEFAULT_QUANTILE,
                 "description": "the latency quantile compared (default 0.99)"},
    "latency_floor": {**DURATION, "default": DEFAULT_LATENCY_FLOOR,
                      "description": "a new version's quantile at or under this is within "
                                     "bounds whatever the ratio (default 10ms)"},
    "min_requests": {"type": "integer", "minimum": 1, "default": DEFAULT_MIN_REQUESTS,
                     "description": "requests each version needs in an interval to be judged "
                                    "(default 20)"},
    "max_waits": {"type": "integer", "minimum": 0, "maximum": 1000,
                  "default": DEFAULT_MAX_WAITS,
                  "description": "intervals in a row with too little traffic before the ramp "
                                 "pauses (default 10)"},
}

_RAMP_IN = {"type": "object", "additionalProperties": False, "required": ["steps"],
            "properties": _RAMP_SETTINGS}

_RAMP = {
    "type": "object",
    "required": [*_RAMP_SETTINGS, "status", "step", "share", "waits", "since", "reason"],
    "properties": {
        **_RAMP_SETTINGS,
        "interval": {"type": "number", "description": "seconds"},
        "latency_floor": {"type": "number", "description": "seconds"},
        "status": {"type": "string", "enum": ["running", "paused", "done", "rolled_back"],
                   "description": "rolled_back: by a rollback not stored yet (stored: false)"},
        "step": {"type": "integer", "minimum": 0,
                 "description": "the step applied, 1-based; 0 before the first"},
        "share": {"type": "integer", "minimum": 0, "maximum": 100,
                  "description": "the new version's share at this step, percent"},
        "waits": {"type": "integer", "minimum": 0,
                  "description": "intervals waited at this step for enough traffic"},
        "since": {"type": "string", "format": "date-time"},
        "reason": {"type": ["string", "null"], "description": "why the last move was made"},
    },
}

# Present while changes are in effect that the store could not take yet (docs/etcd.md).
_UNSTORED = {
    "stored": {"type": "boolean", "const": False,
               "description": "changes are in effect that the store has not taken yet"},
    "unstored": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryEntry"},
                 "description": "those changes, oldest first (generation null)"},
}

_RELEASE = {
    "type": "object",
    "required": ["old", "new", "status", "started_at", "old_weights", "ramp"],
    "properties": {
        "old": {"type": "array", "items": NAME},
        "new": NAME,
        "status": {"type": "string", "enum": ["in_progress", "awaiting_confirmation",
                                              "rolled_back"],
                   "description": "rolled_back: by a rollback in effect that the store has not "
                                  "taken yet (stored: false)"},
        "started_at": {"type": "string", "format": "date-time"},
        "old_weights": {"type": "object", "additionalProperties": WEIGHT},
        "ramp": {"oneOf": [{"$ref": "#/components/schemas/Ramp"}, {"type": "null"}]},
        **_UNSTORED,
    },
}

_MEASURE = {
    "type": "object", "required": ["requests", "errors", "error_rate", "latency"],
    "properties": {"requests": {"type": "integer", "minimum": 0},
                   "errors": {"type": "integer", "minimum": 0},
                   "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
                   "latency": {"type": ["number", "null"],
                               "description": "the ramp's quantile, seconds"}},
}

_JUDGED = {
    "type": "object", "required": ["seconds", "new", "old"],
    "properties": {"seconds": {"type": "number"}, "new": _MEASURE, "old": _MEASURE,
                   "decision": {"type": "string",
                                "enum": ["advance", "wait", "pause", "rollback"]},
                   "reason": {"type": "string"}},
}

_RAMP_PROGRESS = {
    "type": "object",
    "required": ["app", "new", "old", "ramp", "driving", "window", "last"],
    "properties": {
        "app": NAME, "new": NAME, "old": {"type": "array", "items": NAME},
        "ramp": {"$ref": "#/components/schemas/Ramp"},
        "driving": {"type": "boolean",
                    "description": "whether this replica drives the ramp (with etcd, the one "
                                   "holding the store's lease)"},
        "window": {"oneOf": [_JUDGED, {"type": "null"}],
                   "description": "the step being judged, so far (on the driving replica)"},
        "last": {"oneOf": [_JUDGED, {"type": "null"}],
                 "description": "the last judgement this replica made"},
        **_UNSTORED,
    },
}

_PREVIEW_CONFIG = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": ["header"],
    "properties": {
        "header": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$",
                   "example": "X-Preview"},
        "value": {"type": ["string", "null"], "pattern": "^[\\x21-\\x7e]{1,256}$",
                  "description": "null: the new service's name"},
    },
}

_PREVIEW = {
    "type": "object",
    "required": ["app", "service", "expires_at", "links", "cookie", "header"],
    "properties": {
        "app": NAME, "service": NAME,
        "expires_at": {"type": "string", "format": "date-time"},
        "links": {"type": "array", "items": {"type": "string"},
                  "description": "one per route: visiting it sets the preview cookie"},
        "cookie": {"type": "object", "required": ["name", "value"],
                   "properties": {"name": {"type": "string"}, "value": {"type": "string"}}},
        "header": {"type": ["object", "null"],
                   "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                   "description": "the app's preview header, if it has one"},
    },
}

_APP = {
    "type": "object",
    "required": ["name", "routes", "session_sticky", "drain_timeout", "preview", "services",
                 "release", "generation"],
    "properties": {
        "name": NAME,
        "routes": {"type": "array", "items": {"type": "string"}},
        "session_sticky": {"type": "boolean"},
        "drain_timeout": {"type": ["number", "null"]},
        "preview": {"$ref": "#/components/schemas/PreviewConfig"},
        "services": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Service"}},
        "release": {"oneOf": [{"$ref": "#/components/schemas/Release"}, {"type": "null"}]},
        "generation": {"type": "integer"},
        **_UNSTORED,
    },
}

_COUNT = {"type": "integer", "minimum": 0}

_SERVICE_STATS = {
    "type": "object",
    "required": ["requests", "errors", "codes", "upstream_errors", "sticky", "preview", "inflight",
                 "weight", "duration"],
    "properties": {
        "requests": {**_COUNT, "description": "responses given for the service since start"},
        "errors": {**_COUNT, "description": "of those, the ones with a 5xx status"},
        "codes": {"type": "object", "additionalProperties": _COUNT,
                  "description": "responses by status code"},
        "upstream_errors": {**_COUNT, "description": "failed attempts to use a backend "
                                                     "(connect, reset, timeout, protocol)"},
        "sticky": {**_COUNT, "description": "requests routed by the stickiness cookie"},
        "preview": {**_COUNT, "description": "requests routed by a preview marker"},
        "inflight": {**_COUNT, "description": "requests in flight now"},
        "weight": WEIGHT,
        "duration": {
            "type": "object", "required": ["count", "sum", "buckets"],
            "properties": {
                "count": _COUNT, "sum": {"type": "number", "description": "seconds"},
                "buckets": {"type": "object", "additionalProperties": _COUNT,
                            "description": "cumulative: requests that took at most the key's "
                                           "seconds; \"+Inf\" equals count"}}},
    },
}

_STATS = {
    "type": "object",
    "required": ["app", "time", "services", "removed"],
    "properties": {
        "app": NAME,
        "time": {"type": "number", "description": "when the counters were read, Unix seconds"},
        "services": {"type": "object",
                     "additionalProperties": {"$ref": "#/components/schemas/ServiceStats"}},
        "removed": {"type": "object",
                    "additionalProperties": {"$ref": "#/components/schemas/ServiceStats"},
                    "description": "the last counters of the services deleted in the last 5 "
                                   "minutes (weight: the one each had when it went)"},
    },
}

_APP_IN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["routes", "services"],
    "properties": {
        "name": NAME,
        "routes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "session_sticky": {"type": "boolean"},
        "drain_timeout": {"oneOf": [DURATION, {"type": "null"}]},
        "preview": {"$ref": "#/components/schemas/PreviewConfig"},
        "services": {"type": "object", "minProperties": 1,
                     "additionalProperties": {"$ref": "#/components/schemas/ServiceIn"}},
        "release": {"readOnly": True},
        "generation": {"type": "integer", "readOnly": True},
    },
}

_APP_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "routes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "session_sticky": {"type": "boolean"},
        "drain_timeout": {"oneOf": [DURATION, {"type": "null"}]},
        "preview": {"$ref": "#/components/schemas/PreviewConfig"},
    },
}


_HISTORY_ENTRY = {
    "type": "object",
    "required": ["generation", "time", "client", "token", "operation", "apps", "changes"],
    "properties": {
        "generation": {"type": ["integer", "null"],
                       "description": "null: a change in effect that the store has not taken yet"},
        "time": {"type": "string", "format": "date-time"},
        "client": {"type": "string", "description": 'the client\'s address; "router" for the '
                                                   "router's own changes"},
        "token": {"type": ["string", "null"], "pattern": "^sha256:[0-9a-f]{8}$",
                  "description": "a fingerprint of the bearer token used"},
        "operation": {"type": "string", "example": "set_weights"},
        "apps": {"type": "array", "items": NAME},
        "changes": {"type": "array", "items": {"type": "string"},
                    "example": ["weights web 50->0, web-v2 50->100"]},
        "reason": {"type": "string", "description": "why the router made this change itself "
                                                    "(a ramp's judgement, with what it measured)"},
        "stored": {"type": "boolean", "const": False,
                   "description": "in effect, not stored yet (the store could not be written)"},
        "conflict": {"type": "string", "description": "the change of a conflict's state: the "
                                                      "store did not have it (GET /conflicts)"},
    },
}

_CONFLICT = {
    "type": "object",
    "required": ["name", "found_at", "found_by", "cause", "store", "stored"],
    "properties": {
        "name": {"type": "string", "example": "3-5f0c1a2b"},
        "generation": {"type": "integer"},
        "line": {"type": "string"},
        "change": {"oneOf": [{"$ref": "#/components/schemas/HistoryEntry"}, {"type": "null"}],
                   "description": "the change that made the conflict's state"},
        "found_at": {"type": "string", "format": "date-time"},
        "found_by": {"type": "string", "description": "the replica that held it"},
        "cause": {"type": "string", "description": "how the store lost its data"},
        "store": {"type": "object", "description": "the state the store held instead"},
        "stored": {"type": "boolean", "description": "false: not written to the store yet"},
        "keeping_it_changes": {"type": "array", "items": {"type": "string"},
                               "description": "what keeping it would change"},
        "error": {"type": "string", "description": "its state is not valid"},
    },
}

_APPLY_IN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apps"],
    "properties": {
        "apps": {"type": "object", "description": "the apps section of a configuration file"},
        "domain": {"type": ["string", "null"], "description": "the file's domain, for labels"},
        "source": {"type": "string", "description": "the file's name, for error messages"},
    },
}

_APPLY = {
    "type": "object",
    "required": ["dry_run", "generation", "apps", "changes", "refused"],
    "properties": {
        "dry_run": {"type": "boolean"},
        "generation": {"type": "integer"},
        "apps": {"type": "array", "items": NAME},
        "changes": {"type": "array", "items": {"type": "string"}},
        "refused": {"type": ["string", "null"],
                    "description": "dry run: why the apply would be refused without force"},
    },
}

# By the names the paths' "$ref"s use (#/components/schemas/NAME).
COMPONENTS: dict[str, Any] = {
    "Error": _ERROR, "HealthCheck": _HEALTH_CHECK, "Service": _SERVICE, "ServiceIn": _SERVICE_IN,
    "Release": _RELEASE, "App": _APP, "AppIn": _APP_IN, "AppPatch": _APP_PATCH,
    "HistoryEntry": _HISTORY_ENTRY, "ApplyIn": _APPLY_IN, "Apply": _APPLY,
    "ServiceStats": _SERVICE_STATS, "Stats": _STATS, "Ramp": _RAMP, "RampIn": _RAMP_IN,
    "RampProgress": _RAMP_PROGRESS, "PreviewConfig": _PREVIEW_CONFIG, "Preview": _PREVIEW,
    "Conflict": _CONFLICT,
}
