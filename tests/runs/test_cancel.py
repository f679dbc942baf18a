"""Cancelling runs end to end: real workers, real children, real process groups."""

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run, RunStatus
from runs.services import run_cancel, run_dir
from runs.state_machine import IllegalTransition
from tests.runs.helpers import (
    WorkerThread,
    enqueue_child,
    log_text,
    process_alive,
    status_of,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def test_it_terminates_a_cooperative_child_and_records_cancelled(
    api: APIClient, alice: Any
) -> None:
    run = enqueue_child(alice, lines=2, sleep=60)
    with WorkerThread():
        wait_for(lambda: "line 2" in log_text(run))
        began = time.monotonic()
        response = api.post(f"/api/tunix/runs/{run.pk}/cancel", {"reason": "enough"}, format="json")
        assert response.status_code == 200
        assert response.json()["status"] == "cancel_requested"
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=5)
        assert time.monotonic() - began < 2
    run.refresh_from_db()
    assert run.status_reason == "cancelled by alice: enough"
    assert run.exit_code == -15
    assert "[tunixops] cancel requested by alice: enough: sending SIGTERM" in log_text(run)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(alice: Any) -> None:
    run = enqueue_child(alice, ignore_sigterm=True, lines=1, sleep=60, cancel_grace_seconds=0.5)
    with WorkerThread():
        wait_for(lambda: "line 1" in log_text(run))
        began = time.monotonic()
        run_cancel(run_id=run.pk, user=alice)
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=10)
        elapsed = time.monotonic() - began
    run.refresh_from_db()
    assert 0.5 <= elapsed < 5
    assert run.exit_code == -9
    text = log_text(run)
    assert "sending SIGTERM" in text and "[tunixops] grace period over: sending SIGKILL" in text


def test_cancel_kills_grandchildren_too(alice: Any) -> None:
    run = enqueue_child(alice, grandchild=True, lines=1, sleep=60)
    pid_file = run_dir(run.pk) / "grandchild.pid"
    with WorkerThread():
        wait_for(lambda: "line 1" in log_text(run) and pid_file.exists())
        grandchild = int(pid_file.read_text())
        assert process_alive(grandchild)
        run_cancel(run_id=run.pk, user=alice)
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=10)
    wait_for(lambda: not process_alive(grandchild), timeout=5)


def test_a_grandchild_left_behind_by_a_finished_child_is_reaped(alice: Any) -> None:
    run = enqueue_child(alice, grandchild=True, lines=1)
    pid_file = run_dir(run.pk) / "grandchild.pid"
    with WorkerThread():
        wait_for(lambda: status_of(run) == RunStatus.COMPLETED, timeout=15)
    wait_for(lambda: not process_alive(int(pid_file.read_text())), timeout=5)


def test_cancel_twice_is_safe(api: APIClient, alice: Any) -> None:
    run = enqueue_child(alice, sleep=60)
    with WorkerThread():
        wait_for(lambda: status_of(run) == RunStatus.RUNNING)
        first = api.post(f"/api/tunix/runs/{run.pk}/cancel")
        second = api.post(f"/api/tunix/runs/{run.pk}/cancel")
        assert first.status_code == second.status_code == 200
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=5)
        third = api.post(f"/api/tunix/runs/{run.pk}/cancel")
        assert third.status_code == 200 and third.json()["status"] == "cancelled"
    assert log_text(run).count("sending SIGTERM") == 1


def test_cancel_after_completion_is_409(api: APIClient, alice: Any) -> None:
    run = enqueue_child(alice, lines=1)
    with WorkerThread():
        wait_for(lambda: status_of(run) == RunStatus.COMPLETED)
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel")
    assert response.status_code == 409
    assert "completed" in response.json()["error"]["message"]


def test_concurrent_cancels_leave_one_consistent_state(alice: Any) -> None:
    run = enqueue_child(alice, sleep=60)
    with WorkerThread():
        wait_for(lambda: status_of(run) == RunStatus.RUNNING)
        results: list[str] = []

        def cancel() -> None:
            results.append(run_cancel(run_id=run.pk, user=alice).status)

        threads = [threading.Thread(target=cancel) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(results) <= {RunStatus.CANCEL_REQUESTED, RunStatus.CANCELLED}
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=5)
    assert log_text(run).count("sending SIGTERM") == 1


@pytest.mark.parametrize("attempt", range(5))
def test_a_cancel_racing_completion_ends_in_exactly_one_terminal_state(
    alice: Any, attempt: int
) -> None:
    # The child exits on its own about when the cancel lands; whichever wins, the run ends once,
    # in a terminal state, and never flips afterwards.
    run = enqueue_child(alice, sleep=0.3 + attempt * 0.02)
    with WorkerThread():
        wait_for(lambda: status_of(run) == RunStatus.RUNNING)
        time.sleep(0.28)
        with contextlib.suppress(IllegalTransition):
            run_cancel(run_id=run.pk, user=alice)
        wait_for(lambda: status_of(run) in {RunStatus.COMPLETED, RunStatus.CANCELLED}, timeout=5)
        final = status_of(run)
        time.sleep(0.3)
        assert status_of(run) == final
    stored = Run.objects.get(pk=run.pk)
    assert stored.finished_at is not None


def test_cancel_from_the_admin_action_uses_the_same_service(
    alice: Any, make_run: Any, admin_client: Any
) -> None:
    pending = make_run()
    done = make_run(RunStatus.COMPLETED)
    response = admin_client.post(
        "/admin/runs/run/",
        {"action": "cancel_selected", "_selected_action": [str(pending.pk), str(done.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert status_of(pending) == RunStatus.CANCELLED
    assert status_of(done) == RunStatus.COMPLETED
    assert Run.objects.get(pk=pending.pk).status_reason == "cancelled by admin: from the admin"
    body = response.content.decode()
    assert "Cancelled or asked to cancel 1 run(s)." in body and "is completed" in body


@pytest.mark.tunix
@pytest.mark.slow
def test_it_cancels_a_real_tiny_sft_run(alice: Any) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    from runs.services import run_enqueue

    run = run_enqueue(recipe="tiny_sft", created_by=alice, config={"max_steps": 100000})
    with WorkerThread():
        wait_for(lambda: "step 2 loss" in log_text(run), timeout=120)
        run_cancel(run_id=run.pk, user=alice)
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=20)
    assert Path(run_dir(run.pk)).exists()
    assert os.path.exists(run_dir(run.pk) / "config.json")
