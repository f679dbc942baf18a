"""The batch ingest path: a plain-Python check that defers to the serializers for every error,
and storage in one transaction (one COPY on PostgreSQL)."""

import json
from typing import Any

import pytest
from django.db import IntegrityError, connection
from rest_framework.test import APIClient

from tests.traces.helpers import trace_doc
from traces.api.serializers import TraceBatchInput, plain_batch
from traces.models import Trace
from traces.services import trace_create_batch, trace_import_batch, trace_size_bytes
from tunixops.api.serializers import StrictSerializer

pytestmark = pytest.mark.django_db

MISSING = object()


class FieldsOnly(TraceBatchInput):
    """The batch serializer without its plain path: what the fields alone make of a batch."""

    def to_internal_value(self, data: Any) -> Any:
        return StrictSerializer.to_internal_value(self, data)


def as_received(body: Any) -> Any:
    """`body` as the API's parser hands it over (escaped non-ASCII, as clients send it)."""
    return json.loads(json.dumps(body))


def through_fields(body: Any) -> Any:
    serializer = FieldsOnly(data=as_received(body))
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data["traces"]


def doc_with(n: int, **overrides: Any) -> dict[str, Any]:
    doc = trace_doc(n, **overrides)
    return {key: value for key, value in doc.items() if value is not MISSING}


def post_batch(api: APIClient, traces: list[dict[str, Any]]) -> Any:
    return api.post(
        "/api/traces/batch", json.dumps({"traces": traces}), content_type="application/json"
    )


VALID = {
    "plain": doc_with(0),
    "defaults": doc_with(1, trace_version=MISSING, meta=MISSING),
    "steps out of order": doc_with(
        2,
        steps=[
            {"i": 7, "content": "", "type": "answer"},
            {"i": 2, "type": "thought", "content": "  so\n"},
            {"type": "check", "content": "x", "i": 10**12},
        ],
    ),
    "whitespace only": doc_with(3, prompt="   ", final_answer="\n"),
    "every limit": doc_with(
        4,
        trace_version=32767,
        prompt="p" * 50_000,
        final_answer="a" * 50_000,
        steps=[{"i": 0, "type": "t" * 64, "content": "c" * 20_000}],
    ),
    "1000 steps": doc_with(5, steps=[{"i": n, "type": "t", "content": "c"} for n in range(1000)]),
    "non-ASCII": doc_with(
        6,
        prompt="Wie viel kostet 1 € \U0001f600?",
        steps=[{"i": 0, "type": "gedanke", "content": '\u2028\t\\"\x01 \U0001f914'}],
        meta={"tags": ["a", {"b": None, "c": 1.5, "d": True, "ünï": [[], {}]}], "n": -3},
    ),
}


def test_the_plain_path_gives_what_the_fields_give_for_valid_batches() -> None:
    for name, doc in VALID.items():
        body = {"traces": [doc, doc_with(9)]}
        assert plain_batch(as_received(body)) == through_fields(body), name


# Valid, though not plainly: the fields convert them (to 2, "5", "1.5").
@pytest.mark.parametrize(
    "overrides",
    [{"trace_version": "2"}, {"trace_version": 2.0}, {"prompt": 5}, {"final_answer": 1.5}],
)
def test_values_the_plain_path_declines_still_pass_the_fields(
    api: APIClient, overrides: dict[str, Any]
) -> None:
    docs = [doc_with(0), doc_with(1, **overrides)]
    assert plain_batch(as_received({"traces": docs})) is None
    response = post_batch(api, docs)
    assert response.status_code == 201, response.content
    stored = Trace.objects.get(pk=response.json()["ids"][1])
    assert stored.document() == through_fields({"traces": docs})[1]


def step(**fields: Any) -> list[dict[str, Any]]:
    return [{"i": 0, "type": "t", "content": "c", **fields}]


# A bad trace, and the field the 400 names (under `traces.<n>.`).
BAD = [
    ({"trace_version": True}, "trace_version"),
    ({"trace_version": 0}, "trace_version"),
    ({"trace_version": 32768}, "trace_version"),
    ({"trace_version": None}, "trace_version"),
    ({"prompt": MISSING}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [5]}, "prompt"),
    ({"prompt": "x" * 50_001}, "prompt"),
    ({"prompt": "nul \x00"}, "prompt"),
    ({"final_answer": "half \ud800 pair"}, "final_answer"),
    ({"meta": None}, "meta"),
    ({"meta": ["source"]}, "meta"),
    ({"meta": {"k": "nul \x00"}}, "meta.k"),
    ({"meta": {"a": [{"b": "\udfff"}]}}, "meta.a.0.b"),
    ({"meta": {"k\x00": 1}}, "meta"),
    ({"steps": MISSING}, "steps"),
    ({"steps": []}, "steps"),
    ({"steps": "think"}, "steps"),
    ({"steps": ["think"]}, "steps.0"),
    ({"steps": [{"i": 0, "type": "t"}]}, "steps.0.content"),
    ({"steps": step(i=True)}, "steps.0.i"),
    ({"steps": step(i=-1)}, "steps.0.i"),
    ({"steps": step(i=1.0)}, "steps.0.i"),
    ({"steps": step(type="")}, "steps.0.type"),
    ({"steps": step(type="t" * 65)}, "steps.0.type"),
    ({"steps": step(type="t\ud83d")}, "steps.0.type"),
    ({"steps": step(content=None)}, "steps.0.content"),
    ({"steps": step(content="c" * 20_001)}, "steps.0.content"),
    ({"steps": step(content="nul \x00")}, "steps.0.content"),
    ({"steps": step(why=1)}, "steps.0.why"),
    ({"steps": [*step(), *step()]}, "steps.1.i"),
    ({"verdict": "good"}, "verdict"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD)
