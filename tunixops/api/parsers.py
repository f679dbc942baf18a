"""The API's JSON parser: a body limit per view, checked before the body is read, and a nesting
limit, checked before it is parsed."""

import re
from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework import parsers as drf_parsers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.utils import json

from tunixops.exceptions import InvalidInput, TooLarge

# An escape inside a JSON string (a backslash and the character it escapes, a quote or a
# backslash included); then, once escapes are gone, a JSON string.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
# Deleted: all but quotes and brackets. Then every bracket reads as `(` or `)`.
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text opens more than `limit` arrays or objects inside one another.

    Python's parser recurses once per level and fails near 1,000 with a RecursionError; the
    serializers and the database recurse too. Counted on the raw bytes with C-speed steps, so
    the body is parsed only once, and not at all when it holds no more brackets than the limit:
    drop the escapes, keep quotes and brackets, drop the strings, then take away innermost
    `()` pairs once per level. A body that is not JSON may be misjudged either way; it fails
    to parse, and a RecursionError there is caught too.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    # Dropping `""` removes an empty string or joins two strings into one: either way what is
    # outside strings is unchanged, and most strings of a large body are gone before the
    # regular expression runs.
    parens = _STRING.sub(b"", body.translate(_AS_PARENS, _NOT_STRUCTURE).replace(b'""', b""))
    for _ in range(limit):
        inner = parens.replace(b"()", b"")
        if len(inner) == len(parens):
            return False
        parens = inner
    return b"()" in parens


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
            raise TooLarge(f"Request body is larger than {limit} bytes.")
        body = stream.read(limit + 1 if limit else -1) if stream is not None else b""
        if limit and len(body) > limit:
            raise TooLarge(f"Request body is larger than {limit} bytes.")
        depth = settings.TUNIX_MAX_JSON_DEPTH
        too_deep = InvalidInput(
            f"JSON is nested more than {depth} levels deep.", code="nested_too_deep"
        )
        if nesting_exceeds(body, depth):
            raise too_deep
        # DRF's JSONParser, step by step, so that the bytes are let go of once decoded: with the
        # text and the parsed values, a 32 MB trace batch would be alive three times over.
        # get_encoding() refuses charsets that are not text codecs; newer than the stubs.
        encoding = drf_parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        try:
            text = body.decode(encoding)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        del body
        try:
            return json.loads(
                text, parse_constant=json.strict_constant if JSONParser.strict else None
            )
        except RecursionError as exc:  # only if the limit is set near Python's own
            raise too_deep from exc
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
