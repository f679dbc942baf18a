"""Input and output shapes of the trace and dataset API."""

import json
import re
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from traces.formats import FORMATS
from traces.models import (
    MAX_BATCH,
    MAX_DATASET_TRACES,
    MAX_STEP_CHARS,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    Dataset,
    DatasetSelection,
    MetaFilters,
    MetaScalar,
    Trace,
)
from tunixops.api.serializers import InputSerializer, StrictSerializer
from tunixops.text import BAD_CHARS_MESSAGE, has_bad_chars

MAX_STEP_TYPE_CHARS = 64
MAX_FILTER_KEYS = 20
MAX_FILTER_VALUES = 100
MAX_FILTER_KEY_CHARS = 100
MAX_FILTER_VALUE_CHARS = 1_000
# A dataset key is `name-version` and appears in URLs and file names.
KEY_PART = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# What `?meta=key=value` also reads as a number or boolean, so `difficulty=3` finds `3` and `"3"`.
JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _text(max_length: int) -> serializers.CharField:
    # Prompts and answers are kept exactly as sent, surrounding whitespace included. NUL and
    # lone surrogates are refused by the CharField itself.
    return serializers.CharField(max_length=max_length, trim_whitespace=False)


STEP_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["i", "type", "content"],
    "properties": {
        "i": {"type": "integer", "minimum": 0, "description": "Unique within the trace."},
        "type": {"type": "string", "minLength": 1, "maxLength": MAX_STEP_TYPE_CHARS},
        "content": {"type": "string", "maxLength": MAX_STEP_CHARS},
    },
}


