"""JSON parsers for trace uploads, which are larger than the site-wide request limit allows."""

import io
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.parsers import BaseParser, JSONParser

from tunixops.api import RequestTooLarge


class LargeJSONParser(BaseParser):
    """JSON with its own body limit, named by `limit_setting`; 413 past it, declared or actual.

    Not a JSONParser subclass on purpose: DRF hands a JSONParser `request.body`, and Django checks
    that against the site-wide DATA_UPLOAD_MAX_MEMORY_SIZE (256 KB) before any parser runs. Given
    the raw stream instead, this reads at most its own limit plus one byte.
    """

    media_type = "application/json"
    limit_setting = ""

    def parse(
        self,
        stream: IO[Any] | None,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        limit = int(getattr(settings, self.limit_setting))
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if declared > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise RequestTooLarge(f"Request body is larger than {limit} bytes.")
        return JSONParser().parse(io.BytesIO(body), media_type, parser_context)


class TraceJSONParser(LargeJSONParser):
    """One trace may be 1 MB."""

    limit_setting = "TUNIX_TRACE_MAX_REQUEST_BYTES"


class TraceBatchJSONParser(LargeJSONParser):
    """Up to 1,000 traces."""

    limit_setting = "TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES"
