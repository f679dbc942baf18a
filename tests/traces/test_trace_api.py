import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from tests.traces.helpers import make_traces, trace_doc
from traces.models import Trace

pytestmark = pytest.mark.django_db


def post_json(api: APIClient, url: str, body: Any) -> Any:
    # json.dumps escapes non-ASCII, so bodies with unpaired surrogates can be sent as clients do.
    return api.post(url, json.dumps(body), content_type="application/json")


def post_trace(api: APIClient, body: Any) -> Any:
    return post_json(api, "/api/traces", body)


def post_batch(api: APIClient, traces: list[dict[str, Any]]) -> Any:
    return post_json(api, "/api/traces/batch", {"traces": traces})


def test_it_stores_a_trace_and_answers_201_with_it(api: APIClient, alice: Any) -> None:
    doc = trace_doc(3)
    response = post_trace(api, doc)
    assert response.status_code == 201, response.content
    body = response.json()
    trace = Trace.objects.get(pk=body["id"])
    assert trace.document() == doc
    assert trace.created_by == alice
    assert trace.step_count == 2
    assert body["size_bytes"] == len(
        json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    )
    assert body["prompt"] == "What is 3 + 3?" and body["created_by"] == "alice"


def test_it_fills_in_the_trace_version_and_meta_when_left_out(api: APIClient) -> None:
    doc = trace_doc()
    del doc["trace_version"], doc["meta"]
    body = post_trace(api, doc).json()
    assert body["trace_version"] == 1 and body["meta"] == {}


def test_it_keeps_text_exactly_as_sent_and_stores_steps_in_order_of_i(api: APIClient) -> None:
    steps = [
        {"i": 7, "type": "answer", "content": "  so 4\n"},
        {"i": 2, "type": "thought", "content": ""},
    ]
    body = post_trace(api, trace_doc(prompt="  2 + 2?\n", steps=steps)).json()
    assert body["prompt"] == "  2 + 2?\n"
    assert [step["i"] for step in body["steps"]] == [2, 7]
    assert body["steps"][1]["content"] == "  so 4\n"


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"prompt": ""}, "prompt", "blank"),
        ({"prompt": "x" * 50_001}, "prompt", "no more than 50000"),
        ({"prompt": None}, "prompt", "null"),
        ({"final_answer": ""}, "final_answer", "blank"),
        ({"final_answer": "y" * 50_001}, "final_answer", "no more than 50000"),
        ({"steps": []}, "steps", "1 to 1000 steps"),
        ({"steps": [{"i": n, "type": "t", "content": "c"} for n in range(1001)]}, "steps", "1001"),
        ({"steps": "think"}, "steps", "list"),
        ({"steps": ["think"]}, "steps.0", "object"),
        (
            {
                "steps": [
                    {"i": 1, "type": "t", "content": "a"},
                    {"i": 1, "type": "t", "content": "b"},
                ]
            },
            "steps.1.i",
            "Duplicate step index 1",
        ),
        ({"steps": [{"i": 0, "type": "t", "content": "c" * 20_001}]}, "steps.0.content", "20000"),
        ({"steps": [{"i": 0, "type": "t"}]}, "steps.0.content", "required"),
        ({"steps": [{"i": 0, "type": "t", "content": 5}]}, "steps.0.content", "string"),
        ({"steps": [{"i": -1, "type": "t", "content": "c"}]}, "steps.0.i", "integer >= 0"),
        ({"steps": [{"i": True, "type": "t", "content": "c"}]}, "steps.0.i", "integer"),
        ({"steps": [{"i": "0", "type": "t", "content": "c"}]}, "steps.0.i", "integer"),
        ({"steps": [{"i": 0, "type": "", "content": "c"}]}, "steps.0.type", "1 to 64"),
        ({"steps": [{"i": 0, "type": "t", "content": "c", "why": 1}]}, "steps.0.why", "Unknown"),
        ({"steps": [{"i": 0, "type": "t", "content": "nul\x00"}]}, "steps.0.content", "NUL"),
        ({"prompt": "nul\x00"}, "prompt", "NUL"),
        ({"final_answer": "half \ud800 pair"}, "final_answer", "surrogates"),
        ({"meta": {"source": "\ud83d"}}, "meta.source", "surrogates"),
        ({"meta": {"tags": ["ok", {"deep": "nul\x00"}]}}, "meta.tags.1.deep", "NUL"),
        ({"meta": {"k\x00ey": 1}}, "meta", "NUL"),
        ({"steps": [{"i": 0, "type": "th\x00ought", "content": "c"}]}, "steps.0.type", "NUL"),
        ({"meta": ["source"]}, "meta", "JSON object"),
        ({"trace_version": 0}, "trace_version", "greater than or equal to 1"),
        ({"verdict": "good"}, "verdict", "Unknown field"),
    ],
)
def test_it_rejects_a_bad_trace_with_a_field_error(
    api: APIClient, overrides: dict[str, Any], field: str, fragment: str
) -> None:
    response = post_trace(api, trace_doc(**overrides))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert fragment in " ".join(error["fields"][field]), error["fields"]
    assert not Trace.objects.exists()


