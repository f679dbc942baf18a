"""Django validators shared by forms and DRF serializers (DRF runs Django validators too)."""

from typing import Any

from django.core.exceptions import ValidationError

from tunixops.text import BAD_CHARS_MESSAGE, has_bad_chars


def validate_text(value: Any) -> None:
    """No NUL and no unpaired surrogate: the database stores neither (tunixops/text.py)."""
    if isinstance(value, str) and has_bad_chars(value):
        raise ValidationError(BAD_CHARS_MESSAGE, code="bad_chars")
