"""The admin lists worker heartbeats and run metrics, read-only."""

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from runs.models import RunMetric, RunStatus, WorkerHeartbeat

pytestmark = pytest.mark.django_db


def test_the_worker_list_tells_live_workers_from_silent_ones(admin_client: Client) -> None:
    now = timezone.now()
    for worker_id, age in (("live-worker", 1), ("silent-worker", 3600)):
        seen = now - timedelta(seconds=age)
        WorkerHeartbeat.objects.create(
            worker_id=worker_id, hostname="h1", pid=7, started_at=seen, last_seen=seen
        )
    body = admin_client.get("/admin/runs/workerheartbeat/").content.decode()
    rows = {
        name: row
        for row in body.split("<tr")
        for name in ("live-worker", "silent-worker")
        if f">{name}<" in row
    }
    # The "alive" column; no worker here is draining, so that column shows False for both.
    assert rows["live-worker"].count('alt="True"') == 1
    assert rows["silent-worker"].count('alt="True"') == 0
    assert admin_client.get("/admin/runs/workerheartbeat/add/").status_code == 403


def test_run_metrics_are_listed_and_cannot_be_edited(admin_client: Client, make_run: Any) -> None:
    run = make_run(RunStatus.RUNNING)
    metric = RunMetric.objects.create(
        run=run, step=3, values={"loss": 1.5}, tb_values={"actor/kl": 0.25}
    )
    body = admin_client.get("/admin/runs/runmetric/").content.decode()
    assert "1.5" in body and "actor/kl" in body
    change = admin_client.post(f"/admin/runs/runmetric/{metric.pk}/change/", {"step": 4})
    assert change.status_code == 403
    metric.refresh_from_db()
    assert metric.step == 3
