"""The API's error shape for every /api/ path, whatever produced the error.

DRF's exception handler (tunixops/api/errors.py) shapes what its views raise on purpose. This
middleware covers the rest, so an API client never gets one of Django's HTML pages:

- a saturated database pool (settings.TUNIX_DB_POOL_TIMEOUT passed): 503 `database_busy` with
  Retry-After, as in DRF's handler;
- an exception no one handled: 500 `server_error` with a `request_id`, logged with the traceback
  under the same id (also sent as `X-Request-ID`), whether or not DEBUG is on;
- an HTML error page from anywhere else (a path no route matches, an error in a middleware):
  the same status in the JSON shape.
"""

import logging
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase

from tunixops.api.errors import POOL_RETRY_AFTER_SECONDS, error_body, pool_exhausted

API_PREFIX = "/api/"
logger = logging.getLogger("tunixops.api")

CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 500: "server_error"}
SERVER_ERROR_MESSAGE = (
    "The server failed to answer this request; quote the request id to report it."
)


def server_error(request_id: str) -> JsonResponse:
    body = error_body("server_error", SERVER_ERROR_MESSAGE)
    body["error"]["request_id"] = request_id
    response = JsonResponse(body, status=500)
    response["X-Request-ID"] = request_id
    return response


def database_busy() -> JsonResponse:
    """503 with Retry-After: the process's database pool had no connection to lend in time."""
    body = error_body("database_busy", "The server is busy; try again in a moment.")
    response = JsonResponse(body, status=503)
    response["Retry-After"] = str(POOL_RETRY_AFTER_SECONDS)
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def _json_instead(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    if not _is_api(request) or response.status_code < 400:
        return response
    if not response.get("Content-Type", "").startswith("text/html"):
        return response
    status = response.status_code
    if status >= 500:
        request_id = uuid.uuid4().hex
        # Django has logged the traceback just before, as "Internal Server Error: <path>".
        logger.error(
            "request %s: %s %s answered %s", request_id, request.method, request.path, status
        )
        replaced: HttpResponseBase = server_error(request_id)
        replaced.status_code = status
        return replaced
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    code = CODES.get(status, phrase.lower().replace(" ", "_").replace("-", "_"))
    shaped = JsonResponse(error_body(code, f"{phrase}."), status=status)
    if "Retry-After" in response:
        shaped["Retry-After"] = response["Retry-After"]
    return shaped


class ApiErrorsMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return _json_instead(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        return _json_instead(request, await get_response(request))

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        if not _is_api(request):
            return None
        if pool_exhausted(exception):
            return database_busy()
        request_id = uuid.uuid4().hex
        logger.error(
            "request %s: %s %s raised %s",
            request_id,
            request.method,
            request.path,
            type(exception).__name__,
            exc_info=exception,
        )
        return server_error(request_id)