@extend_schema_field({"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": STEP_SCHEMA})
class StepsField(serializers.Field):  # type: ignore[type-arg]
    """`[{i, type, content}]`, returned in order of `i`.

    Checked by hand rather than by a nested serializer: a batch holds up to a million steps, and
    a serializer per step would spend most of the request there. It checks its own strings.
    """

    checks_bad_chars = True

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list):
            raise serializers.ValidationError("Expected a list of steps.")
        if not 1 <= len(data) <= MAX_STEPS:
            raise serializers.ValidationError(f"Expected 1 to {MAX_STEPS} steps, got {len(data)}.")
        errors: dict[str, dict[str, list[str]]] = {}
        seen: set[int] = set()
        steps = []
        for index, step in enumerate(data):
            problems = self._step_problems(step, seen)
            if problems:
                errors[str(index)] = problems
                continue
            seen.add(step["i"])
            steps.append({"i": step["i"], "type": step["type"], "content": step["content"]})
        if errors:
            raise serializers.ValidationError(errors)
        steps.sort(key=lambda step: step["i"])
        return steps

    @staticmethod
    def _step_problems(step: Any, seen: set[int]) -> dict[str, list[str]]:
        if not isinstance(step, dict):
            return {"non_field_errors": ["Expected an object {i, type, content}."]}
        problems = {key: ["Unknown field."] for key in step.keys() - {"i", "type", "content"}}
        for key in ("i", "type", "content"):
            if key not in step:
                problems[key] = ["This field is required."]
        i, kind, content = step.get("i"), step.get("type"), step.get("content")
        if "i" in step:
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                problems["i"] = ["Expected an integer >= 0."]
            elif i in seen:
                problems["i"] = [f"Duplicate step index {i}."]
        if "type" in step:
            if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_STEP_TYPE_CHARS:
                problems["type"] = [f"Expected a string of 1 to {MAX_STEP_TYPE_CHARS} characters."]
            elif has_bad_chars(kind):
                problems["type"] = [BAD_CHARS_MESSAGE]
        if "content" in step:
            if not isinstance(content, str):
                problems["content"] = ["Expected a string."]
            elif len(content) > MAX_STEP_CHARS:
                problems["content"] = [
                    f"Ensure this field has no more than {MAX_STEP_CHARS} characters."
                ]
            elif has_bad_chars(content):
                problems["content"] = [BAD_CHARS_MESSAGE]
        return problems

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"type": "object", "additionalProperties": True})
class MetaField(serializers.Field):  # type: ignore[type-arg]
    """Free-form JSON object, e.g. `{"source": "gsm8k", "difficulty": 3}`."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected a JSON object.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


def _filter_key_problem(key: str) -> str | None:
    if not 1 <= len(key) <= MAX_FILTER_KEY_CHARS:
        return f"A meta key has 1 to {MAX_FILTER_KEY_CHARS} characters."
    if has_bad_chars(key):
        return BAD_CHARS_MESSAGE
    return None


def _is_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_FILTER_VALUE_CHARS and not has_bad_chars(value)
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    return isinstance(value, int)


# maxLength and the pattern (no NUL) bind only the strings.
_FILTER_SCALAR = {
    "type": ["string", "number", "boolean"],
    "maxLength": MAX_FILTER_VALUE_CHARS,
    "pattern": "^[^\\x00]*$",
}


@extend_schema_field(
    {
        "type": "object",
        "description": (
            "Meta key -> value, or -> list of values any of which matches; every key must match."
        ),
        "maxProperties": MAX_FILTER_KEYS,
        "propertyNames": {
            "minLength": 1,
            "maxLength": MAX_FILTER_KEY_CHARS,
            "pattern": "^[^\\x00]*$",
        },
        "additionalProperties": {
            "oneOf": [
                _FILTER_SCALAR,
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_FILTER_VALUES,
                    "items": _FILTER_SCALAR,
                },
            ]
        },
    }
)
class MetaFiltersField(serializers.Field):  # type: ignore[type-arg]
    """`{"source": "gsm8k", "difficulty": [1, 2]}` -> `{"source": ["gsm8k"], ...}`."""

    checks_bad_chars = True

    def to_internal_value(self, data: Any) -> MetaFilters:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected a JSON object of meta key -> value.")
        if len(data) > MAX_FILTER_KEYS:
            raise serializers.ValidationError(f"At most {MAX_FILTER_KEYS} keys.")
        errors: dict[str, list[str]] = {}
        filters: MetaFilters = {}
        for key, value in data.items():
            values = value if isinstance(value, list) else [value]
            problem = _filter_key_problem(key)
            if problem is None and not 1 <= len(values) <= MAX_FILTER_VALUES:
                problem = f"Expected 1 to {MAX_FILTER_VALUES} values."
            if problem is None and not all(_is_scalar(v) for v in values):
                problem = (
                    "Values are strings (at most 1,000 characters), numbers or booleans, "
                    "or a list of them."
                )
            if problem is not None:
                errors[key] = [problem]
            else:
                filters[key] = values
        if errors:
            raise serializers.ValidationError(errors)
        return filters

    def to_representation(self, value: Any) -> Any:
        return value


class TraceInput(StrictSerializer):
    trace_version = serializers.IntegerField(min_value=1, max_value=32767, default=1)
    prompt = _text(MAX_TEXT_CHARS)
    steps = StepsField()
    final_answer = _text(MAX_TEXT_CHARS)
    meta = MetaField(required=False, default=dict)


class TraceBatchInput(StrictSerializer):
    traces: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=TraceInput(), min_length=1, max_length=MAX_BATCH
    )

    def to_internal_value(self, data: Any) -> Any:
        # A batch is up to 1,000 traces; through the fields above, most of a valid batch's time
        # went to DRF's per-field machinery. A batch that plain_batch() vouches for is taken as
        # it stands; any other goes through the fields, so every error (its message and its
        # field path) is still theirs.
        traces = plain_batch(data)
        if traces is not None:
            return {"traces": traces}
        return super().to_internal_value(data)


# What TraceInput and StepsField accept, checked without DRF. Each check may refuse more than
# the fields do (a "2" or 2.0 as trace_version, a key of meta with a NUL), never less: a refusal
# only sends the batch through the fields, which then accept it or say why not.
_TRACE_KEYS = frozenset(TraceInput().fields)
_STEP_KEYS = frozenset(("i", "type", "content"))


def _plain_text(value: Any, max_length: int) -> bool:
    return type(value) is str and 0 < len(value) <= max_length and not has_bad_chars(value)


def _plain_json(value: Any) -> bool:
    """No NUL nor unpaired surrogate in any string of a JSON value, keys included."""
    kind = type(value)
    if kind is str:
        return not has_bad_chars(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or has_bad_chars(key) or not _plain_json(item):
                return False
        return True
    if kind is list:
        return all(_plain_json(item) for item in value)
    return value is None or kind in (int, float, bool)


def _plain_steps(steps: Any) -> list[dict[str, Any]] | None:
    """StepsField's value for `steps` (the same steps, in order of `i`), or None."""
    if type(steps) is not list or not 1 <= len(steps) <= MAX_STEPS:
        return None
    previous, in_order = -1, True
    for step in steps:
        if type(step) is not dict or step.keys() != _STEP_KEYS:
            return None
        i, kind, content = step["i"], step["type"], step["content"]
        if type(i) is not int or i < 0:
            return None
        if not _plain_text(kind, MAX_STEP_TYPE_CHARS):
            return None
        # Content may be empty, unlike the other texts.
        if type(content) is not str or len(content) > MAX_STEP_CHARS or has_bad_chars(content):
            return None
        in_order = in_order and i > previous
        previous = i
    if in_order:  # the usual case: nothing to copy
        return steps
    if len({step["i"] for step in steps}) != len(steps):
        return None
    return sorted(steps, key=lambda step: step["i"])


