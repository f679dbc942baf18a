"""Training metrics from real runs: parsed by the worker, stored in batches, served by the API."""

import math
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from runs.execution.worker import Worker
from runs.models import Run, RunMetric, RunStatus
from runs.services import run_enqueue
from tests.runs.helpers import log_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("metric_recipes")]


def run_metric_child(alice: Any, **config: Any) -> Run:
    run = run_enqueue(recipe="metric_child", created_by=alice, config=config)
    Worker(once=True, poll_interval=0.05).run()
    run.refresh_from_db()
    return run


def stored(run: Run) -> dict[int, dict[str, Any]]:
    return dict(RunMetric.objects.filter(run=run).values_list("step", "values"))


def test_metric_lines_split_across_reads_are_stored_once_per_step(alice: Any) -> None:
    run = run_metric_child(alice, steps=6, split=True, nan_step=4)
    assert run.status == RunStatus.COMPLETED, run.status_reason
    series = stored(run)
    assert sorted(series) == [1, 2, 3, 4, 5, 6]
    for step, values in series.items():
        assert values["loss"] == pytest.approx(4.0 / step)
        assert values["learning_rate"] == 0.001
        assert values["perplexity"] == pytest.approx(math.exp(4.0 / step))
    assert series[4]["grad_norm"] is None
    assert all("grad_norm" not in v for step, v in series.items() if step != 4)
    # The lines stay in the log as the child printed them.
    assert log_text(run, "stdout").count("tunixops.metric {") == 7


def test_a_step_reported_again_keeps_its_latest_values(alice: Any) -> None:
    run = run_metric_child(alice, steps=5, resume_from=3)
    series = stored(run)
    assert sorted(series) == [1, 2, 3, 4, 5]
    assert [series[s]["loss"] for s in (1, 2)] == [4.0, 2.0]
    assert [series[s]["loss"] for s in (3, 4, 5)] == pytest.approx([1 / 3, 1 / 4, 1 / 5])


def test_metrics_are_kept_after_the_log_is_truncated(alice: Any, settings: Any) -> None:
    settings.TUNIX_LOG_MAX_BYTES = 20_000
    run = run_metric_child(alice, steps=300, pad=500)
    assert run.log_truncated
    assert sorted(stored(run)) == list(range(1, 301))


@pytest.mark.postgres
def test_metric_rows_are_written_in_the_log_batches_not_one_commit_per_line(alice: Any) -> None:
    run = run_metric_child(alice, steps=3000)
    assert len(stored(run)) == 3000
    with connection.cursor() as cursor:
        # Rows written by one transaction share its id (xmin).
        cursor.execute(
            "SELECT count(DISTINCT xmin::text) FROM tunix_run_metrics WHERE run_id = %s", [run.pk]
        )
        (metric_commits,) = cursor.fetchone()
        cursor.execute(
            "SELECT count(*) FROM tunix_run_metrics m WHERE m.run_id = %s AND NOT EXISTS "
            "(SELECT 1 FROM tunix_run_log_chunks c WHERE c.run_id = m.run_id "
            "AND c.xmin::text = m.xmin::text)",
            [run.pk],
        )
        (outside_log_batches,) = cursor.fetchone()
    assert metric_commits < 100
    assert outside_log_batches == 0


def test_the_api_serves_the_series_of_a_real_run(alice: Any, api: APIClient) -> None:
    run = run_metric_child(alice, steps=8)
    body = api.get(f"/api/tunix/runs/{run.pk}/metrics").json()
    assert body["run_id"] == str(run.pk) and body["status"] == "completed"
    assert body["names"] == ["learning_rate", "loss", "perplexity"]
    assert [p["step"] for p in body["points"]] == list(range(1, 9))
    assert body["points"][1]["values"]["loss"] == 2.0
    assert (body["total"], body["downsampled"], body["last_step"]) == (8, False, 8)
    newer = api.get(f"/api/tunix/runs/{run.pk}/metrics", {"since_step": 6}).json()
    assert [p["step"] for p in newer["points"]] == [7, 8] and newer["total"] == 2


@pytest.mark.tunix
@pytest.mark.slow
def test_a_tiny_sft_run_records_its_loss_curve(alice: Any, api: APIClient) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    run = run_enqueue(
        recipe="tiny_sft", created_by=alice, config={"max_steps": 12, "save_every_steps": 6}
    )
    Worker(once=True, poll_interval=0.05).run()
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_reason + run.stderr_tail
    body = api.get(f"/api/tunix/runs/{run.pk}/metrics").json()
    steps = [p["step"] for p in body["points"]]
    assert steps == list(range(1, 13))
    losses = [p["values"]["loss"] for p in body["points"]]
    assert all(isinstance(loss, float) and loss > 0 for loss in losses)
    assert losses[-1] < losses[0]
    assert {"loss", "learning_rate", "perplexity"} <= set(body["names"])
    assert all(p["values"]["learning_rate"] == pytest.approx(3e-3) for p in body["points"])
    # The series is what the run printed, line for line.
    printed = [
        line for line in log_text(run, "stdout").splitlines() if line.startswith("tunixops.metric")
    ]
    assert len(printed) == 12
    newer = api.get(f"/api/tunix/runs/{run.pk}/metrics", {"since_step": 10}).json()
    assert [p["step"] for p in newer["points"]] == [11, 12]
