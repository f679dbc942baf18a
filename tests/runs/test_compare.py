"""Comparing runs: the API's series, finals, best values and config differences, its errors,
and the page that shows them (the charts themselves are tested in tests/pages)."""

import math
import uuid
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from runs.models import Run, RunMetric, RunStatus
from runs.selectors import metric_goal

pytestmark = pytest.mark.django_db


def with_metrics(run: Run, steps: int, scale: float, **extra: Any) -> Run:
    RunMetric.objects.bulk_create(
        RunMetric(
            run=run,
            step=step,
            values={"loss": scale / step, "learning_rate": 0.001, **extra},
        )
        for step in range(1, steps + 1)
    )
    return run


@pytest.fixture
def three(make_run: Any) -> list[Run]:
    a = with_metrics(
        make_run(RunStatus.COMPLETED, name="a", config={"max_steps": 20, "learning_rate": 0.1}),
        20,
        1.0,
    )
    b = with_metrics(
        make_run(RunStatus.COMPLETED, name="b", config={"max_steps": 20, "learning_rate": 0.3}),
        20,
        2.0,
    )
    c = with_metrics(
        make_run(
            RunStatus.RUNNING,
            name="",
            config={"max_steps": 20, "learning_rate": 0.1, "seed": 7},
            dataset_key="gsm-v1",
        ),
        5,
        3.0,
    )
    return [a, b, c]


def ids(runs: list[Run]) -> str:
    return ",".join(str(run.pk) for run in runs)


