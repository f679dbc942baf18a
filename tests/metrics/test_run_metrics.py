"""Run metrics after real runs through a real worker process, read from its metrics port."""

import signal
import time
from typing import Any

import pytest
from django.db.models import Sum
from rest_framework.test import APIClient

from runs.models import LogChunk, Run, RunStatus
from runs.services import run_cancel
from tests.metrics.conftest import MetricsWorker, Samples, parse, scrape, value
from tests.runs.helpers import enqueue_child, status_of, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def seconds(later: Any, earlier: Any) -> float:
    return float((later - earlier).total_seconds())


def web_metrics(client: APIClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse(response.content.decode())


def test_a_worker_counts_completed_failed_and_cancelled_runs(
    alice: Any, metrics_worker: Any
) -> None:
    worker: MetricsWorker = metrics_worker()
    done = enqueue_child(alice, lines=200, stderr_lines=2)
    failed = enqueue_child(alice, lines=3, exit_code=3)
    wait_for(lambda: status_of(failed) == RunStatus.FAILED, timeout=30)
    assert status_of(done) == RunStatus.COMPLETED
    cancelled = enqueue_child(alice, lines=1, sleep=60)
    wait_for(lambda: status_of(cancelled) == RunStatus.RUNNING, timeout=30)
    wait_for(lambda: LogChunk.objects.filter(run=cancelled).exists())
    run_cancel(run_id=cancelled.pk, user=alice)
    wait_for(lambda: status_of(cancelled) == RunStatus.CANCELLED, timeout=30)

    samples = scrape(worker.url)
    runs = {r.status: r for r in Run.objects.all()}
    assert set(runs) == {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
    for status, run in runs.items():
        labels = {"recipe": "child", "status": status}
        assert value(samples, "tunix_runs_total", **labels) == 1
        assert value(samples, "tunix_run_duration_seconds_count", **labels) == 1
        assert value(samples, "tunix_run_duration_seconds_sum", **labels) == pytest.approx(
            seconds(run.finished_at, run.started_at), abs=1e-3
        )
    assert value(samples, "tunix_runs_total", recipe="child", status="timeout") is None

    assert value(samples, "tunix_run_pickup_latency_seconds_count") == 3
    assert value(samples, "tunix_run_pickup_latency_seconds_sum") == pytest.approx(
        sum(seconds(r.started_at, r.created_at) for r in runs.values()), abs=1e-3
    )
    cancel = runs[RunStatus.CANCELLED]
    assert value(samples, "tunix_cancel_latency_seconds_count") == 1
    latency = value(samples, "tunix_cancel_latency_seconds_sum")
    assert latency == pytest.approx(
        seconds(cancel.finished_at, cancel.cancel_requested_at), abs=1e-3
    )
    assert latency is not None and latency < 5

    stored = Run.objects.aggregate(b=Sum("log_bytes"))["b"]
    assert stored >= sum(len(f"line {i}\n") for i in range(1, 201))
    assert value(samples, "tunix_log_bytes_total") == stored
    assert value(samples, "tunix_log_chunks_total") == LogChunk.objects.count()

    assert value(samples, "tunix_queue_depth") == 0
    assert value(samples, "tunix_runs_running") == 0
    beat = value(samples, "tunix_worker_heartbeat_timestamp_seconds", worker=worker.worker_id)
    assert beat is not None and abs(beat - time.time()) < 30


def test_shared_state_is_the_same_whichever_process_is_scraped(
    alice: Any, anon: APIClient, metrics_worker: Any
) -> None:
    worker: MetricsWorker = metrics_worker()
    running = enqueue_child(alice, sleep=60)
    wait_for(lambda: status_of(running) == RunStatus.RUNNING, timeout=30)
    # The worker is busy (concurrency 1): these wait.
    for _ in range(3):
        enqueue_child(alice, lines=1)
    for samples in (scrape(worker.url), web_metrics(anon)):
        assert value(samples, "tunix_queue_depth") == 3
        assert value(samples, "tunix_runs_running") == 1
        beat = value(samples, "tunix_worker_heartbeat_timestamp_seconds", worker=worker.worker_id)
        assert beat is not None and abs(beat - time.time()) < 30
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)
    # A worker that stopped cleanly is no longer reported.
    samples = web_metrics(anon)
    assert (
        value(samples, "tunix_worker_heartbeat_timestamp_seconds", worker=worker.worker_id) is None
    )


def test_the_web_process_counts_the_pending_runs_it_cancels(
    alice: Any, api: APIClient, metric_recipes: Any
) -> None:
    run = enqueue_child(alice, lines=1)
    before = web_metrics(api)
    labels = {"recipe": "child", "status": "cancelled"}
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel", {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    after = web_metrics(api)
    assert (value(after, "tunix_runs_total", **labels) or 0) - (
        value(before, "tunix_runs_total", **labels) or 0
    ) == 1
    # It never started: no duration, no pickup, and no cancel latency (nothing was running).
    unchanged = [
        ("tunix_run_duration_seconds_count", labels),
        ("tunix_run_pickup_latency_seconds_count", {}),
        ("tunix_cancel_latency_seconds_count", {}),
    ]
    for name, where in unchanged:
        assert value(after, name, **where) == value(before, name, **where), name