def _plain_trace(data: Any) -> dict[str, Any] | None:
    """TraceInput's validated data for `data`, or None."""
    if type(data) is not dict or not data.keys() <= _TRACE_KEYS:
        return None
    version = data.get("trace_version", 1)
    if type(version) is not int or not 1 <= version <= 32767:
        return None
    prompt, final_answer = data.get("prompt"), data.get("final_answer")
    if not _plain_text(prompt, MAX_TEXT_CHARS) or not _plain_text(final_answer, MAX_TEXT_CHARS):
        return None
    steps = _plain_steps(data.get("steps"))
    if steps is None:
        return None
    meta = data.get("meta", {})
    if type(meta) is not dict or not _plain_json(meta):
        return None
    return {
        "trace_version": version,
        "prompt": prompt,
        "steps": steps,
        "final_answer": final_answer,
        "meta": meta,
    }


def plain_batch(data: Any) -> list[dict[str, Any]] | None:
    """TraceBatchInput's validated `traces` for a batch every part of which is plainly valid;
    None if any part is not, or might not be."""
    if type(data) is not dict or data.keys() != {"traces"}:
        return None
    traces = data["traces"]
    if type(traces) is not list or not 1 <= len(traces) <= MAX_BATCH:
        return None
    valid = []
    for item in traces:
        trace = _plain_trace(item)
        if trace is None:
            return None
        valid.append(trace)
    return valid


class TraceBatchOutput(serializers.Serializer[Any]):
    count = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.IntegerField(), help_text="In input order.")


# What TraceListQuery accepts: a key of 1 to 100 characters without `=` that does not start
# with whitespace (trimmed, as Python's str.strip() sees it), then `=` and the value; no NUL.
META_QUERY_SCHEMA = {
    "type": "array",
    "maxItems": MAX_FILTER_KEYS,
    "items": {
        "type": "string",
        "maxLength": MAX_FILTER_KEY_CHARS + 1 + MAX_FILTER_VALUE_CHARS,
        "pattern": (
            f"^[^=\\s\\x00-\\x1f\\x85][^=\\x00]{{0,{MAX_FILTER_KEY_CHARS - 1}}}=[^\\x00]*$"
        ),
    },
}


