"""A NUL or an unpaired surrogate in any string of a request is a 400 naming the field (or, in a
path, a 404), never a 500: PostgreSQL stores neither in text or jsonb."""

import json
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from rest_framework.test import APIClient

from runs.forms import RunForm
from runs.models import Run
from runs.recipes import ConfigKey, get_recipe
from tests.traces.helpers import make_traces, trace_doc
from traces.models import Dataset, Trace
from traces.services import dataset_build

pytestmark = pytest.mark.django_db

BAD = ["nul\x00here", "half \ud800 pair", "\udfff"]


def post(api: APIClient, path: str, body: Any) -> Any:
    # json.dumps escapes them (\u0000, \ud800) as any client would send them.
    return api.post(path, json.dumps(body), content_type="application/json")


def assert_names(response: Any, field: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"], error["fields"]
    assert "NUL" in " ".join(error["fields"][field])


def run_body(**changes: Any) -> dict[str, Any]:
    return {"recipe": "child", "config": {"lines": 1}, **changes}


RUN_FIELDS = [
    ("recipe", lambda bad: run_body(recipe=bad)),
    ("name", lambda bad: run_body(name=bad)),
    ("model_id", lambda bad: run_body(model_id=bad)),
    ("dataset_key", lambda bad: run_body(dataset_key=bad)),
    ("config.partial", lambda bad: run_body(config={"partial": bad})),
    ("config", lambda bad: run_body(config={bad: 1})),
]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(("field", "body"), RUN_FIELDS, ids=[f for f, _ in RUN_FIELDS])
@pytest.mark.parametrize("mode", ["async", "dry-run"])
def test_a_run_with_a_bad_string_is_refused_naming_the_field(
    api: APIClient, child_recipes: Any, field: str, body: Any, bad: str, mode: str
) -> None:
    assert_names(post(api, f"/api/tunix/run?mode={mode}", body(bad)), field)
    assert not Run.objects.exists()


@pytest.mark.parametrize("bad", BAD)
def test_a_cancel_reason_with_a_bad_string_is_refused(
    api: APIClient, make_run: Any, bad: str
) -> None:
    run = make_run()
    assert_names(post(api, f"/api/tunix/runs/{run.pk}/cancel", {"reason": bad}), "reason")
    assert Run.objects.get(pk=run.pk).status == "pending"


TRACE_FIELDS = [
    ("prompt", lambda bad: trace_doc(prompt=bad)),
    ("final_answer", lambda bad: trace_doc(final_answer=bad)),
    ("steps.0.type", lambda bad: trace_doc(steps=[{"i": 0, "type": bad, "content": "c"}])),
    ("steps.0.content", lambda bad: trace_doc(steps=[{"i": 0, "type": "t", "content": bad}])),
    ("meta.source", lambda bad: trace_doc(meta={"source": bad})),
    ("meta.tags.0", lambda bad: trace_doc(meta={"tags": [bad]})),
    ("meta", lambda bad: trace_doc(meta={bad: 1})),
]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(("field", "doc"), TRACE_FIELDS, ids=[f for f, _ in TRACE_FIELDS])
def test_a_trace_with_a_bad_string_is_refused_naming_the_field(
    api: APIClient, field: str, doc: Any, bad: str
) -> None:
    assert_names(post(api, "/api/traces", doc(bad)), field)
    assert_names(
        post(api, "/api/traces/batch", {"traces": [trace_doc(), doc(bad)]}), f"traces.1.{field}"
    )
    assert not Trace.objects.exists()


DATASET_FIELDS = [
    ("name", {"name": "x\x00", "version": "v1"}),
    ("version", {"name": "x", "version": "v\ud800"}),
    ("filters.source", {"name": "x", "version": "v1", "filters": {"source": "a\x00"}}),
    ("filters.source", {"name": "x", "version": "v1", "filters": {"source": ["ok", "\udfff"]}}),
    ("filters.k\x00", {"name": "x", "version": "v1", "filters": {"k\x00": "v"}}),
]


@pytest.mark.parametrize(("field", "body"), DATASET_FIELDS)
def test_a_dataset_build_with_a_bad_string_is_refused_naming_the_field(
    api: APIClient, field: str, body: dict[str, Any]
) -> None:
    make_traces(1)
    response = post(api, "/api/datasets/build", body)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not Dataset.objects.exists()


QUERIES = [
    ("/api/tunix/runs?status={}", "status"),
    ("/api/tunix/runs?recipe={}", "recipe"),
    ("/api/tunix/runs?dataset_key={}", "dataset_key"),
    ("/api/tunix/runs?created_by={}", "created_by"),
    ("/api/traces?meta=source%3D{}", "meta.0"),
    ("/api/traces?meta={}%3Dx", "meta.0"),
    ("/api/tunix/runs/{run}/logs?lastEventId={}", "lastEventId"),
    ("/api/tunix/runs/{run}/logs/snapshot?lines={}", "lines"),
    ("/api/tunix/runs/{run}/metrics?since_step={}", "since_step"),
    ("/api/datasets/{key}/export.jsonl?format={}", "format"),
]


@pytest.mark.parametrize(("template", "field"), QUERIES)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(
    api: APIClient, make_run: Any, template: str, field: str
) -> None:
    run = make_run()
    make_traces(1)
    dataset = dataset_build(name="d", version="v1", created_by=None, limit=1)
    url = template.replace("{run}", str(run.pk)).replace("{key}", dataset.key)
    response = api.get(url.format(quote("a\x00b")))
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/datasets/{}",
        "/api/datasets/{}/export.jsonl",
        "/api/traces/{}",
        "/api/tunix/runs/{}",
        "/api/tunix/runs/{}/status",
        "/api/tunix/runs/{run}/artifacts/{}/download",
        "/api/tunix/runs/{run}/checkpoints/{}/download",
    ],
)
def test_a_nul_in_a_path_is_a_404(api: APIClient, make_run: Any, path: str) -> None:
    run = make_run()
    response = api.get(path.replace("{run}", str(run.pk)).format(quote("a\x00b")))
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("field", ["name", "model_id", "dataset_key", "config.partial"])
def test_the_run_form_refuses_a_nul_in_place(alice: Any, child_recipes: Any, field: str) -> None:
    client = Client()
    client.force_login(alice)
    response = client.post("/runs/new/", {"recipe": "child", field: "nul\x00"})
    assert response.status_code == 400
    assert "NUL characters" in response.content.decode()
    assert not Run.objects.exists()


@pytest.mark.parametrize("field", ["name", "model_id", "dataset_key", "config.partial"])
def test_the_run_form_refuses_a_lone_surrogate(child_recipes: Any, field: str) -> None:
    # A browser cannot send one (a form encodes it as U+FFFD); the form checks its data the
    # same way whoever builds it.
    recipe = get_recipe("child")
    assert recipe is not None
    form = RunForm({"recipe": "child", field: "x\ud800"}, recipe=recipe)
    assert not form.is_valid()
    assert "NUL characters or unpaired surrogates" in " ".join(str(e) for e in form.errors[field])


@pytest.mark.parametrize("bad", BAD)
def test_a_recipe_refuses_a_bad_string_config_value(child_recipes: Any, bad: str) -> None:
    recipe = get_recipe("child")
    assert recipe is not None
    spec: ConfigKey = recipe.keys["partial"]
    with pytest.raises(ValueError, match="must not contain NUL"):
        spec.clean(bad)
    assert spec.clean("fine") == "fine"