def test_it_accepts_every_limit_exactly(api: APIClient) -> None:
    longest = trace_doc(
        prompt="p" * 50_000,
        final_answer="a" * 50_000,
        steps=[{"i": 0, "type": "t" * 64, "content": "c" * 20_000}],
    )
    most_steps = trace_doc(steps=[{"i": n, "type": "t", "content": "c"} for n in range(1000)])
    assert post_trace(api, longest).status_code == 201
    assert post_trace(api, most_steps).status_code == 201


def test_it_refuses_a_trace_over_1_mb_with_413_naming_the_trace(api: APIClient) -> None:
    # 60 steps at the 20,000-character limit each: every field is valid, the whole is 1.2 MB.
    big = trace_doc(steps=[{"i": n, "type": "t", "content": "c" * 20_000} for n in range(60)])
    response = post_trace(api, big)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "trace_too_large"
    assert "limit is 1,048,576" in error["fields"]["non_field_errors"][0]
    assert not Trace.objects.exists()


def test_it_measures_the_1_mb_limit_in_utf8_bytes(api: APIClient) -> None:
    # 55 x 20,000 characters is about 1.1 million characters, yet under a million would pass;
    # with a 3-byte character each, 18 such steps are 1.08 MB.
    steps = [{"i": n, "type": "t", "content": "€" * 20_000} for n in range(18)]
    assert post_trace(api, trace_doc(steps=steps)).status_code == 413
    assert post_trace(api, trace_doc(steps=steps[:17])).status_code == 201


