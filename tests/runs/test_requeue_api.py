from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db


def requeue(api: APIClient, run: Any, body: Any = None) -> Any:
    return api.post(f"/api/tunix/runs/{run.pk}/requeue", body, format="json")


def test_a_finished_run_is_run_again_as_a_new_pending_run_linked_to_it(
    api: APIClient, make_run: Any, alice: Any
) -> None:
    original = make_run(status=RunStatus.FAILED, name="nightly", config={"max_steps": 7})
    response = requeue(api, original)
    assert response.status_code == 202
    body = response.json()
    copy = Run.objects.get(pk=body["run_id"])
    assert body["status"] == "pending"
    assert body["links"]["self"] == f"/api/tunix/runs/{copy.pk}"
    assert copy.requeued_from_id == original.pk
    assert copy.name == "nightly" and copy.config["max_steps"] == 7
    assert copy.created_by == alice


def test_an_empty_object_body_is_accepted_and_unknown_keys_are_refused(
    api: APIClient, make_run: Any
) -> None:
    original = make_run(status=RunStatus.COMPLETED)
    assert requeue(api, original, {}).status_code == 202
    refused = requeue(api, original, {"config": {"max_steps": 1}})
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"config": ["Unknown field."]}
    assert Run.objects.count() == 2


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.RUNNING])
def test_a_run_not_yet_finished_answers_409(api: APIClient, make_run: Any, status: str) -> None:
    original = make_run(status=status)
    response = requeue(api, original)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "illegal_transition"
    assert Run.objects.count() == 1


def test_an_unknown_or_malformed_run_answers_404(api: APIClient) -> None:
    for run_id in ("0" * 8 + "-0000-0000-0000-" + "0" * 12, "not-a-uuid"):
        response = api.post(f"/api/tunix/runs/{run_id}/requeue")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_recipe_tightened_since_refuses_the_copy_with_the_field_named(
    api: APIClient, make_run: Any
) -> None:
    original = make_run(status=RunStatus.COMPLETED, config={"max_steps": 10**9})
    response = requeue(api, original)
    assert response.status_code == 400
    assert "config.max_steps" in response.json()["error"]["fields"]


def test_anonymous_requests_are_refused(anon: APIClient, make_run: Any) -> None:
    original = make_run(status=RunStatus.COMPLETED)
    assert anon.post(f"/api/tunix/runs/{original.pk}/requeue").status_code == 401
