"""/readyz: database, migrations, and how many workers have a fresh heartbeat."""

import signal
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from runs.execution.worker import Worker
from runs.models import FORGET_WORKER_SECONDS, WorkerHeartbeat
from tests.runs.helpers import wait_for
from tunixops import views


def ready(client: APIClient) -> dict[str, Any]:
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


def beat_row(worker_id: str, seconds_ago: float) -> WorkerHeartbeat:
    seen = timezone.now() - timedelta(seconds=seconds_ago)
    return WorkerHeartbeat.objects.create(
        worker_id=worker_id, hostname="h", pid=1, started_at=seen, last_seen=seen
    )


@pytest.mark.django_db
def test_without_workers_the_web_tier_is_ready_and_says_so(anon: APIClient) -> None:
    assert ready(anon) == {"status": "ok", "database": "ok", "workers": 0}


@pytest.mark.django_db
def test_only_heartbeats_within_the_lease_count(anon: APIClient, settings: Any) -> None:
    settings.TUNIX_LEASE_SECONDS = 30
    beat_row("fresh", 1)
    beat_row("almost-stale", 29)
    beat_row("stale", 31)
    assert ready(anon)["workers"] == 2


@pytest.mark.django_db(transaction=True)
def test_a_live_idle_worker_is_counted_until_it_stops(anon: APIClient, spawn_worker: Any) -> None:
    worker = spawn_worker("--worker-id", "readyz-worker", TUNIX_HEARTBEAT_SECONDS="0.2")
    wait_for(lambda: ready(anon)["workers"] == 1, timeout=30)
    row = WorkerHeartbeat.objects.get(worker_id="readyz-worker")
    assert row.pid == worker.pid
    # Idle, it still renews its heartbeat.
    wait_for(
        lambda: WorkerHeartbeat.objects.get(worker_id="readyz-worker").last_seen > row.last_seen,
        timeout=10,
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert ready(anon)["workers"] == 0
    assert not WorkerHeartbeat.objects.filter(worker_id="readyz-worker").exists()


@pytest.mark.django_db
def test_a_dead_workers_row_is_forgotten_after_a_day() -> None:
    beat_row("dead-long-ago", FORGET_WORKER_SECONDS + 60)
    beat_row("dead-recently", 600)
    assert Worker(worker_id="sweeper").forget_dead_workers() == 1
    assert set(WorkerHeartbeat.objects.values_list("worker_id", flat=True)) == {"dead-recently"}


@pytest.mark.django_db
def test_an_unapplied_migration_makes_it_unready(anon: APIClient, monkeypatch: Any) -> None:
    monkeypatch.setattr(views, "_migrated", False)
    (leaf,) = [n for n in MigrationLoader(connection).graph.leaf_nodes() if n[0] == "runs"]
    MigrationRecorder(connection).migration_qs.filter(app="runs", name=leaf[1]).delete()
    response = anon.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "unapplied_migrations": 1}


@pytest.mark.django_db
def test_once_everything_was_applied_the_migration_graph_is_not_read_again(
    anon: APIClient, monkeypatch: Any
) -> None:
    monkeypatch.setattr(views, "_migrated", False)
    assert ready(anon)["status"] == "ok"
    with CaptureQueriesContext(connection) as queries:
        assert ready(anon)["status"] == "ok"
    assert not any("django_migrations" in q["sql"] for q in queries.captured_queries)
    assert len(queries.captured_queries) <= 2


@pytest.mark.django_db
def test_a_stuck_worker_is_not_counted_ready_and_is_exported(anon: APIClient) -> None:
    beat_row("healthy", 1)
    WorkerHeartbeat.objects.filter(pk=beat_row("wedged", 1).pk).update(
        stuck_reason="run x: log write failing for 90 s: boom", stuck_since=timezone.now()
    )
    assert ready(anon) == {"status": "ok", "database": "ok", "workers": 1, "workers_stuck": 1}
    body = anon.get("/metrics").content.decode()
    assert 'tunix_worker_stuck{worker="wedged"} 1.0' in body
    assert 'tunix_worker_stuck{worker="healthy"} 0.0' in body
