"""GET /api/tunix/runs/{id}/logs/snapshot: the last lines for a fast first paint."""

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import LogChunk, RunStatus
from runs.selectors import log_snapshot

pytestmark = pytest.mark.django_db


def chunks(run: Any, *texts: str, stream: str = "stdout") -> None:
    start = LogChunk.objects.filter(run=run).count()
    LogChunk.objects.bulk_create(
        LogChunk(run=run, seq=start + i, stream=stream, chunk=text)
        for i, text in enumerate(texts, 1)
    )


def url(run_id: Any) -> str:
    return f"/api/tunix/runs/{run_id}/logs/snapshot"


def test_it_returns_the_last_200_lines_by_default(api: APIClient, make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    chunks(run, *("".join(f"line {i + j}\n" for j in range(10)) for i in range(1, 251, 10)))
    body = api.get(url(run.pk)).json()
    assert body["run_id"] == str(run.pk)
    assert [line["text"] for line in body["lines"]] == [f"line {i}" for i in range(51, 251)]
    assert body["lines"][0] == {"seq": 6, "stream": "stdout", "text": "line 51"}
    assert body["lines"][-1]["seq"] == 25
    assert body["last_seq"] == 25
    assert body["truncated"] is True


def test_it_splits_chunks_into_lines_across_streams(api: APIClient, make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    chunks(run, "a\nb\n")
    chunks(run, "oops\n", stream="stderr")
    chunks(run, "c\npartial")
    body = api.get(url(run.pk), {"lines": 4}).json()
    assert body["lines"] == [
        {"seq": 1, "stream": "stdout", "text": "b"},
        {"seq": 2, "stream": "stderr", "text": "oops"},
        {"seq": 3, "stream": "stdout", "text": "c"},
        {"seq": 3, "stream": "stdout", "text": "partial"},
    ]
    assert (body["last_seq"], body["truncated"]) == (3, True)
    everything = api.get(url(run.pk), {"lines": 10}).json()
    assert len(everything["lines"]) == 5 and everything["truncated"] is False


def test_a_run_without_output_has_nothing_to_resume_after(api: APIClient, make_run: Any) -> None:
    run = make_run()
    assert api.get(url(run.pk)).json() == {
        "run_id": str(run.pk),
        "lines": [],
        "last_seq": 0,
        "truncated": False,
    }


def test_zero_lines_still_gives_the_resume_point(api: APIClient, make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    chunks(run, "a\n", "b\n")
    body = api.get(url(run.pk), {"lines": 0}).json()
    assert (body["lines"], body["last_seq"], body["truncated"]) == ([], 2, True)


def test_it_serves_up_to_ten_thousand_lines(make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    chunks(run, *("x\n" * 100 for _ in range(120)))
    snapshot = log_snapshot(run.pk, lines=10_000)
    assert len(snapshot.lines) == 10_000
    assert snapshot.truncated and snapshot.last_seq == 120
    assert snapshot.lines[0].seq == 21


@pytest.mark.parametrize("lines", ["-1", "10001", "abc", "1.5", ""])
def test_a_bad_line_count_is_a_400(api: APIClient, make_run: Any, lines: str) -> None:
    run = make_run()
    response = api.get(url(run.pk), {"lines": lines})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert list(response.json()["error"]["fields"]) == ["lines"]


@pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "nope"])
def test_an_unknown_run_is_404(api: APIClient, run_id: str) -> None:
    response = api.get(url(run_id))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_it_needs_credentials(anon: APIClient, make_run: Any) -> None:
    response = anon.get(url(make_run().pk))
    assert response.status_code == 401


def test_the_stream_refuses_to_run_without_the_asgi_server(api: APIClient, make_run: Any) -> None:
    # The Django test client is WSGI: no event loop to stream from.
    response = api.get(f"/api/tunix/runs/{make_run().pk}/logs")
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "asgi_required"
