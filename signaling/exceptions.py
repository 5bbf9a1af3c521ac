"""Errors raised by the signaling package.

Each carries a stable machine-readable ``code`` that the WebSocket edge sends
back to the client as ``{"type": "error", "code": ..., "message": ...}``.
"""

from __future__ import annotations


class SignalingError(Exception):
    """Base class: a request that cannot be carried out, with a reason for the client."""

    code = "error"
    #: whether the connection must be closed after reporting the error
    fatal = False

    def __init__(self, message: str, *, code: str | None = None, fatal: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if fatal is not None:
            self.fatal = fatal


class InvalidMessage(SignalingError):
    """The message is not valid JSON, has an unknown type or wrong fields."""

    code = "invalid_message"


class NotAuthenticated(SignalingError):
    code = "not_authenticated"
    fatal = True


class Forbidden(SignalingError):
    """The participant may not act on that session (wrong token, stranger's session)."""

    code = "forbidden"
    fatal = True


class NotFound(SignalingError):
    code = "not_found"


class InvalidState(SignalingError):
    """The action does not fit the session's current state (accepting an expired offer...)."""

    code = "bad_state"


class BadSdp(SignalingError):
    code = "bad_sdp"


class MediaError(SignalingError):
    code = "media_error"
