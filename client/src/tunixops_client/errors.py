"""Typed errors: each API error carries the status, the API's `code`, its message and fields."""

from typing import Any


class TunixOpsError(Exception):
    """Anything the client reports; the command prints `str(error)` and exits 3."""


class ConfigurationError(TunixOpsError):
    """No server URL or token, or a config file that is unsafe or unreadable."""


class TransportError(TunixOpsError):
    """The server could not be reached or the connection broke."""


class IntegrityError(TunixOpsError):
    """A downloaded file's sha256 is not the one the server registered."""


class UnsafePathError(TunixOpsError):
    """A file would land outside the download directory."""


class ApiError(TunixOpsError):
    """The API answered `{"error": {"code", "message", "fields"?}}` with a 4xx or 5xx."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, list[str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after
        super().__init__(self.describe())

    def describe(self) -> str:
        # Status 0: refused by the client before any request (e.g. a `--set` of the wrong type).
        where = f", HTTP {self.status}" if self.status else ""
        lines = [f"{self.message} ({self.code}{where})"]
        lines += [f"  {name}: {'; '.join(msgs)}" for name, msgs in sorted(self.fields.items())]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return body


class InvalidInput(ApiError):
    """400: the message and `fields` name what to change."""


class AuthenticationFailed(ApiError):
    """401: no token, or a token the server does not know."""


class PermissionDenied(ApiError):
    """403."""


class NotFound(ApiError):
    """404: no such run, artifact, dataset or trace (or not yours to see)."""


class Conflict(ApiError):
    """409: e.g. cancelling a finished run, or an artifact changed since it was registered."""


class TooLarge(ApiError):
    """413: a body over the server's limit."""


class RateLimited(ApiError):
    """429: try again after `retry_after` seconds."""


class Unavailable(ApiError):
    """503: the server is saturated or restarting; try again after `retry_after` seconds."""


class ServerError(ApiError):
    """Any other 5xx."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidInput,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_for(
    status: int, body: Any, retry_after: float | None = None, fallback: str = ""
) -> ApiError:
    """The typed error for a response; a body without the API's shape (a proxy's page) too."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
        raw_fields = error.get("fields")
        fields = (
            {str(k): [str(m) for m in v] for k, v in raw_fields.items() if isinstance(v, list)}
            if isinstance(raw_fields, dict)
            else None
        )
    else:
        code = f"http_{status}"
        message = fallback.strip()[:200] or f"HTTP {status}"
        fields = None
    kind = BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(status, code, message, fields, retry_after)
