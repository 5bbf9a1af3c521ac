"""Errors the HTTP layer maps to status codes with a JSON body ``{"error", "message"}``."""

from __future__ import annotations


class ServerError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ServerError):
    status = 400
    code = "bad_request"


class Unauthorized(ServerError):
    status = 401
    code = "unauthorized"


class Forbidden(ServerError):
    status = 403
    code = "forbidden"


class NotFound(ServerError):
    status = 404
    code = "not_found"


class Conflict(ServerError):
    status = 409
    code = "conflict"


class TooManyRequests(ServerError):
    status = 429
    code = "too_many_requests"


class PayloadTooLarge(ServerError):
    status = 413
    code = "payload_too_large"
