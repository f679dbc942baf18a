"""Poison output cannot wedge a worker: what the database cannot store is repaired or accounted for.

Each case runs through a real worker process with `--concurrency 1`, and a normal run enqueued
after the poison run must then complete on the same worker within 10 s.
"""

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from runs.models import Run, RunMetric, RunStatus
from runs.services import run_cancel
from tests.runs.helpers import TERMINAL, enqueue_child, log_text, status_of, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]

REPLACED = "\ufffd"


def start_worker(spawn_worker: Any, worker_id: str = "poisoned", **env: str) -> Any:
    return spawn_worker(
        "--concurrency", "1", "--worker-id", worker_id, "--poll-interval", "0.1", **env
    )


def finishes(run: Run, timeout: float) -> str:
    wait_for(lambda: status_of(run) in TERMINAL, timeout=timeout, interval=0.05)
    return status_of(run)


def the_next_run_completes_on_the_same_worker(alice: Any, worker_id: str = "poisoned") -> None:
    began = time.monotonic()
    normal = enqueue_child(alice, lines=2)
    assert finishes(normal, timeout=10) == RunStatus.COMPLETED
    assert time.monotonic() - began < 10
    normal.refresh_from_db()
    assert normal.worker_id == worker_id
    assert log_text(normal) == "line 1\nline 2\n"


def test_a_nul_byte_in_the_output_is_stored_as_the_replacement_character(
    alice: Any, api: APIClient, spawn_worker: Any
) -> None:
    start_worker(spawn_worker)
    run = enqueue_child(alice, poison="nul", lines=2)
    assert finishes(run, timeout=20) == RunStatus.COMPLETED
    assert log_text(run) == f"A{REPLACED}B\nline 1\nline 2\n"
    run.refresh_from_db()
    assert run.stdout_tail == f"A{REPLACED}B\nline 1\nline 2\n"
    snapshot = api.get(f"/api/tunix/runs/{run.pk}/logs/snapshot").json()
    assert snapshot["lines"][0]["text"] == f"A{REPLACED}B"
    the_next_run_completes_on_the_same_worker(alice)


@pytest.mark.parametrize(
    ("poison", "step", "name"),
    [("metric_nul", 1, f"evil{REPLACED}name"), ("metric_surrogate", 2, REPLACED)],
)
def test_a_metric_name_spelling_a_nul_or_lone_surrogate_is_stored_repaired(
    alice: Any, api: APIClient, spawn_worker: Any, poison: str, step: int, name: str
) -> None:
    start_worker(spawn_worker)
    run = enqueue_child(alice, poison=poison, lines=1)
    assert finishes(run, timeout=20) == RunStatus.COMPLETED
    metric = RunMetric.objects.get(run=run)
    assert metric.step == step
    assert name in metric.values and metric.values["loss"] in (1.5, 1.25)
    series = api.get(f"/api/tunix/runs/{run.pk}/metrics").json()
    assert name in series["names"]
    the_next_run_completes_on_the_same_worker(alice)


def test_a_poison_run_is_cancelled_within_its_grace(alice: Any, spawn_worker: Any) -> None:
    start_worker(spawn_worker)
    run = enqueue_child(alice, poison="nul", sleep=60, cancel_grace_seconds=1)
    wait_for(lambda: REPLACED in log_text(run), timeout=20)
    began = time.monotonic()
    run_cancel(run_id=run.pk, user=alice)
    assert finishes(run, timeout=5) == RunStatus.CANCELLED
    assert time.monotonic() - began < 1 + 3
    the_next_run_completes_on_the_same_worker(alice)


def test_a_restarted_worker_is_not_wedged_by_the_poison_run_it_reclaims(
    alice: Any, spawn_worker: Any
) -> None:
    env = {"TUNIX_LEASE_SECONDS": "2", "TUNIX_HEARTBEAT_SECONDS": "0.5"}
    doomed = start_worker(spawn_worker, "doomed", **env)
    run = enqueue_child(alice, poison="nul", sleep=60, max_attempts=2, cancel_grace_seconds=1)
    wait_for(lambda: REPLACED in log_text(run), timeout=20)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    start_worker(spawn_worker, "rescuer", **env)
    wait_for(lambda: Run.objects.get(pk=run.pk).attempt == 2, timeout=20)
    wait_for(lambda: log_text(run).count(f"A{REPLACED}B\n") == 2, timeout=20)
    run_cancel(run_id=run.pk, user=alice)
    assert finishes(run, timeout=5) == RunStatus.CANCELLED
    the_next_run_completes_on_the_same_worker(alice, "rescuer")


# -- what the database refuses for reasons of its own -------------------------------------------


@pytest.fixture
def refusing_trigger() -> Iterator[Any]:
    """Install a PostgreSQL trigger that refuses matching rows with a data exception (22000)."""
    installed: list[str] = []

    def install(table: str, condition: str) -> None:
        name = f"tunix_test_refuse_{table}"
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
                BEGIN
                    IF {condition} THEN
                        RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22000';
                    END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql;
                CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON {table}
                    FOR EACH ROW EXECUTE FUNCTION {name}();
                """
            )
        installed.append(f"DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}();")

    yield install
    with connection.cursor() as cursor:
        for statement in installed:
            cursor.execute(statement)


@pytest.mark.postgres
def test_a_chunk_the_database_refuses_is_replaced_by_a_note_and_capture_goes_on(
    alice: Any, spawn_worker: Any, refusing_trigger: Any
) -> None:
    refusing_trigger("tunix_run_log_chunks", "NEW.chunk LIKE '%REFUSED-BY-TRIGGER%'")
    start_worker(spawn_worker)
    run = enqueue_child(alice, poison="refused", lines=3)
    assert finishes(run, timeout=20) == RunStatus.COMPLETED
    text = log_text(run)
    assert "REFUSED-BY-TRIGGER" not in text
    assert "[tunixops] 19 bytes of stdout were dropped: the database refused it" in text
    assert "line 1\nline 2\nline 3\n" in text
    the_next_run_completes_on_the_same_worker(alice)


@pytest.mark.postgres
def test_metrics_the_database_refuses_are_dropped_with_a_note(
    alice: Any, spawn_worker: Any, refusing_trigger: Any
) -> None:
    refusing_trigger("tunix_run_metrics", "NEW.step = 1")
    start_worker(spawn_worker)
    run = enqueue_child(alice, poison="metric_nul", lines=1)
    assert finishes(run, timeout=20) == RunStatus.COMPLETED
    assert not RunMetric.objects.filter(run=run).exists()
    assert "[tunixops] metrics of step 1 were dropped (evil" in log_text(run)
    the_next_run_completes_on_the_same_worker(alice)


@pytest.mark.postgres
def test_an_outcome_whose_tails_are_refused_is_recorded_without_them(
    alice: Any, spawn_worker: Any, refusing_trigger: Any
) -> None:
    refusing_trigger("tunix_runs", "NEW.stdout_tail LIKE '%REFUSED-BY-TRIGGER%'")
    start_worker(spawn_worker)
    run = enqueue_child(alice, poison="refused", lines=1)
    assert finishes(run, timeout=20) == RunStatus.COMPLETED
    run.refresh_from_db()
    assert run.stdout_tail == ""
    assert "REFUSED-BY-TRIGGER" in log_text(run)
    the_next_run_completes_on_the_same_worker(alice)