class TraceListQuery(InputSerializer):
    meta = serializers.ListField(
        child=serializers.CharField(max_length=MAX_FILTER_KEY_CHARS + 1 + MAX_FILTER_VALUE_CHARS),
        required=False,
        default=list,
        max_length=MAX_FILTER_KEYS,
    )

    def validate_meta(self, pairs: list[str]) -> MetaFilters:
        filters: MetaFilters = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            problem = "Expected key=value." if not sep else _filter_key_problem(key)
            if problem is not None:
                raise serializers.ValidationError(f"{pair!r}: {problem}")
            filters.setdefault(key, []).extend(self._candidates(value))
        return filters

    @staticmethod
    def _candidates(value: str) -> list[MetaScalar]:
        if value in ("true", "false"):
            return [value, value == "true"]
        if JSON_NUMBER.fullmatch(value):
            number = json.loads(value)
            if isinstance(number, int) or abs(number) != float("inf"):
                return [value, number]
        return [value]


class TraceSummaryOutput(serializers.ModelSerializer[Trace]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = Trace
        fields = [
            "id",
            "trace_version",
            "meta",
            "step_count",
            "size_bytes",
            "created_by",
            "created_at",
        ]


class TraceOutput(serializers.ModelSerializer[Trace]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    steps = StepsField(read_only=True)
    meta = MetaField(read_only=True)

    class Meta:
        model = Trace
        fields = [
            "id",
            "trace_version",
            "prompt",
            "steps",
            "final_answer",
            "meta",
            "step_count",
            "size_bytes",
            "created_by",
            "created_at",
        ]


class DatasetBuildInput(StrictSerializer):
    name = serializers.RegexField(KEY_PART, max_length=100)
    version = serializers.RegexField(KEY_PART, max_length=50)
    filters = MetaFiltersField(required=False, default=dict)
    limit = serializers.IntegerField(
        min_value=1, max_value=MAX_DATASET_TRACES, default=MAX_DATASET_TRACES
    )
    selection = serializers.ChoiceField(
        choices=DatasetSelection.choices, default=DatasetSelection.LATEST
    )
    seed = serializers.IntegerField(
        min_value=0,
        max_value=2**63 - 1,
        required=False,
        allow_null=True,
        default=None,
        help_text="Random selection only; one is chosen and recorded when left out.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["seed"] is not None and attrs["selection"] != DatasetSelection.RANDOM:
            raise serializers.ValidationError({"seed": ["Only random selection takes a seed."]})
        return attrs


class DatasetStatsOutput(serializers.Serializer[Any]):
    steps_total = serializers.IntegerField()
    steps_min = serializers.IntegerField()
    steps_max = serializers.IntegerField()
    steps_mean = serializers.FloatField()
    bytes_total = serializers.IntegerField()
    bytes_mean = serializers.FloatField()
    bytes_max = serializers.IntegerField()


class DatasetLinksOutput(serializers.Serializer[Any]):
    self = serializers.CharField()
    export = serializers.CharField()


class DatasetOutput(serializers.ModelSerializer[Dataset]):
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    filters = MetaFiltersField(read_only=True)
    stats = DatasetStatsOutput(read_only=True)
    trace_ids = serializers.ListField(
        child=serializers.IntegerField(), read_only=True, help_text="In dataset order."
    )
    links = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "key",
            "name",
            "version",
            "filters",
            "selection",
            "seed",
            "limit",
            "trace_count",
            "stats",
            "trace_ids",
            "created_by",
            "created_at",
            "links",
        ]

    @extend_schema_field(DatasetLinksOutput)
    def get_links(self, dataset: Dataset) -> dict[str, str]:
        base = reverse("api-dataset-detail", kwargs={"key": dataset.key})
        return {"self": base, "export": f"{base}/export.jsonl?format=tunix_sft"}


class DatasetExportQuery(InputSerializer):
    format = serializers.ChoiceField(choices=sorted(FORMATS), default="tunix_sft")
