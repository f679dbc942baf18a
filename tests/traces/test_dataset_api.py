import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db.models import ProtectedError
from django.test import AsyncClient
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.traces.helpers import make_traces, trace_doc
from traces.models import Dataset, DatasetItem, Trace
from traces.selectors import EXPORT_CHUNK_MAX, export_chunk_size
from traces.services import trace_create_batch

pytestmark = pytest.mark.django_db


def build(api: APIClient, **body: Any) -> Any:
    body.setdefault("name", "arith")
    body.setdefault("version", "v1")
    return api.post("/api/datasets/build", body, format="json")


def export_lines(api: APIClient, key: str, query: str = "?format=tunix_sft") -> list[Any]:
    response: Any = api.get(f"/api/datasets/{key}/export.jsonl{query}")
    assert response.status_code == 200, response.content
    assert response.streaming
    body = b"".join(response.streaming_content)
    return [json.loads(line) for line in body.decode().splitlines()]


def test_latest_takes_the_newest_traces_newest_first(api: APIClient, alice: Any) -> None:
    traces = make_traces(5)
    response = build(api, limit=3, selection="latest")
    assert response.status_code == 201, response.content
    body = response.json()
    newest = [t.pk for t in reversed(traces)][:3]
    assert body["key"] == "arith-v1"
    assert body["trace_ids"] == newest
    assert body["trace_count"] == 3
    assert body["selection"] == "latest" and body["seed"] is None
    assert body["created_by"] == "alice"
    assert body["links"] == {
        "self": "/api/datasets/arith-v1",
        "export": "/api/datasets/arith-v1/export.jsonl?format=tunix_sft",
    }
    assert Dataset.objects.get(key="arith-v1").trace_ids() == newest


def test_the_build_records_simple_stats(api: APIClient) -> None:
    make_traces(2)
    three_steps = trace_doc(9, steps=[{"i": n, "type": "t", "content": "x"} for n in range(3)])
    api.post("/api/traces", three_steps, format="json")
    stats = build(api).json()["stats"]
    sizes = [t.size_bytes for t in Trace.objects.all()]
    assert stats == {
        "steps_total": 7,
        "steps_min": 2,
        "steps_max": 3,
        "steps_mean": round(7 / 3, 3),
        "bytes_total": sum(sizes),
        "bytes_mean": round(sum(sizes) / 3, 3),
        "bytes_max": max(sizes),
    }


def test_random_with_a_seed_picks_the_same_traces_every_time(api: APIClient) -> None:
    make_traces(50)
    first = build(api, version="a", selection="random", seed=7, limit=10).json()
    again = build(api, version="b", selection="random", seed=7, limit=10).json()
    other = build(api, version="c", selection="random", seed=8, limit=10).json()
    assert first["trace_ids"] == again["trace_ids"]
    assert len(set(first["trace_ids"])) == 10
    assert first["trace_ids"] != other["trace_ids"]
    assert first["seed"] == 7


def test_random_without_a_seed_records_the_one_it_used(api: APIClient) -> None:
    make_traces(30)
    first = build(api, version="a", selection="random", limit=5).json()
    assert isinstance(first["seed"], int)
    again = build(api, version="b", selection="random", limit=5, seed=first["seed"]).json()
    assert again["trace_ids"] == first["trace_ids"]


def test_a_built_dataset_keeps_its_traces_when_more_arrive(api: APIClient) -> None:
    make_traces(3)
    ids = build(api, limit=2).json()["trace_ids"]
    make_traces(3, start=3)
    assert api.get("/api/datasets/arith-v1").json()["trace_ids"] == ids


def test_filters_select_on_meta_and_a_list_means_any_of(api: APIClient) -> None:
    gsm = make_traces(3, source="gsm8k", difficulty=1)
    hard = make_traces(2, start=3, source="gsm8k", difficulty=3)
    make_traces(4, start=5, source="math", difficulty=1)
    one = build(api, version="1", filters={"source": "gsm8k", "difficulty": 1}).json()
    assert sorted(one["trace_ids"]) == [t.pk for t in gsm]
    assert one["filters"] == {"source": ["gsm8k"], "difficulty": [1]}
    both = build(api, version="2", filters={"source": "gsm8k", "difficulty": [1, 3]}).json()
    assert sorted(both["trace_ids"]) == [t.pk for t in gsm + hard]


def test_a_limit_above_the_matches_takes_them_all(api: APIClient) -> None:
    make_traces(4)
    assert build(api, limit=100, selection="random", seed=1).json()["trace_count"] == 4


