"""Pinning and disk usage through the API: who may pin, what each run and each user uses."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from artifacts.services import artifacts_sync
from runs.models import Run, RunStatus
from runs.services import run_dir
from tests.conftest import api_client

pytestmark = pytest.mark.django_db


def pin(client: APIClient, run: Run, action: str = "pin") -> Any:
    return client.post(f"/api/tunix/runs/{run.pk}/{action}")


def with_files(run: Run, *sizes: int) -> Run:
    directory = run_dir(run.pk)
    directory.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        (directory / f"file-{i}.bin").write_bytes(b"x" * size)
    artifacts_sync(run_id=run.pk)
    run.refresh_from_db()
    return run


def test_the_owner_pins_and_unpins_a_run_and_repeats_change_nothing(
    api: APIClient, make_run: Any, alice: Any
) -> None:
    run = make_run(RunStatus.COMPLETED)
    first = pin(api, run)
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["run_id"] == str(run.pk) and body["pinned"] is True
    assert body["pinned_by"] == "alice" and body["pinned_at"]
    again = pin(api, run).json()
    assert again == body
    detail = api.get(f"/api/tunix/runs/{run.pk}").json()
    assert detail["pinned"] is True and detail["pinned_by"] == "alice"
    off = pin(api, run, "unpin").json()
    assert off == {"run_id": str(run.pk), "pinned": False, "pinned_at": None, "pinned_by": None}


def test_another_user_may_not_pin_a_run_but_an_operator_may(
    make_run: Any, bob: Any, operator: Any
) -> None:
    run = make_run(RunStatus.RUNNING)
    refused = pin(api_client(bob), run)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert "owner or an operator" in refused.json()["error"]["message"]
    assert pin(api_client(bob), run, "unpin").status_code == 403
    run.refresh_from_db()
    assert run.pinned is False
    done = pin(api_client(operator), run)
    assert done.status_code == 200 and done.json()["pinned_by"] == "olga"


@pytest.mark.parametrize("run_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_pinning_an_unknown_run_is_404(api: APIClient, run_id: str) -> None:
    response = api.post(f"/api/tunix/runs/{run_id}/pin")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_pinning_needs_credentials(anon: APIClient, make_run: Any) -> None:
    run = make_run()
    assert pin(anon, run).status_code == 401
    assert anon.get("/api/tunix/storage").status_code == 401


def test_pinning_answers_405_to_get(api: APIClient, make_run: Any) -> None:
    assert api.get(f"/api/tunix/runs/{make_run().pk}/pin").status_code == 405


def test_each_run_reports_its_artifact_bytes_and_lists_sort_by_them(
    api: APIClient, make_run: Any
) -> None:
    small = with_files(make_run(RunStatus.COMPLETED, name="small"), 100)
    big = with_files(make_run(RunStatus.COMPLETED, name="big"), 3000, 2000)
    none = make_run(RunStatus.PENDING, name="none")
    assert api.get(f"/api/tunix/runs/{big.pk}").json()["artifact_bytes"] == 5000
    assert api.get(f"/api/tunix/runs/{small.pk}").json()["artifact_bytes"] == 100
    largest = api.get("/api/tunix/runs?sort=-artifact_bytes").json()["results"]
    assert [r["name"] for r in largest] == ["big", "small", "none"]
    smallest = api.get("/api/tunix/runs?sort=artifact_bytes").json()["results"]
    assert [r["name"] for r in smallest] == ["none", "small", "big"]
    assert none.artifact_bytes == 0
    bad = api.get("/api/tunix/runs?sort=size")
    assert bad.status_code == 400 and "sort" in bad.json()["error"]["fields"]


def test_a_sync_that_finds_files_gone_lowers_the_runs_bytes(make_run: Any) -> None:
    run = with_files(make_run(RunStatus.RUNNING), 700, 300)
    assert run.artifact_bytes == 1000
    (run_dir(run.pk) / "file-0.bin").unlink()
    artifacts_sync(run_id=run.pk)
    run.refresh_from_db()
    assert run.artifact_bytes == 300


def test_operators_see_total_and_per_user_usage(
    make_run: Any, alice: Any, bob: Any, operator: Any
) -> None:
    with_files(make_run(RunStatus.COMPLETED, created_by=alice), 1000)
    with_files(make_run(RunStatus.COMPLETED, created_by=alice, pinned=True), 500)
    with_files(make_run(RunStatus.FAILED, created_by=bob), 4000)
    make_run(RunStatus.PENDING, created_by=None)
    response = api_client(operator).get("/api/tunix/storage")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["total_bytes"] == 5500 and body["runs"] == 4
    assert body["pinned_runs"] == 1 and body["pinned_bytes"] == 500
    assert body["users"] == [
        {"username": "bob", "runs": 1, "pinned_runs": 0, "artifact_bytes": 4000},
        {"username": "alice", "runs": 2, "pinned_runs": 1, "artifact_bytes": 1500},
        {"username": None, "runs": 1, "pinned_runs": 0, "artifact_bytes": 0},
    ]
    assert [r["artifact_bytes"] for r in body["largest_runs"]] == [4000, 1000, 500]
    assert body["largest_runs"][0]["created_by"] == "bob"
    assert body["last_prune"] is None


def test_storage_is_for_operators_only(api: APIClient) -> None:
    response = api.get("/api/tunix/storage")
    assert response.status_code == 403
    assert response.json()["error"]["message"].startswith("Only operators")
