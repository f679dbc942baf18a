"""One JSON error shape for the whole API: `{"error": {"code", "message", "fields"?}}`."""

import io
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.response import Response

from runs.recipes import ConfigError
from runs.state_machine import IllegalTransition

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


class ApplicationError(exceptions.APIException):
    """A domain error with its HTTP status, raised from services and views alike."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status_code: int = 400,
        fields: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.fields = fields


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"
    default_detail = "Request body is too large."


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


def error_response(
    status_code: int, code: str, message: str, fields: dict[str, list[str]] | None = None
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return Response({"error": body}, status=status_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, IllegalTransition):
        return error_response(
            status.HTTP_409_CONFLICT,
            "illegal_transition",
            f"The run is {exc.current}; it cannot become {exc.target}.",
        )
    if isinstance(exc, ConfigError):
        return error_response(400, "invalid", "Invalid input.", exc.errors)
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    # Imported here: rest_framework.views imports DEFAULT_PARSER_CLASSES, i.e. this module, so a
    # top-level import fails for whoever imports this module first (services, the worker).
    from rest_framework.views import exception_handler as drf_exception_handler

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
        fields = exc.fields if isinstance(exc, ApplicationError) else None
        result = error_response(response.status_code, str(code), str(message), fields)
        for header, value in response.items():
            result[header] = value
        return result
    return response


class LimitedJSONParser(BaseParser):
    """JSON with a body limit named by `limit_setting`; 413 past it, declared or actual.

    Not a JSONParser subclass on purpose: DRF hands a JSONParser `request.body`, which Django
    checks against the site-wide DATA_UPLOAD_MAX_MEMORY_SIZE before any parser runs, so no
    subclass could allow more. Given the raw stream instead, this reads at most its limit plus
    one byte. Views with larger bodies (trace uploads) subclass it with their own setting.
    """

    media_type = "application/json"
    limit_setting = "DATA_UPLOAD_MAX_MEMORY_SIZE"

    def parse(
        self,
        stream: IO[Any] | None,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        limit = int(getattr(settings, self.limit_setting) or 0)
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if limit and declared > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
        body = stream.read(limit + 1 if limit else -1) if stream is not None else b""
        if limit and len(body) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
        return JSONParser().parse(io.BytesIO(body), media_type, parser_context)