def test_it_returns_each_runs_series_final_values_and_the_best(
    api: APIClient, three: list[Run]
) -> None:
    a, b, c = three
    response = api.get(f"/api/tunix/runs/compare?ids={ids(three)}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["id"] for r in body["runs"]] == [str(a.pk), str(b.pk), str(c.pk)]
    assert [r["title"] for r in body["runs"]] == ["a", "b", str(c.pk)[:8]]
    first = body["runs"][0]
    assert first["series"]["total"] == 20 and first["series"]["last_step"] == 20
    assert first["series"]["points"][0] == {
        "step": 1,
        "values": {"loss": 1.0, "learning_rate": 0.001},
    }
    assert first["final"] == {"loss": 0.05, "learning_rate": 0.001}
    assert body["runs"][2]["final"]["loss"] == pytest.approx(0.6)
    assert body["runs"][2]["status"] == "running"
    metrics = {m["name"]: m for m in body["metrics"]}
    assert [m["name"] for m in body["metrics"]] == ["loss", "learning_rate"]
    assert metrics["loss"] == {"name": "loss", "goal": "min", "best": [str(a.pk)]}
    assert metrics["learning_rate"] == {"name": "learning_rate", "goal": None, "best": []}


def test_only_the_keys_that_differ_are_listed(api: APIClient, three: list[Run]) -> None:
    a, b, c = three
    body = api.get(f"/api/tunix/runs/compare?ids={ids(three)}").json()
    differences = {d["key"]: d["values"] for d in body["differences"]}
    assert set(differences) == {"dataset_key", "config.learning_rate", "config.seed"}
    assert differences["config.learning_rate"] == {str(a.pk): 0.1, str(b.pk): 0.3, str(c.pk): 0.1}
    # A run without the key is left out rather than shown as null.
    assert differences["config.seed"] == {str(c.pk): 7}
    assert differences["dataset_key"] == {str(a.pk): None, str(b.pk): None, str(c.pk): "gsm-v1"}


def test_true_and_one_are_different_settings(api: APIClient, make_run: Any) -> None:
    x = make_run(config={"flag": True})
    y = make_run(config={"flag": 1})
    body = api.get(f"/api/tunix/runs/compare?ids={x.pk},{y.pk}").json()
    assert [d["key"] for d in body["differences"]] == ["config.flag"]


def test_series_are_thinned_like_the_metrics_endpoint(api: APIClient, three: list[Run]) -> None:
    body = api.get(f"/api/tunix/runs/compare?ids={ids(three)}&max_points=4").json()
    series = body["runs"][0]["series"]
    assert series["downsampled"] is True and len(series["points"]) <= 4
    assert series["points"][-1]["step"] == 20
    metrics = api.get(f"/api/tunix/runs/{three[0].pk}/metrics?max_points=4").json()
    assert series["points"] == metrics["points"]


def test_a_diverged_final_value_is_not_a_best(api: APIClient, make_run: Any) -> None:
    good = with_metrics(make_run(name="good"), 3, 2.0)
    bad = with_metrics(make_run(name="bad"), 3, 0.1)
    RunMetric.objects.create(run=bad, step=4, values={"loss": None})
    body = api.get(f"/api/tunix/runs/compare?ids={good.pk},{bad.pk}").json()
    assert body["runs"][1]["final"]["loss"] is None
    assert body["metrics"][0]["best"] == [str(good.pk)]


def test_metrics_read_from_event_files_compare_and_the_metric_line_wins(
    api: APIClient, make_run: Any
) -> None:
    grpo = make_run(name="grpo", recipe="grpo")
    RunMetric.objects.create(run=grpo, step=1, tb_values={"actor/kl": 0.5, "loss": 9.0})
    RunMetric.objects.create(run=grpo, step=2, values={"loss": 1.0}, tb_values={"loss": 7.0})
    other = with_metrics(make_run(name="sft"), 2, 4.0)
    body = api.get(f"/api/tunix/runs/compare?ids={grpo.pk},{other.pk}").json()
    final = body["runs"][0]["final"]
    assert final["actor/kl"] == 0.5
    assert final["loss"] == 1.0


def test_ids_may_repeat_the_parameter_and_duplicates_count_once(
    api: APIClient, three: list[Run]
) -> None:
    a, b, _ = three
    body = api.get(f"/api/tunix/runs/compare?ids={a.pk}&ids={b.pk},{a.pk}").json()
    assert [r["id"] for r in body["runs"]] == [str(a.pk), str(b.pk)]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "Name the runs"),
        ("?ids=", "Name the runs"),
        ("?ids=,,", "Name the runs"),
        ("?ids=nope", "'nope' is not a run id"),
        ("?ids=%00", "is not a run id"),
        ("?ids=%ED%A0%80", "is not a run id"),
        ("?ids=" + ",".join(str(uuid.uuid4()) for _ in range(11)), "At most 10 runs"),
        ("?ids=" + "x" * 5000, "is not a run id"),
    ],
)
def test_bad_ids_are_400_in_the_error_shape(api: APIClient, query: str, fragment: str) -> None:
    response = api.get(f"/api/tunix/runs/compare{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_ids" and fragment in error["message"]
    assert error["fields"]["ids"] == [error["message"]]


def test_unknown_runs_are_404_naming_them(api: APIClient, make_run: Any) -> None:
    known = make_run()
    missing = uuid.uuid4()
    response = api.get(f"/api/tunix/runs/compare?ids={known.pk},{missing}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_runs" and str(missing) in error["message"]
    assert error["fields"] == {"ids": [str(missing)]}


def test_bad_max_points_is_400(api: APIClient, make_run: Any) -> None:
    response = api.get(f"/api/tunix/runs/compare?ids={make_run().pk}&max_points=1")
    assert response.status_code == 400 and "max_points" in response.json()["error"]["fields"]


def test_compare_needs_credentials(anon: APIClient, make_run: Any) -> None:
    assert anon.get(f"/api/tunix/runs/compare?ids={make_run().pk}").status_code == 401


@pytest.mark.parametrize(
    ("name", "goal"),
    [
        ("loss", "min"),
        ("eval/loss", "min"),
        ("train_perplexity", "min"),
        ("accuracy", "max"),
        ("reward_mean", "max"),
        ("learning_rate", None),
        ("grad_norm", None),
        ("accumulation_steps", None),
    ],
)
def test_which_way_a_metric_is_better_follows_a_word_in_its_name(
    name: str, goal: str | None
) -> None:
    assert metric_goal(name) == goal


# -- the page -------------------------------------------------------------------------------------


@pytest.fixture
def signed_in(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


def test_the_page_shows_the_differences_and_the_final_metrics_with_the_best_marked(
    signed_in: Client, three: list[Run]
) -> None:
    a = three[0]
    response = signed_in.get(f"/runs/compare/?ids={ids(three)}")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('data-testid="compare-series"') == 3
    for run in three:
        assert f'data-run-id="{run.pk}"' in html
    assert 'data-key="config.learning_rate"' in html and 'data-key="config.max_steps"' not in html
    assert 'data-key="config.seed"' in html and "not set" in html
    best = f'<td data-run-id="{a.pk}" class="best" data-best="true">0.05 <span class="best-mark">'
    assert best in html
    assert html.count('data-best="true"') == 1
    assert 'id="compare-page-config"' in html


def test_the_run_lists_checkboxes_lead_to_the_page_with_the_ids_in_its_address(
    signed_in: Client, three: list[Run]
) -> None:
    a, _, c = three
    listing = signed_in.get("/runs/").content.decode()
    assert listing.count('data-testid="compare-pick"') == 3
    response = signed_in.get(f"/runs/compare/?ids={a.pk}&ids={c.pk}")
    assert response.status_code == 302
    assert response["Location"] == f"/runs/compare/?ids={a.pk},{c.pk}"


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    [
        ("", 400, "Name the runs"),
        ("?ids=nope", 400, "is not a run id"),
        ("?ids=" + ",".join(str(uuid.uuid4()) for _ in range(11)), 400, "At most 10"),
        (f"?ids={uuid.uuid4()}", 404, "No such run"),
    ],
)
def test_the_page_explains_bad_ids(
    signed_in: Client, query: str, status: int, fragment: str
) -> None:
    response = signed_in.get(f"/runs/compare/{query}")
    assert response.status_code == status
    html = response.content.decode()
    assert 'data-testid="compare-error"' in html and fragment in html
    assert "compare.mjs" not in html


def test_the_final_panel_is_the_same_table_and_refuses_bad_ids(
    signed_in: Client, three: list[Run]
) -> None:
    response = signed_in.get(f"/runs/compare/final/?ids={ids(three)}")
    assert response.status_code == 200
    assert 'data-testid="final-metrics"' in response.content.decode()
    assert signed_in.get("/runs/compare/final/?ids=x").status_code == 400
    assert signed_in.get(f"/runs/compare/final/?ids={uuid.uuid4()}").status_code == 404


def test_runs_without_metrics_compare_without_charts_or_finals(
    signed_in: Client, api: APIClient, make_run: Any
) -> None:
    x, y = make_run(), make_run()
    body = api.get(f"/api/tunix/runs/compare?ids={x.pk},{y.pk}").json()
    assert body["metrics"] == [] and body["differences"] == []
    html = signed_in.get(f"/runs/compare/?ids={x.pk},{y.pk}").content.decode()
    assert 'data-testid="final-metrics-none"' in html
    assert 'data-testid="config-diff-none"' in html


def test_final_values_are_finite_or_null_never_nan(api: APIClient, make_run: Any) -> None:
    run = with_metrics(make_run(), 2, 1.0, grad_norm=None)
    final = api.get(f"/api/tunix/runs/compare?ids={run.pk}").json()["runs"][0]["final"]
    assert final["grad_norm"] is None
    assert all(v is None or math.isfinite(v) for v in final.values())
