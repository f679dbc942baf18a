"""GET /api/tunix/runs/{id}/metrics: the series, increments, downsampling and errors."""

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run, RunMetric, RunStatus

pytestmark = pytest.mark.django_db


def add_steps(run: Run, steps: range) -> None:
    RunMetric.objects.bulk_create(
        RunMetric(run=run, step=s, values={"loss": 1.0 / s, "learning_rate": 0.01}) for s in steps
    )


def url(run_id: Any) -> str:
    return f"/api/tunix/runs/{run_id}/metrics"


def test_a_run_without_metrics_has_an_empty_series(api: APIClient, make_run: Any) -> None:
    run = make_run(RunStatus.RUNNING)
    assert api.get(url(run.pk)).json() == {
        "run_id": str(run.pk),
        "status": "running",
        "names": [],
        "points": [],
        "total": 0,
        "downsampled": False,
        "last_step": None,
    }


def test_a_long_series_is_thinned_evenly_and_keeps_the_last_point(
    api: APIClient, make_run: Any
) -> None:
    run = make_run(RunStatus.RUNNING)
    add_steps(run, range(1, 2501))
    body = api.get(url(run.pk)).json()
    steps = [p["step"] for p in body["points"]]
    assert body["total"] == 2500 and body["downsampled"] is True
    assert len(steps) <= 1000 and steps[-1] == 2500 == body["last_step"]
    assert steps == list(range(2500 % 3 or 3, 2501, 3))  # every third, counted from the last
    small = api.get(url(run.pk), {"max_points": 10}).json()
    assert [p["step"] for p in small["points"]] == list(range(250, 2501, 250))


def test_since_step_returns_only_newer_points(api: APIClient, make_run: Any) -> None:
    run = make_run(RunStatus.RUNNING)
    add_steps(run, range(1, 21))
    body = api.get(url(run.pk), {"since_step": 17}).json()
    assert [p["step"] for p in body["points"]] == [18, 19, 20]
    assert body["points"][0]["values"] == {"loss": pytest.approx(1 / 18), "learning_rate": 0.01}
    assert (body["total"], body["last_step"]) == (3, 20)
    assert api.get(url(run.pk), {"since_step": 20}).json()["points"] == []


def test_other_runs_points_are_not_included(api: APIClient, make_run: Any) -> None:
    run, other = make_run(RunStatus.RUNNING), make_run(RunStatus.RUNNING)
    add_steps(other, range(1, 4))
    assert api.get(url(run.pk)).json()["total"] == 0


@pytest.mark.parametrize("run_id", [uuid.uuid4(), "not-a-uuid"])
def test_an_unknown_run_is_a_404_in_the_api_error_shape(api: APIClient, run_id: Any) -> None:
    response = api.get(url(run_id))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since_step": "-1"}, "since_step"),
        ({"since_step": "abc"}, "since_step"),
        ({"since_step": "3000000000"}, "since_step"),
        ({"max_points": "1"}, "max_points"),
        ({"max_points": "10001"}, "max_points"),
        ({"max_points": ""}, "max_points"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_field(
    api: APIClient, make_run: Any, params: dict[str, str], field: str
) -> None:
    response = api.get(url(make_run().pk), params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]


def test_it_needs_a_user(anon: APIClient, make_run: Any) -> None:
    response = anon.get(url(make_run().pk))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_the_schema_describes_the_metrics_operation(api: APIClient) -> None:
    schema = api.get("/api/schema/").json()
    operation = schema["paths"]["/api/tunix/runs/{run_id}/metrics"]["get"]
    assert operation["operationId"] == "run_metrics"
    assert {p["name"] for p in operation["parameters"]} >= {"run_id", "since_step", "max_points"}
    assert {"200", "400", "404"} <= set(operation["responses"])
