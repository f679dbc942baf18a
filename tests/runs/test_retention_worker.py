"""The workers' daily prune: at the configured hour, once a day, one worker at a time."""

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from runs.execution.worker import Worker
from runs.models import LogChunk, RetentionPrune, Run, RunStatus
from runs.retention import ADVISORY_LOCK_KEY, prune_due, scheduled_prune
from tests.conftest import database_url
from tests.runs.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HOUR = 3


@pytest.fixture
def retention_on(settings: Any) -> Any:
    settings.TUNIX_RETENTION_DAYS = 30
    settings.TUNIX_RETENTION_HOUR = HOUR
    return settings


@pytest.fixture
def old_run(make_run: Any) -> Run:
    run = make_run(RunStatus.COMPLETED, finished_at=timezone.now() - timedelta(days=60))
    LogChunk.objects.bulk_create(
        LogChunk(run=run, seq=i, stream="stdout", chunk="x\n") for i in range(1, 11)
    )
    assert isinstance(run, Run)
    return run


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """`day` days from the start of this month (in UTC), so the old run is 60 days older."""
    today = timezone.now().astimezone(UTC)
    start = datetime(today.year, today.month, 1, tzinfo=UTC) - timedelta(days=10)
    return start + timedelta(days=day, hours=hour, minutes=minute)


def test_the_prune_is_due_from_the_configured_hour_until_one_has_run(retention_on: Any) -> None:
    assert not prune_due(at(10, HOUR - 1, 59)) or not RetentionPrune.objects.exists()
    RetentionPrune.objects.create(started_at=at(9, HOUR, 1), trigger="worker w")
    # Yesterday's prune covers the hours before today's mark.
    assert not prune_due(at(10, HOUR - 1, 59))
    assert prune_due(at(10, HOUR))
    assert prune_due(at(10, 23))
    RetentionPrune.objects.create(started_at=at(10, HOUR + 2), trigger="command")
    # A prune by the command that day counts as well.
    assert not prune_due(at(10, 23))
    assert prune_due(at(11, HOUR, 30))


def test_without_an_hour_or_days_workers_never_prune(settings: Any, old_run: Run) -> None:
    settings.TUNIX_RETENTION_DAYS = 30
    settings.TUNIX_RETENTION_HOUR = None
    assert Worker(worker_id="w").maybe_prune() is None
    settings.TUNIX_RETENTION_HOUR = HOUR
    settings.TUNIX_RETENTION_DAYS = 0
    assert Worker(worker_id="w").maybe_prune() is None
    assert LogChunk.objects.filter(run=old_run).count() == 10


def test_a_worker_prunes_on_a_thread_of_its_own_once_a_day(retention_on: Any, old_run: Run) -> None:
    worker = Worker(worker_id="w-1")
    thread = worker.maybe_prune(at(10, HOUR, 5))
    assert thread is not None and thread.name == "retention"
    thread.join(30)
    assert not LogChunk.objects.filter(run=old_run).exists()
    record = RetentionPrune.objects.get()
    assert record.trigger == "worker w-1" and record.summary["log_chunks"] == 10
    assert worker.maybe_prune(at(10, HOUR + 1)) is None


@pytest.mark.postgres
def test_a_worker_skips_the_prune_while_another_holds_the_lock(
    retention_on: Any, old_run: Run
) -> None:
    with psycopg.connect(database_url(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        assert scheduled_prune(trigger="worker w-2", now=at(10, HOUR)) is None
    assert LogChunk.objects.filter(run=old_run).count() == 10
    assert not RetentionPrune.objects.exists()
    assert scheduled_prune(trigger="worker w-2", now=at(10, HOUR)) is not None


def test_of_workers_asking_at_once_only_one_prunes(retention_on: Any, old_run: Run) -> None:
    workers = [Worker(worker_id=f"w-{i}") for i in range(4)]
    start = threading.Barrier(len(workers))
    threads: list[threading.Thread | None] = [None] * len(workers)

    def ask(i: int) -> None:
        start.wait()
        try:
            threads[i] = workers[i].maybe_prune(at(10, HOUR))
        finally:
            connection.close()

    askers = [threading.Thread(target=ask, args=(i,)) for i in range(len(workers))]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(30)
    for thread in threads:
        if thread is not None:
            thread.join(30)
    assert RetentionPrune.objects.count() == 1
    assert not LogChunk.objects.filter(run=old_run).exists()


def test_a_real_worker_process_prunes_by_itself(spawn_worker: Any, old_run: Run) -> None:
    hour = str(timezone.now().hour)
    spawn_worker("--worker-id", "pruner", TUNIX_RETENTION_DAYS="30", TUNIX_RETENTION_HOUR=hour)
    wait_for(lambda: RetentionPrune.objects.filter(finished_at__isnull=False).exists(), 60)
    assert not LogChunk.objects.filter(run=old_run).exists()
    assert RetentionPrune.objects.get().trigger == "worker pruner"