def test_a_build_that_matches_nothing_is_a_400_and_stores_nothing(api: APIClient) -> None:
    make_traces(2, source="math")
    response = build(api, filters={"source": "gsm8k"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "empty_dataset"
    assert "No trace matches" in error["fields"]["filters"][0]
    assert not Dataset.objects.exists()


def test_a_key_that_exists_is_a_409_and_leaves_the_dataset_alone(api: APIClient) -> None:
    make_traces(3)
    ids = build(api, limit=1).json()["trace_ids"]
    response = build(api, limit=3)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "dataset_exists"
    assert Dataset.objects.get().trace_ids() == ids
    assert DatasetItem.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"name": "a/b"}, "name", "does not match"),
        ({"name": ""}, "name", "blank"),
        ({"name": "-lead"}, "name", "does not match"),
        ({"version": "v" * 51}, "version", "no more than 50"),
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 100_001}, "limit", "less than or equal to 100000"),
        ({"selection": "oldest"}, "selection", "not a valid choice"),
        ({"seed": 3}, "seed", "Only random selection"),
        ({"selection": "random", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"filters": ["source"]}, "filters", "JSON object"),
        ({"filters": {"source": {"is": "gsm8k"}}}, "filters.source", "Values are strings"),
        ({"filters": {"source": []}}, "filters.source", "1 to 100 values"),
        ({"filters": {"source": None}}, "filters.source", "Values are strings"),
        ({"filters": {"": "x"}}, "filters.", "1 to 100 characters"),
        ({"filters": {f"k{n}": 1 for n in range(21)}}, "filters", "At most 20 keys"),
        ({"shuffle": True}, "shuffle", "Unknown field"),
    ],
)
def test_it_rejects_a_bad_build_with_a_field_error(
    api: APIClient, body: dict[str, Any], field: str, fragment: str
) -> None:
    make_traces(1)
    response = build(api, **body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert fragment in " ".join(error["fields"][field]), error["fields"]
    assert not Dataset.objects.exists()


def test_it_rejects_a_filter_number_json_reads_as_infinity(api: APIClient) -> None:
    make_traces(1)
    body = '{"name": "arith", "version": "v1", "filters": {"n": 1e999}}'
    response = api.post("/api/datasets/build", body, content_type="application/json")
    assert response.status_code == 400
    assert "Values are strings" in response.json()["error"]["fields"]["filters.n"][0]


def test_it_shows_a_dataset_by_key(api: APIClient) -> None:
    make_traces(2)
    built = build(api).json()
    response = api.get("/api/datasets/arith-v1")
    assert response.status_code == 200
    assert response.json() == built


def test_an_unknown_dataset_is_404(api: APIClient) -> None:
    for url in ("/api/datasets/nope-v1", "/api/datasets/nope-v1/export.jsonl"):
        response = api.get(url)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_trace_in_a_dataset_cannot_be_deleted(api: APIClient) -> None:
    make_traces(2)
    build(api, limit=1)
    held = Trace.objects.get(pk=Dataset.objects.get().trace_ids()[0])
    with pytest.raises(ProtectedError):
        held.delete()
    assert Trace.objects.exclude(pk=held.pk).get().delete()[0] == 1


def test_the_export_streams_prompt_completion_records_in_dataset_order(api: APIClient) -> None:
    make_traces(3)
    ids = build(api).json()["trace_ids"]
    response = api.get("/api/datasets/arith-v1/export.jsonl?format=tunix_sft")
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="arith-v1.jsonl"'
    records = export_lines(api, "arith-v1")
    assert records == [
        {
            "prompt": f"What is {n} + {n}?",
            "completion": f"\nStep 1 (thought): Add {n} to itself.\n"
            f"Step 2 (calculation): {n} + {n} = {2 * n}\nAnswer: {2 * n}",
        }
        for n in (Trace.objects.get(pk=pk).meta["n"] for pk in ids)
    ]


def test_the_export_defaults_to_tunix_sft(api: APIClient) -> None:
    make_traces(2)
    build(api)
    assert export_lines(api, "arith-v1", "") == export_lines(api, "arith-v1")


def test_an_unknown_export_format_is_a_400(api: APIClient) -> None:
    make_traces(1)
    build(api)
    response = api.get("/api/datasets/arith-v1/export.jsonl?format=alpaca")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "not a valid choice" in error["fields"]["format"][0]


def test_the_export_reads_one_query_per_chunk_not_per_trace(
    api: APIClient, django_assert_num_queries: Any
) -> None:
    count = 2 * EXPORT_CHUNK_MAX + 50
    make_traces(count)
    ids = build(api, limit=count, selection="random", seed=3).json()["trace_ids"]
    assert export_chunk_size(Dataset.objects.get()) == EXPORT_CHUNK_MAX
    response: Any = api.get("/api/datasets/arith-v1/export.jsonl")
    with django_assert_num_queries(3):
        body = b"".join(response.streaming_content)
    lines = body.decode().splitlines()
    assert len(lines) == count
    # Random order survives chunking: each line is the trace at that position.
    by_id = {t.pk: t.prompt for t in Trace.objects.all()}
    assert [json.loads(line)["prompt"] for line in lines] == [by_id[pk] for pk in ids]


def test_under_asgi_the_export_streams_from_an_async_iterator(api: APIClient, alice: Any) -> None:
    make_traces(EXPORT_CHUNK_MAX + 5)
    build(api)
    token, _ = Token.objects.get_or_create(user=alice)
    client = AsyncClient()

    async def fetch() -> tuple[bool, list[bytes]]:
        response: Any = await client.get(
            "/api/datasets/arith-v1/export.jsonl?format=tunix_sft",
            headers={"Authorization": f"Token {token.key}"},
        )
        assert response.status_code == 200
        return response.is_async, [chunk async for chunk in response]

    is_async, chunks = async_to_sync(fetch)()
    assert is_async
    assert len(chunks) == 2
    assert b"".join(chunks).decode().splitlines() == [
        json.dumps(record, ensure_ascii=False) for record in export_lines(api, "arith-v1")
    ]


def test_large_traces_are_exported_a_few_at_a_time(
    api: APIClient, django_assert_num_queries: Any
) -> None:
    # Traces of just under 1 MB: the chunk size follows the largest trace, so 8 fit in 8 MB.
    steps = [{"i": n, "type": "t", "content": "€" * 20_000} for n in range(17)]
    trace_create_batch(traces=[trace_doc(n, steps=steps) for n in range(10)], created_by=None)
    build(api)
    assert export_chunk_size(Dataset.objects.get()) == 8
    response: Any = api.get("/api/datasets/arith-v1/export.jsonl")
    with django_assert_num_queries(2):
        assert len(b"".join(response.streaming_content).splitlines()) == 10
