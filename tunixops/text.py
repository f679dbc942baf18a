"""Text the database can store: PostgreSQL's text and jsonb refuse NUL and unpaired surrogates.

Django-free on purpose: the worker's log sink and metric parser use it on a child's output
(replacing such characters), the API, the run form and recipe config values to refuse them in
requests with the field named (a 400, never a 500 at the INSERT).
"""

import re
from collections.abc import Iterator
from typing import Any

# NUL, and any UTF-16 surrogate code point (in a Python str these only occur unpaired: from JSON
# escapes such as "\ud800", or from bytes decoded with surrogateescape).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
BAD_CHARS_MESSAGE = "Must not contain NUL characters or unpaired surrogates."


def storable(text: str) -> str:
    """`text` with every NUL and unpaired surrogate replaced by U+FFFD."""
    return UNSTORABLE.sub(REPLACEMENT, text) if UNSTORABLE.search(text) else text


def has_bad_chars(text: str) -> bool:
    # An ASCII string (a flag CPython keeps, so asking is free) can only hold NUL, which `in`
    # finds with memchr; the regular expression is several times slower on the long texts of
    # a trace batch.
    if text.isascii():
        return "\x00" in text
    return UNSTORABLE.search(text) is not None


def bad_char_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths (`a.0.b`) of every string, key or value, in a JSON value that holds one.

    A key that is itself bad is reported under its parent's path, since its own name cannot be
    shown as it is.
    """
    if isinstance(value, str):
        if has_bad_chars(value):
            yield prefix
    elif isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            if isinstance(key, str) and has_bad_chars(key):
                yield prefix or "non_field_errors"
                continue
            yield from bad_char_paths(item, f"{prefix}.{name}" if prefix else name)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from bad_char_paths(item, f"{prefix}.{index}" if prefix else str(index))
