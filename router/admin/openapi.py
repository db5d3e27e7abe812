"""The OpenAPI 3 document served at ``/api/v1/openapi.json``; it describes what the handlers do.
The schemas of the bodies are in ``router.admin.apischema``."""

from __future__ import annotations

from typing import Any

from router.control.history import HISTORY_LIMIT

from .apischema import BACKEND, COMPONENTS, DURATION, NAME, WEIGHT


def _err(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: str, description: str, etag: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
    if etag:
        out["headers"] = {"ETag": {"schema": {"type": "string"}, "description": '"<generation>"'}}
    return out


def _body(ref: str | dict[str, Any], required: bool = True) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"} if isinstance(ref, str) else ref
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_APP_PARAM = {"name": "app", "in": "path", "required": True, "schema": NAME}
_SVC_PARAM = {"name": "svc", "in": "path", "required": True, "schema": NAME}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
             "schema": {"type": "string", "pattern": '^(\\*|(W/)?"[0-9]+")$'},
             "description": 'the ETag of the app ("<generation>"); a stale one answers 412'}

_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False,
                  "schema": {"type": "string", "enum": ["*"]},
                  "description": "*: create only; 412 if it exists"}

def _bad_request(description: str) -> dict[str, Any]:
    """A 400: the API's JSON error, or plain text from the HTTP layer itself, which answers a
    request that is not valid HTTP/1.1 (its method, a header, its framing) before any operation."""
    out = _err(description)
    out["content"]["text/plain"] = {"schema": {"type": "string"}}
    return out


# Every call: what the listener answers before any operation (docs/admin-api.md, "Web pages").
_COMMON = {"400": _bad_request("not a valid HTTP request"),
           "401": _err("missing or wrong bearer token (a wrong one is answered after a delay)"),
           "403": _err("sent by a page of another origin than the listener's and those of "
                       "admin.allowed_origins (the Origin field)"),
           "421": _err("the Host names neither an address of the listener, localhost, nor a "
                       "name of admin.allowed_hosts (DNS rebinding), and the call has no token"),
           "429": _err("too many wrong tokens from this client are waiting for their answer")}
_NOT_JSON = {"415": _err("a body that is not sent as Content-Type: application/json (or, "
                         "without a body, a form's or text/plain type)")}
_MUTATION = {**_COMMON, "400": _bad_request("body is not JSON, or not a valid HTTP request"),
             "404": _err("unknown app or service"),
             **_NOT_JSON,
             "409": _err("state conflict"), "412": _err("stale If-Match"),
             "413": _err("body too large"), "422": _err("invalid value"),
             "503": _err("the state cannot be persisted")}
_REMOVE = {"type": "boolean", "description": "also stop and remove the containers (in Swarm mode "
           "the services) of the versions the step takes out, through the Docker provider; 409 "
           "for an app that was not discovered from Docker"}
_REMOVE_FAILED = "the release step is done, but removing the containers failed"