def test_it_refuses_a_body_over_the_trace_request_limit_with_413(
    api: APIClient, settings: Any
) -> None:
    settings.TUNIX_TRACE_MAX_REQUEST_BYTES = 50_000
    response = post_trace(api, trace_doc(prompt="p" * 49_000, final_answer="a" * 2_000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert not Trace.objects.exists()


def test_it_takes_a_single_trace_larger_than_the_site_wide_request_limit(
    api: APIClient, settings: Any
) -> None:
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 256 * 1024
    steps = [{"i": n, "type": "t", "content": "c" * 20_000} for n in range(25)]
    assert post_trace(api, trace_doc(steps=steps)).status_code == 201


def test_it_rejects_a_body_that_is_not_json(api: APIClient) -> None:
    response = api.post("/api/traces", "{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_it_refuses_anonymous_writes_and_reads(anon: APIClient) -> None:
    assert post_trace(anon, trace_doc()).status_code in (401, 403)
    assert anon.get("/api/traces").status_code in (401, 403)
    assert post_batch(anon, [trace_doc()]).status_code in (401, 403)


def test_a_batch_stores_every_trace_and_answers_their_ids_in_input_order(
    api: APIClient, alice: Any
) -> None:
    docs = [trace_doc(n) for n in range(5)]
    response = post_batch(api, docs)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["count"] == 5
    stored = {trace.pk: trace for trace in Trace.objects.all()}
    assert [stored[pk].document() for pk in body["ids"]] == docs
    assert all(trace.created_by == alice for trace in stored.values())


def test_a_batch_with_one_bad_trace_stores_none_and_names_the_trace(api: APIClient) -> None:
    docs = [trace_doc(n) for n in range(5)]
    docs[3]["steps"][0]["content"] = "c" * 20_001
    response = post_batch(api, docs)
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert list(fields) == ["traces.3.steps.0.content"]
    assert not Trace.objects.exists()


def test_a_batch_with_one_trace_over_1_mb_answers_413_and_stores_none(api: APIClient) -> None:
    big = trace_doc(steps=[{"i": n, "type": "t", "content": "c" * 20_000} for n in range(60)])
    response = post_batch(api, [trace_doc(0), trace_doc(1), big])
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "trace_too_large"
    assert list(error["fields"]) == ["traces.2"]
    assert not Trace.objects.exists()


@pytest.mark.parametrize(("count", "fragment"), [(0, "at least 1"), (1001, "no more than 1000")])
def test_a_batch_holds_1_to_1000_traces(api: APIClient, count: int, fragment: str) -> None:
    response = post_batch(api, [trace_doc(n) for n in range(count)])
    assert response.status_code == 400
    assert fragment in " ".join(response.json()["error"]["fields"]["traces"])
    assert not Trace.objects.exists()


def test_a_batch_must_be_an_object_with_traces(api: APIClient) -> None:
    response = post_json(api, "/api/traces/batch", [trace_doc()])
    assert response.status_code == 400
    assert "non_field_errors" in response.json()["error"]["fields"]


def test_a_batch_may_be_larger_than_the_site_wide_request_limit(api: APIClient) -> None:
    # 100 traces of ~4 KB: well past 256 KB, well within the batch limit.
    docs = [trace_doc(n, prompt="p" * 4_000) for n in range(100)]
    assert len(json.dumps({"traces": docs})) > 256 * 1024
    response = post_batch(api, docs)
    assert response.status_code == 201
    assert response.json()["count"] == 100


def test_a_batch_body_over_the_batch_limit_answers_413_and_stores_none(
    api: APIClient, settings: Any
) -> None:
    settings.TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES = 100_000
    response = post_batch(api, [trace_doc(n, prompt="p" * 1_000) for n in range(200)])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert not Trace.objects.exists()


# PostgreSQL only: on SQLite Django splits a bulk insert into statements of at most 999
# parameters (max_query_params), 111 traces each here.
@pytest.mark.postgres
def test_a_batch_takes_the_same_number_of_queries_for_1_100_and_1000_traces(
    api: APIClient, django_assert_num_queries: Any
) -> None:
    # The traces go in with one COPY, whatever the batch size.
    with CaptureQueriesContext(connection) as one:
        assert post_batch(api, [trace_doc(0)]).status_code == 201
    copies = [q["sql"] for q in one.captured_queries if q["sql"].startswith("COPY")]
    assert len(copies) == 1
    for size in (100, 1000):
        docs = [trace_doc(n) for n in range(size)]
        with django_assert_num_queries(len(one.captured_queries)) as captured:
            response = post_batch(api, docs)
        assert response.status_code == 201
        assert len(response.json()["ids"]) == size
        assert sum(q["sql"].startswith("COPY") for q in captured.captured_queries) == 1
    assert Trace.objects.count() == 1101


def test_it_lists_trace_metadata_newest_first_without_the_text(api: APIClient) -> None:
    traces = make_traces(3)
    response = api.get("/api/traces")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [item["id"] for item in body["results"]] == [t.pk for t in reversed(traces)]
    assert set(body["results"][0]) == {
        "id",
        "trace_version",
        "meta",
        "step_count",
        "size_bytes",
        "created_by",
        "created_at",
    }


def test_it_pages_the_list(api: APIClient) -> None:
    make_traces(5)
    body = api.get("/api/traces?page_size=2&page=3").json()
    assert body["count"] == 5 and len(body["results"]) == 1 and body["next"] is None


def test_it_filters_the_list_on_meta_key_value(api: APIClient) -> None:
    gsm = make_traces(2, source="gsm8k", split="train")
    make_traces(2, start=2, source="math", split="train")
    gsm_test = make_traces(1, start=4, source="gsm8k", split="test")

    def ids(query: str) -> set[int]:
        response = api.get(f"/api/traces?{query}")
        assert response.status_code == 200, response.content
        return {item["id"] for item in response.json()["results"]}

    assert ids("meta=source=gsm8k") == {t.pk for t in gsm + gsm_test}
    assert ids("meta=source=gsm8k&meta=split=train") == {t.pk for t in gsm}
    assert len(ids("meta=source=gsm8k&meta=source=math")) == 5
    assert ids("meta=source=nothing") == set()


def test_a_meta_filter_value_matches_the_json_number_or_boolean_it_reads_as(
    api: APIClient,
) -> None:
    as_int = make_traces(1, difficulty=3, checked=True)
    as_str = make_traces(1, start=1, difficulty="3", checked="true")
    make_traces(1, start=2, difficulty=4, checked=False)
    both = {t.pk for t in as_int + as_str}
    for query in ("meta=difficulty=3", "meta=checked=true"):
        assert {item["id"] for item in api.get(f"/api/traces?{query}").json()["results"]} == both


def test_a_meta_filter_key_is_data_not_a_lookup(api: APIClient) -> None:
    meta: dict[str, Any] = {"a__contains": "x", "a key.with 'quotes'": "y=z"}
    odd = make_traces(1, **meta)
    make_traces(1, start=1)
    for query in ("meta=a__contains=x", "meta=a+key.with+%27quotes%27%3Dy%3Dz"):
        results = api.get(f"/api/traces?{query}").json()["results"]
        assert [item["id"] for item in results] == [odd[0].pk], query


def test_a_meta_filter_value_too_large_for_a_float_is_matched_as_text(api: APIClient) -> None:
    text = make_traces(1, big="1e999")
    make_traces(1, start=1, big=1)
    response = api.get("/api/traces?meta=big=1e999")
    assert [item["id"] for item in response.json()["results"]] == [text[0].pk]


@pytest.mark.parametrize("query", ["meta=novalue", "meta==x", "meta=k=%00"])
def test_it_rejects_a_malformed_meta_filter(api: APIClient, query: str) -> None:
    response = api.get(f"/api/traces?{query}")
    assert response.status_code == 400
    assert any(field.startswith("meta") for field in response.json()["error"]["fields"])


def test_it_shows_one_trace_whole(api: APIClient) -> None:
    trace = make_traces(1)[0]
    response = api.get(f"/api/traces/{trace.pk}")
    assert response.status_code == 200
    body = response.json()
    assert {key: body[key] for key in Trace.DOCUMENT_FIELDS} == trace.document()


@pytest.mark.parametrize("trace_id", ["12345", "abc", "9" * 30, "-1"])
def test_an_unknown_or_malformed_trace_id_is_404(api: APIClient, trace_id: str) -> None:
    response = api.get(f"/api/traces/{trace_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
