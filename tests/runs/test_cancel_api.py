from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db


def test_it_cancels_a_pending_run_at_once(api: APIClient, make_run: Any) -> None:
    run = make_run()
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel", {"reason": "wrong data"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.status_reason == "cancelled by alice: wrong data"
    assert run.finished_at is not None


def test_it_asks_the_worker_to_stop_a_running_run(api: APIClient, make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancel_requested"
    run.refresh_from_db()
    assert run.status_reason == "cancel requested by alice"
    assert run.cancel_requested_at is not None


@pytest.mark.parametrize("status", [RunStatus.CANCEL_REQUESTED, RunStatus.CANCELLED])
def test_repeating_a_cancel_changes_nothing(api: APIClient, make_run: Any, status: str) -> None:
    run = make_run(status=status, status_reason="cancel requested by bob")
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == status
    assert Run.objects.get(pk=run.pk).status_reason == "cancel requested by bob"


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT])
def test_a_finished_run_cannot_be_cancelled(api: APIClient, make_run: Any, status: str) -> None:
    run = make_run(status=status)
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "illegal_transition"
    assert status in error["message"]
    assert Run.objects.get(pk=run.pk).status == status


def test_cancelling_an_unknown_run_is_404(api: APIClient) -> None:
    assert api.post("/api/tunix/runs/nope/cancel").status_code == 404


def test_a_cancel_reason_is_bounded(api: APIClient, make_run: Any) -> None:
    run = make_run()
    response = api.post(f"/api/tunix/runs/{run.pk}/cancel", {"reason": "x" * 501}, format="json")
    assert response.status_code == 400
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING
