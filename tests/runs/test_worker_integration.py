"""The worker with the rest of the product: artifacts registered, datasets written."""

import json
import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from artifacts.models import Artifact
from runs.execution.worker import Worker
from runs.models import RunStatus
from runs.services import run_cancel, run_dir, run_enqueue
from tests.runs.helpers import WorkerThread, enqueue_child, log_text, status_of, wait_for
from traces.services import dataset_build, trace_create_batch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def make_dataset(user: Any, key_version: str = "v1", count: int = 3) -> str:
    traces = [
        {
            "trace_version": "1",
            "prompt": f"What is {i} + {i}?",
            "steps": [{"i": 0, "type": "thought", "content": f"add {i} and {i}"}],
            "final_answer": str(2 * i),
            "meta": {"topic": "math"},
        }
        for i in range(count)
    ]
    trace_create_batch(traces=traces, created_by=user)
    return dataset_build(name="arith", version=key_version, created_by=user, limit=count).key


def test_the_files_a_run_writes_are_registered_when_it_ends(alice: Any) -> None:
    run = enqueue_child(alice, files=3)
    Worker(once=True, poll_interval=0.05).run()
    assert status_of(run) == RunStatus.COMPLETED
    names = set(Artifact.objects.filter(run=run).values_list("name", flat=True))
    assert {"out/file-0.bin", "out/file-1.bin", "out/file-2.bin", "config.json"} <= names
    sizes = dict(Artifact.objects.filter(run=run).values_list("name", "size_bytes"))
    assert sizes["out/file-2.bin"] == 3 * 1024


def test_files_are_registered_while_the_run_is_still_going(alice: Any, settings: Any) -> None:
    settings.TUNIX_ARTIFACT_SYNC_SECONDS = 0.2
    run = enqueue_child(alice, files=2, sleep=60)
    with WorkerThread():
        wait_for(
            lambda: Artifact.objects.filter(run=run, name="out/file-1.bin").exists(), timeout=10
        )
        assert status_of(run) == RunStatus.RUNNING
        run_cancel(run_id=run.pk, user=alice)
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED)


def test_a_run_gets_its_dataset_written_into_its_directory(alice: Any) -> None:
    key = make_dataset(alice)
    run = run_enqueue(recipe="child", created_by=alice, config={"lines": 1}, dataset_key=key)
    Worker(once=True, poll_interval=0.05).run()
    assert status_of(run) == RunStatus.COMPLETED
    records = [
        json.loads(line) for line in (run_dir(run.pk) / "dataset.jsonl").read_text().splitlines()
    ]
    assert len(records) == 3
    assert all(set(r) >= {"prompt", "completion"} for r in records)


def test_an_unknown_dataset_is_refused_at_enqueue(api: APIClient) -> None:
    response = api.post(
        "/api/tunix/run", {"recipe": "tiny_sft", "dataset_key": "nope-v1"}, format="json"
    )
    assert response.status_code == 400
    assert "unknown dataset" in response.json()["error"]["fields"]["dataset_key"][0]


def test_a_dataset_a_queued_run_names_cannot_be_deleted(alice: Any) -> None:
    from django.db.models import ProtectedError

    from traces.models import Dataset

    key = make_dataset(alice, "v2")
    run = run_enqueue(recipe="child", created_by=alice, config={}, dataset_key=key)
    with pytest.raises(ProtectedError):
        Dataset.objects.filter(key=key).delete()
    Worker(once=True, poll_interval=0.05).run()
    assert status_of(run) == RunStatus.COMPLETED


def test_a_dataset_that_cannot_be_written_fails_the_run_clearly(alice: Any) -> None:
    key = make_dataset(alice, "v4")
    run = run_enqueue(recipe="child", created_by=alice, config={}, dataset_key=key)
    # A directory where the file must go: the write (an atomic rename) fails.
    (run_dir(run.pk) / "dataset.jsonl").mkdir(parents=True)
    Worker(once=True, poll_interval=0.05).run()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.status_reason.startswith(f"could not start: dataset '{key}' cannot be written")


@pytest.mark.tunix
@pytest.mark.slow
def test_tiny_sft_trains_on_the_runs_dataset(alice: Any) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    key = make_dataset(alice, "v3", count=5)
    run = run_enqueue(recipe="tiny_sft", created_by=alice, config={"max_steps": 3}, dataset_key=key)
    Worker(once=True, poll_interval=0.05).run()
    assert status_of(run) == RunStatus.COMPLETED, _reason(run)
    first = log_text(run, "stdout").splitlines()[0]
    assert re.search(r"data=dataset .*dataset\.jsonl \(5 records", first), first
    assert Artifact.objects.filter(run=run, step=3).exists()


def _reason(run: Any) -> str:
    run.refresh_from_db()
    return f"{run.status_reason}\n{run.stderr_tail}"
