"""The router's error hierarchy: each error carries its HTTP status and a stable code.

The admin API turns them into ``{"error": {"code", "message", "field"}}`` in exactly one place
(``router.admin.app``); everything below it raises these and never builds a response itself.
"""

from __future__ import annotations


class RouterError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BadRequest(RouterError):
    status, code = 400, "bad_request"


class Unauthorized(RouterError):
    status, code = 401, "unauthorized"


class Forbidden(RouterError):
    status, code = 403, "forbidden"


class NotFound(RouterError):
    status, code = 404, "not_found"


class Conflict(RouterError):
    status, code = 409, "conflict"


class PreconditionFailed(RouterError):
    status, code = 412, "precondition_failed"


class PayloadTooLarge(RouterError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(RouterError):
    status, code = 415, "unsupported_media_type"


class Misdirected(RouterError):
    status, code = 421, "misdirected"


class Invalid(RouterError):
    status, code = 422, "invalid"


class TooManyRequests(RouterError):
    status, code = 429, "too_many_requests"


class BadGateway(RouterError):
    status, code = 502, "bad_gateway"


class Unavailable(RouterError):
    status, code = 503, "unavailable"