def test_a_bad_trace_deep_in_a_batch_is_named_by_the_fields(
    api: APIClient, overrides: dict[str, Any], field: str
) -> None:
    docs = [doc_with(n) for n in range(50)]
    docs[48] = doc_with(48, **overrides)
    assert plain_batch(as_received({"traces": docs})) is None
    response = post_batch(api, docs)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert list(error["fields"]) == [f"traces.48.{field}"], error["fields"]
    assert not Trace.objects.exists()


def test_every_bad_trace_of_a_full_batch_is_named(api: APIClient) -> None:
    docs = [doc_with(n) for n in range(1000)]
    docs[3]["steps"][1]["content"] = "nul \x00"
    docs[998]["steps"][1]["content"] = "c" * 20_001
    response = post_batch(api, docs)
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [
        "traces.3.steps.1.content",
        "traces.998.steps.1.content",
    ]
    assert not Trace.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"traces": [trace_doc()], "more": 1}, "more"),
        ({"traces": "all"}, "traces"),
        ({"traces": None}, "traces"),
        ({}, "traces"),
        ([trace_doc()], "non_field_errors"),
    ],
)
def test_a_malformed_batch_is_named_by_the_fields(api: APIClient, body: Any, field: str) -> None:
    assert plain_batch(as_received(body)) is None
    response = api.post("/api/traces/batch", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


TEXTS = {
    "prompt": 'tab\there, a newline\r\n, a backslash \\ and \\N, a quote " and \U0001f600 \u2028',
    "steps": [
        {"i": 0, "type": "tab\tin type", "content": "\\.\n\x01\x7f end"},
        {"i": 1, "type": "t", "content": ""},
    ],
    "final_answer": "\\",
    "meta": {"\\N": "x\ty", "nested": {"list": [1, 2.5, -3, None, True, "\\N"]}},
}


def test_stored_traces_read_back_exactly_as_sent_with_their_compact_json_size() -> None:
    docs = [trace_doc(0, **TEXTS), trace_doc(1), trace_doc(2, prompt="€" * 10_000)]
    ids = trace_import_batch(traces=docs, created_by=None)
    assert ids == sorted(ids)
    for trace_id, doc in zip(ids, docs, strict=True):
        stored = Trace.objects.get(pk=trace_id)
        assert stored.document() == doc
        assert stored.size_bytes == trace_size_bytes(doc)
        assert stored.step_count == len(doc["steps"])


def test_the_models_a_batch_returns_match_the_stored_rows(alice: Any) -> None:
    traces = trace_create_batch(traces=[trace_doc(0, **TEXTS), trace_doc(1)], created_by=alice)
    for trace in traces:
        stored = Trace.objects.get(pk=trace.pk)
        assert trace.document() == stored.document()
        assert (trace.size_bytes, trace.step_count) == (stored.size_bytes, stored.step_count)
        assert trace.created_at == stored.created_at
        assert stored.created_by == trace.created_by == alice
    traces[0].meta = {"edited": True}
    traces[0].save()
    assert Trace.objects.count() == 2
    assert Trace.objects.get(pk=traces[0].pk).meta == {"edited": True}


def test_a_trace_the_database_refuses_fails_the_whole_batch_and_the_next_batch_works() -> None:
    # Past the serializers (the service called directly), the table's own checks still hold.
    docs = [trace_doc(n) for n in range(5)]
    docs[3]["prompt"] = ""
    with pytest.raises(IntegrityError):
        trace_import_batch(traces=docs, created_by=None)
    assert not Trace.objects.exists()
    assert len(trace_import_batch(traces=[trace_doc(9)], created_by=None)) == 1


def test_every_trace_over_1_mb_is_named_and_none_is_stored(api: APIClient) -> None:
    big = trace_doc(steps=[{"i": n, "type": "t", "content": "c" * 20_000} for n in range(60)])
    response = post_batch(api, [big, trace_doc(1), big, trace_doc(3)])
    assert response.status_code == 413
    assert list(response.json()["error"]["fields"]) == ["traces.0", "traces.2"]
    assert not Trace.objects.exists()


@pytest.mark.postgres
def test_new_trace_texts_are_compressed_with_lz4_where_postgresql_has_it() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        if not cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL has no lz4")
        (trace_id,) = trace_import_batch(traces=[trace_doc(0, prompt="p" * 5_000)], created_by=None)
        cursor.execute(
            "SELECT pg_column_compression(prompt) FROM tunix_traces WHERE id = %s", [trace_id]
        )
        assert cursor.fetchone()[0] == "lz4"
