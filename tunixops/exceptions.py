"""Domain errors: plain exceptions that services, selectors and the worker raise.

None of them knows about HTTP. The API's one exception handler (tunixops/api/errors.py) maps each
kind to a status and the `{"error": {"code", "message", "fields"?}}` body; the pages turn them into
messages. A worker or a command can raise and catch them without importing the web layer.
"""

from typing import Any


class ApplicationError(Exception):
    """What went wrong (`message`), a stable machine-readable `code`, and per-field messages."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fields: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.fields = fields
        # Details a handler may pass on, e.g. `retry_after` seconds.
        self.extra = extra or {}


class InvalidInput(ApplicationError):
    default_code = "invalid"


class NotFound(ApplicationError):
    default_code = "not_found"


class PermissionDenied(ApplicationError):
    default_code = "permission_denied"


class Conflict(ApplicationError):
    default_code = "conflict"


class TooLarge(ApplicationError):
    default_code = "request_too_large"


class LimitExceeded(ApplicationError):
    """A quota or rate: the caller may try again later (`extra["retry_after"]` seconds)."""

    default_code = "limit_exceeded"


class Unavailable(ApplicationError):
    """A shared resource is saturated or down for now (`extra["retry_after"]` seconds)."""

    default_code = "unavailable"
