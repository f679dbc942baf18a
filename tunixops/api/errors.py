"""One JSON error shape for the whole API: `{"error": {"code", "message", "fields"?}}`.

The only place where domain errors (tunixops/exceptions.py) become HTTP statuses.
"""

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from psycopg_pool import PoolTimeout, TooManyRequests
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tunixops import exceptions as domain

# Built with inline_serializer: a serializer class cannot declare a field named `fields`.
ErrorOutput = inline_serializer(
    "ErrorOutput",
    {
        "error": inline_serializer(
            "ErrorBodyOutput",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "fields": serializers.DictField(
                    child=serializers.ListField(child=serializers.CharField()),
                    required=False,
                    help_text="Messages by dotted field name, e.g. `config.max_steps`.",
                ),
            },
        )
    },
)

# What every 4xx and 5xx of the API answers, as the schema documents it.
ERROR = OpenApiResponse(ErrorOutput, description='`{"error": {"code", "message", "fields"?}}`')
# Every operation may answer these: no or a bad token (401), a user over their request rate (429,
# with Retry-After; see tunixops/api/throttles.py).
ALWAYS = (401, 429)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """The error responses of an operation for its schema: those named plus ALWAYS."""
    return {code: ERROR for code in sorted({*ALWAYS, *statuses})}


# Most specific first: a subclass maps before its base.
STATUS_BY_KIND: tuple[tuple[type[domain.ApplicationError], int], ...] = (
    (domain.InvalidInput, status.HTTP_400_BAD_REQUEST),
    (domain.PermissionDenied, status.HTTP_403_FORBIDDEN),
    (domain.NotFound, status.HTTP_404_NOT_FOUND),
    (domain.Conflict, status.HTTP_409_CONFLICT),
    (domain.TooLarge, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE),
    (domain.LimitExceeded, status.HTTP_429_TOO_MANY_REQUESTS),
    (domain.Unavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
    (domain.ApplicationError, status.HTTP_400_BAD_REQUEST),
)


def status_of(exc: domain.ApplicationError) -> int:
    return next(code for kind, code in STATUS_BY_KIND if isinstance(exc, kind))


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as dotted field names: `{"config.max_steps": [...]}`."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = key if not prefix else f"{prefix}.{key}"
            # A nested object's own errors (e.g. a list's length) are named after the object.
            if key == "non_field_errors":
                name = prefix or "non_field_errors"
            out.update(_flatten(value, name))
        return out
    if isinstance(detail, list) and detail and all(isinstance(d, str) for d in detail):
        return {prefix or "non_field_errors": [str(d) for d in detail]}
    if isinstance(detail, list):
        out = {}
        for i, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def error_body(
    code: str, message: str, fields: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def error_response(
    status_code: int, code: str, message: str, fields: dict[str, list[str]] | None = None
) -> Response:
    return Response(error_body(code, message, fields), status=status_code)


# What a client is told to wait after a saturated connection pool answered 503.
POOL_RETRY_AFTER_SECONDS = 2


def pool_exhausted(exc: BaseException | None) -> bool:
    """True when `exc` comes from a connection pool with no connection to lend in time.

    Django wraps the pool's own error in its OperationalError, so the chain is searched.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, PoolTimeout | TooManyRequests):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def database_busy() -> Response:
    response = error_response(503, "database_busy", "The server is busy; try again in a moment.")
    response["Retry-After"] = str(POOL_RETRY_AFTER_SECONDS)
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if pool_exhausted(exc):
        return database_busy()
    if isinstance(exc, domain.ApplicationError):
        mapped = error_response(status_of(exc), exc.code, exc.message, exc.fields)
        retry_after = exc.extra.get("retry_after")
        if retry_after is not None:
            mapped["Retry-After"] = str(max(1, round(retry_after)))
        return mapped
    if isinstance(exc, RequestDataTooBig):
        return error_response(413, "request_too_large", "Request body is too large.")
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        return error_response(
            response.status_code, "invalid", "Invalid input.", _flatten(exc.detail)
        )
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        result = error_response(response.status_code, str(code), str(message))
        for header, value in response.items():
            result[header] = value
        return result
    return response