def openapi() -> dict[str, Any]:
    app_path = "/api/v1/apps/{app}"
    return {
        "openapi": "3.1.0",
        "info": {"title": "bluegreen-router admin API", "version": "1"},
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/history": {"get": {
                "summary": "every accepted change, newest first",
                "parameters": [
                    {"name": "app", "in": "query", "required": False, "schema": NAME,
                     "description": "only the changes of this app"},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT,
                                "default": 100}}],
                "responses": {**_COMMON, "422": _err("invalid app or limit"),
                              "503": _err("the store cannot be reached"),
                              "200": {"description": "the history", "content": {"application/json": {
                                  "schema": {"type": "object", "required": ["history"], "properties": {
                                      "history": {"type": "array", "items": {
                                          "$ref": "#/components/schemas/HistoryEntry"}}}}}}}}}},
            "/api/v1/conflicts": {"get": {
                "summary": "states replicas held that the store no longer had after it lost its "
                           "data (docs/etcd.md)",
                "responses": {**_COMMON, "503": _err("the store cannot be reached"),
                              "200": {"description": "the conflicts", "content": {"application/json": {
                                  "schema": {"type": "object", "required": ["generation", "conflicts"],
                                             "properties": {"generation": {"type": "integer"}, "conflicts": {
                                                 "type": "array", "items": {
                                                     "$ref": "#/components/schemas/Conflict"}}}}}}}}}},
            "/api/v1/conflicts/{name}": {"post": {
                "summary": "resolve a conflict: keep its state (one change) or the store's",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}, _IF_MATCH],
                "requestBody": _body({"type": "object", "additionalProperties": False,
                                      "required": ["keep"], "properties": {
                                          "keep": {"type": "string", "enum": ["conflict", "store"]}}}),
                "responses": {**_MUTATION, "404": _err("no such conflict"),
                              "200": {"description": "resolved", "content": {"application/json": {
                                  "schema": {"type": "object",
                                             "required": ["conflict", "kept", "generation", "changes"],
                                             "properties": {
                                                 "conflict": {"type": "string"},
                                                 "kept": {"type": "string", "enum": ["conflict", "store"]},
                                                 "generation": {"type": "integer"},
                                                 "changes": {"type": "array", "items": {"type": "string"}}}}}}}}}},
            "/api/v1/apply": {"post": {
                "summary": "make the apps of a configuration file the routing state, as one change",
                "parameters": [
                    {**_IF_MATCH, "description": 'the generation of every app ("<generation>" of '
                                                 "GET /api/v1/apps); a stale one answers 412"},
                    {"name": "dry_run", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["1", "0", "true", "false"]},
                     "description": "compute the changes, change nothing"},
                    {"name": "force", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["1", "0", "true", "false"]},
                     "description": "close open releases and delete pinned services if the file says so"}],
                "requestBody": _body("ApplyIn"),
                "responses": {**_MUTATION, "200": _json("Apply", "applied, or what would be")}}},
            "/api/v1/apps": {"get": {
                "summary": "every app",
                "responses": {**_COMMON, "200": {"description": "the apps", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["apps"], "properties": {
                        "apps": {"type": "array", "items": {"$ref": "#/components/schemas/App"}}}}}}}}}},
            app_path: {
                "parameters": [_APP_PARAM],
                "get": {"summary": "one app",
                        "responses": {**_COMMON, "200": _json("App", "the app"), "404": _err("unknown app")}},
                "put": {"summary": "create or replace an app", "parameters": [_IF_MATCH, _IF_NONE_MATCH],
                        "requestBody": _body("AppIn"),
                        "responses": {**_MUTATION, "200": _json("App", "replaced"),
                                      "201": _json("App", "created")}},
                "patch": {"summary": "change session_sticky, routes, drain_timeout",
                          "parameters": [_IF_MATCH], "requestBody": _body("AppPatch"),
                          "responses": {**_MUTATION, "200": _json("App", "changed")}},
                "delete": {"summary": "delete an app", "parameters": [_IF_MATCH],
                           "responses": {**_MUTATION, "204": {"description": "deleted"}}},
            },
            app_path + "/weights": {
                "parameters": [_APP_PARAM],
                "put": {"summary": "change several weights in one step, or none",
                        "description": "409 if every service left with weight would have no "
                                       "backend ready to take requests, or if every weight "
                                       "would be 0; force=true does it anyway",
                        "parameters": [_IF_MATCH, {
                            "name": "force", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["true", "false"]},
                            "description": "apply even if no weighted service has a ready "
                                           "backend, or every weight is 0"}],
                        "requestBody": _body({"type": "object", "minProperties": 1,
                                              "additionalProperties": WEIGHT}),
                        "responses": {**_MUTATION, "200": _json("App", "changed")}},
            },
            app_path + "/services/{svc}": {
                "parameters": [_APP_PARAM, _SVC_PARAM],
                "put": {"summary": "create or replace a service",
                        "parameters": [_IF_MATCH, _IF_NONE_MATCH],
                        "requestBody": _body("ServiceIn"),
                        "responses": {**_MUTATION, "200": _json("App", "replaced"),
                                      "201": _json("App", "created")}},
                "delete": {"summary": "delete a service (409 while in an open release)",
                           "parameters": [_IF_MATCH],
                           "responses": {**_MUTATION, "204": {"description": "deleted"}}},
            },
            app_path + "/release": {
                "parameters": [_APP_PARAM],
                "post": {"summary": "start a blue-green release: the new service gets weight 0",
                         "parameters": [_IF_MATCH],
                         "requestBody": _body({"type": "object", "additionalProperties": False,
                                               "required": ["service", "backends"],
                                               "properties": {
                                                   "service": NAME,
                                                   "backends": {"type": "array", "items": BACKEND,
                                                                "minItems": 1, "uniqueItems": True},
                                                   "health_check": {"$ref": "#/components/schemas/HealthCheck"}}}),
                         "responses": {**_MUTATION, "201": _json("Release", "started")}},
                "get": {"summary": "the open release",
                        "responses": {**_COMMON, "200": _json("Release", "the release"),
                                      "404": _err("unknown app or no open release")}},
            },
            app_path + "/release/confirm": {
                "parameters": [_APP_PARAM],
                "post": {"summary": "delete the old services (409 while in_progress); with "
                                    "remove, also stop and remove their containers",
                         "parameters": [_IF_MATCH],
                         "requestBody": _body({"type": "object", "additionalProperties": False,
                                               "properties": {"force": {"type": "boolean"},
                                                              "remove": _REMOVE}},
                                              required=False),
                         "responses": {**_MUTATION, "200": _json("App", "confirmed"),
                                       "502": _err(_REMOVE_FAILED)}},
            },
            app_path + "/release/rollback": {
                "parameters": [_APP_PARAM],
                "post": {"summary": "delete the new service and restore the old weights; "
                                    "with remove, also stop and remove its containers",
                         "parameters": [_IF_MATCH],
                         "requestBody": _body({"type": "object", "additionalProperties": False,
                                               "properties": {"remove": _REMOVE}},
                                              required=False),
                         "responses": {**_MUTATION, "200": _json("App", "rolled back"),
                                       "202": _json("App", "rolled back, in effect; not stored "
                                                           "yet: the store cannot be written"),
                                       "502": _err(_REMOVE_FAILED)}},
            },
            app_path + "/release/ramp": {
                "parameters": [_APP_PARAM],
                "post": {"summary": "start a guarded ramp of the open release: the new version's "
                                    "share raised step by step, each step judged against the old "
                                    "version, rolled back when out of bounds",
                         "parameters": [_IF_MATCH], "requestBody": _body("RampIn"),
                         "responses": {**_MUTATION, "201": _json("Release", "the ramp started")}},
                "get": {"summary": "the ramp: its step, and what the step judged now measures",
                        "responses": {**_COMMON, "200": _json("RampProgress", "the ramp"),
                                      "404": _err("unknown app, no open release or no ramp")}},
            },
            **{app_path + f"/release/ramp/{move}": {
                "parameters": [_APP_PARAM],
                "post": {"summary": summary, "parameters": [_IF_MATCH],
                         "requestBody": _body({"type": "object", "additionalProperties": False,
                                               "maxProperties": 0}, required=False),
                         "responses": {**_MUTATION, "200": _json("Release", "done"),
                                       "202": _json("Release", "done, in effect; not stored yet "
                                                               "(abort)")}},
            } for move, summary in (
                ("pause", "stop judging; the weights stay (may be moved by hand)"),
                ("resume", "apply the current step again and judge it over a fresh interval"),
                ("abort", "end the ramp: the old weights back, the new version kept at weight 0"))},
            app_path + "/release/preview": {
                "parameters": [_APP_PARAM],
                "post": {"summary": "a signed preview token of the open release: a link that sets "
                                    "its cookie, so a browser reaches the new version whatever "
                                    "its weight",
                         "requestBody": _body({"type": "object", "additionalProperties": False,
                                               "properties": {"ttl": {
                                                   **DURATION, "description": "how long it works "
                                                   "(default 1h, at most 7d)"}}},
                                              required=False),
                         "responses": {**_COMMON, **_NOT_JSON,
                                       "200": _json("Preview", "the preview", etag=False),
                                       "400": _bad_request("body is not JSON, or not a valid HTTP request"),
                                       "404": _err("unknown app or no open release"),
                                       "422": _err("invalid ttl")}},
            },
            app_path + "/stats": {
                "parameters": [_APP_PARAM],
                "get": {"summary": "live counters of the app's services, summed across worker "
                                   "processes, since the router started",
                        "responses": {**_COMMON, "200": _json("Stats", "the counters", etag=False),
                                      "404": _err("unknown app")}},
            },
        },
    }
