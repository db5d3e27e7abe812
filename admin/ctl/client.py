"""routerctl's side of the admin API: one HTTP client, and the errors a command ends with
(each with its exit code)."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9090"  # the admin API's default listen address
DEFAULT_TIMEOUT = 10.0
API = "/api/v1/apps"

EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4

INT_RE = re.compile(r"^-?[0-9]+$")  # stricter than int(): no "1_0", " 5", "+5"


# -- errors -----------------------------------------------------------------------------------
class CtlError(Exception):
    """Ends the command with ``exit_code`` after printing ``routerctl: <message>``."""

    exit_code = EXIT_SERVER

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CtlError):
    exit_code = EXIT_USAGE


class Unreachable(CtlError):
    exit_code = EXIT_UNREACHABLE


# The server's words for an option of the API, and routerctl's: what to type instead.
_CLI_TERMS = (("send force=true", "add --force"), ("apply with force", "add --force"),
              ("confirm with force", "confirm with --force"))


def cli_terms(message: str) -> str:
    """A message of the server in routerctl's terms: options named as they are typed."""
    for api, cli in _CLI_TERMS:
        message = message.replace(api, cli)
    return message


class ApiError(CtlError):
    """The server answered 4xx/5xx; its ``{"error": {...}}`` body is passed through, in
    routerctl's terms."""

    def __init__(self, status: int, code: str, message: str, field: str | None,
                 body: Any = None) -> None:
        text = f"{status} {code}: {cli_terms(message)}"
        if field and field != "force":  # the message names --force
            text += f" (field: {field})"
        super().__init__(text)
        self.status, self.code, self.field, self.body = status, code, field, body


# -- HTTP -------------------------------------------------------------------------------------
class Client:
    """One admin API endpoint. ``request`` returns the decoded JSON body or raises a CtlError."""

    def __init__(self, url: str, token: str | None, timeout: float,
                 if_match: int | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--url: must be http://HOST:PORT or https://HOST:PORT (got {url!r})")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.if_match = if_match
        self.etag: str | None = None  # of the last answer
        # Straight to the admin listener: it is loopback or an internal address, and an HTTP
        # proxy from the environment would see the bearer token.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        headers = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            # default=str: a YAML date in a file to apply reaches the server, which names it.
            data = json.dumps(body, default=str).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.if_match is not None and method != "GET":
            headers.setdefault("If-Match", f'"{self.if_match}"')
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
                self.etag = resp.headers.get("ETag")
        except urllib.error.HTTPError as e:
            raise _api_error(e.code, e.reason, e.read()) from None
        except urllib.error.URLError as e:
            raise Unreachable(f"cannot reach the admin API at {self.url}: {e.reason}") from None
        except (socket.timeout, TimeoutError):
            raise Unreachable(f"cannot reach the admin API at {self.url}: "
                              f"no answer within {self.timeout:g}s") from None
        except OSError as e:  # a connection reset mid-answer, for one
            raise Unreachable(f"cannot reach the admin API at {self.url}: {e}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CtlError(f"the server at {self.url} answered {method} {path} "
                           "with a body that is not JSON") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)


def _api_error(status: int, reason: Any, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
        err = body["error"]
        return ApiError(status, str(err.get("code") or "error"), str(err.get("message") or reason),
                        err.get("field"), body)
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not the admin API's error shape (a proxy in between, for one): say what we got.
        text = raw.decode("utf-8", "replace").strip().splitlines()
        return ApiError(status, "http_error", text[0][:200] if text else str(reason), None)


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def app_path(app: str, tail: str = "") -> str:
    return f"{API}/{quote(app)}{tail}"
