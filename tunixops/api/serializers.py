"""Serializer bases shared by every API.

`InputSerializer` is the base of everything that reads a request (bodies and query strings): it
refuses NUL characters and unpaired surrogates in every string it takes, naming the field
(`config.tokenizer`, `traces.3.prompt`), so none reaches the database as a 500.
`StrictSerializer` also refuses keys it does not declare.
"""

from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from tunixops.text import BAD_CHARS_MESSAGE, bad_char_paths
from tunixops.validators import validate_text

# Fields whose internal value is never a string, or is one of a fixed set: nothing to check.
_SAFE_FIELDS = (
    serializers.BooleanField,
    serializers.IntegerField,
    serializers.FloatField,
    serializers.DecimalField,
    serializers.DateTimeField,
    serializers.DateField,
    serializers.DurationField,
    serializers.UUIDField,
    serializers.ChoiceField,
)


def no_bad_chars_within(value: Any) -> None:
    """For fields holding free-form JSON: name each bad string by its path inside the field."""
    paths = list(bad_char_paths(value))
    if not paths:
        return
    if "" in paths or "non_field_errors" in paths:
        raise serializers.ValidationError(BAD_CHARS_MESSAGE)
    raise serializers.ValidationError({path: [BAD_CHARS_MESSAGE] for path in paths})


_DRF_CHAR_CHECKS = (ProhibitNullCharactersValidator, ProhibitSurrogateCharactersValidator)


def guard(field: serializers.Field) -> None:  # type: ignore[type-arg]
    """Attach the bad-character check to `field` (and a list's items) unless it has its own.

    A CharField gets the shared check in place of DRF's two, for one message everywhere; a
    nested InputSerializer guards its own fields; a custom field that checks its strings as it
    parses them (the trace steps, a million in a batch) says so with `checks_bad_chars = True`.
    What is left is free-form JSON (a dict's keys included), checked after parsing.
    """
    if getattr(field, "checks_bad_chars", False) or isinstance(
        field, (serializers.BaseSerializer, *_SAFE_FIELDS)
    ):
        return
    if isinstance(field, serializers.CharField):
        kept = [v for v in field.validators if not isinstance(v, _DRF_CHAR_CHECKS)]
        field.validators = [*kept, validate_text]
    elif isinstance(field, serializers.ListField) and isinstance(
        field.child, (serializers.CharField, *_SAFE_FIELDS)
    ):
        guard(field.child)
    else:
        field.validators.append(no_bad_chars_within)


class InputSerializer(serializers.Serializer[Any]):
    """Every string field refuses NUL and unpaired surrogates (400, field named)."""

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        for field in fields.values():
            guard(field)
        return fields


class StrictSerializer(InputSerializer):
    """Refuses keys it does not declare, so a typo is an error rather than silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


# drf-spectacular's extension hooks are untyped, hence the two ignores.
class StrictSerializerSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """Documents what StrictSerializer enforces, so clients and fuzzers do not send other keys."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: AutoSchema, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(  # type: ignore[no-untyped-call]
            self.target, direction, bypass_extensions=True
        )
        schema["additionalProperties"] = False
        return schema
