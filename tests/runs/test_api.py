import json
import sys
import uuid
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db


def post_run(api: APIClient, body: Any, mode: str | None = None, **query: Any) -> Any:
    params = {**({"mode": mode} if mode else {}), **query}
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    return api.post(f"/api/tunix/run{'?' + qs if qs else ''}", body, format="json")


def test_it_enqueues_a_run_and_answers_202_with_links(api: APIClient, alice: Any) -> None:
    response = post_run(api, {"recipe": "tiny_sft", "config": {"max_steps": 5}, "name": "first"})
    assert response.status_code == 202
    body = response.json()
    run = Run.objects.get(pk=body["run_id"])
    assert body["status"] == "pending"
    assert body["links"] == {
        "self": f"/api/tunix/runs/{run.pk}",
        "status": f"/api/tunix/runs/{run.pk}/status",
        "logs": f"/api/tunix/runs/{run.pk}/logs",
        "artifacts": f"/api/tunix/runs/{run.pk}/artifacts",
        "cancel": f"/api/tunix/runs/{run.pk}/cancel",
    }
    assert run.created_by == alice
    assert run.name == "first"
    # Defaults of the recipe are filled in so the run records exactly what it trains with.
    assert run.config["max_steps"] == 5 and run.config["batch_size"] == 8
    assert run.model_id == "tiny-qwen3-random"


def test_async_is_the_default_mode(api: APIClient) -> None:
    assert post_run(api, {"recipe": "tiny_sft"}, mode="async").status_code == 202
    assert post_run(api, {"recipe": "tiny_sft"}).status_code == 202
    assert Run.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"recipe": "nope"}, "recipe", "unknown recipe"),
        ({}, "recipe", "required"),
        ({"recipe": "tiny_sft", "config": {"max_stepz": 3}}, "config.max_stepz", "unknown key"),
        ({"recipe": "tiny_sft", "config": {"max_steps": "ten"}}, "config.max_steps", "type int"),
        ({"recipe": "tiny_sft", "config": {"max_steps": 2.5}}, "config.max_steps", "type int"),
        ({"recipe": "tiny_sft", "config": {"max_steps": True}}, "config.max_steps", "type int"),
        ({"recipe": "tiny_sft", "config": {"max_steps": 0}}, "config.max_steps", ">= 1"),
        (
            {"recipe": "tiny_sft", "config": {"max_steps": 1_000_001}},
            "config.max_steps",
            "<= 1e+06",
        ),
        ({"recipe": "tiny_sft", "config": {"learning_rate": 5}}, "config.learning_rate", "<= 1"),
        ({"recipe": "tiny_sft", "config": []}, "config", "dictionary"),
        ({"recipe": "tiny_sft", "priority": 5000}, "priority", "less than or equal"),
        ({"recipe": "tiny_sft", "max_attempts": 0}, "max_attempts", "greater than or equal"),
        ({"recipe": "tiny_sft", "timeout_seconds": "soon"}, "timeout_seconds", "valid integer"),
        ({"recipe": "tiny_sft", "command": "rm -rf /"}, "command", "Unknown field"),
        ({"recipe": "tiny_sft", "env": {"A": "b"}}, "env", "Unknown field"),
    ],
)
def test_it_rejects_bad_input_with_a_field_error(
    api: APIClient, body: Any, field: str, fragment: str
) -> None:
    response = post_run(api, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert fragment in " ".join(error["fields"][field])
    assert Run.objects.count() == 0


def test_it_rejects_a_body_that_is_not_json(api: APIClient) -> None:
    response = api.post("/api/tunix/run", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_it_refuses_a_body_over_256_kb_with_413(api: APIClient) -> None:
    body = json.dumps({"recipe": "tiny_sft", "name": "x" * (300 * 1024)})
    response = api.post("/api/tunix/run", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert Run.objects.count() == 0


def test_it_rejects_an_unknown_mode(api: APIClient) -> None:
    response = post_run(api, {"recipe": "tiny_sft"}, mode="later")
    assert response.status_code == 400
    assert "mode" in response.json()["error"]["fields"]


def test_dry_run_shows_the_command_and_stores_nothing(api: APIClient) -> None:
    response = post_run(api, {"recipe": "tiny_sft", "config": {"max_steps": 7}}, mode="dry-run")
    assert response.status_code == 200
    body = response.json()
    assert body["argv"] == [
        "python",
        "-m",
        "runs.entrypoints.tiny_sft",
        "--config",
        "$RUN_DIR/config.json",
        "--run-dir",
        "$RUN_DIR",
    ]
    assert body["config"]["max_steps"] == 7
    assert json.loads(body["config_file"]) == body["config"]
    assert body["env"]["JAX_PLATFORMS"] == "cpu"
    assert Run.objects.count() == 0


def test_dry_run_of_the_cli_recipe_appends_overrides(api: APIClient) -> None:
    body = {"recipe": "peft", "config": {"training_config.max_steps": 3}}
    argv = post_run(api, body, mode="dry-run").json()["argv"]
    assert "training_config.max_steps=3" in argv
    assert "training_config.checkpoint_root_directory=$RUN_DIR/checkpoints" in argv


def test_dry_run_shows_placeholders_and_never_a_server_path(
    api: APIClient, settings: Any, tmp_path: Path, artifact_root: Path
) -> None:
    project = str(settings.BASE_DIR)
    recipes = tmp_path / "recipes.toml"
    # An operator's recipe that spells server paths out, beside the {project_dir} placeholder.
    recipes.write_text(
        "[recipes.local]\n"
        f'argv = ["{{python}}", "{{project_dir}}/train.py", "--cache", "{artifact_root}/cache",'
        f' "--venv", "{sys.prefix}", "--py", "{sys.executable}"]\n'
        f'env = {{ PYTHONPATH = "{project}/lib", HF_HOME = "{artifact_root}/hf" }}\n'
    )
    settings.TUNIX_RECIPES_FILE = str(recipes)
    response = post_run(api, {"recipe": "local"}, mode="dry-run")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["argv"] == [
        "python",
        "$PROJECT_DIR/train.py",
        "--cache",
        "$TUNIX_ARTIFACT_ROOT/cache",
        "--venv",
        "$PYTHON_PREFIX",
        "--py",
        "python",
    ]
    assert body["env"] == {
        "PYTHON_DOTENV_DISABLED": "1",
        "PYTHONPATH": "$PROJECT_DIR/lib",
        "HF_HOME": "$TUNIX_ARTIFACT_ROOT/hf",
    }
    text = response.content.decode()
    for path in (project, str(artifact_root), sys.executable, sys.prefix):
        assert path not in text


def test_sync_mode_answers_202_with_the_current_state_when_the_wait_runs_out(
    api: APIClient,
) -> None:
    response = post_run(api, {"recipe": "tiny_sft"}, mode="sync", wait_seconds=0.2)
    assert response.status_code == 202
    assert response.json()["status"] == "pending"


def test_sync_mode_bounds_the_wait(api: APIClient) -> None:
    response = post_run(api, {"recipe": "tiny_sft"}, mode="sync", wait_seconds=301)
    assert response.status_code == 400
    assert "wait_seconds" in response.json()["error"]["fields"]


def test_sync_mode_answers_200_with_a_terminal_run(api: APIClient, make_run: Any) -> None:
    # The wait itself is exercised against a real worker in the worker tests; here the run is
    # already finished by the time the view looks, which is the 200 branch.
    from runs import services

    run = make_run(status=RunStatus.COMPLETED)
    assert services.run_wait(run_id=run.pk, timeout=5).status == RunStatus.COMPLETED


def test_it_lists_runs_newest_first_with_filters(api: APIClient, make_run: Any, bob: Any) -> None:
    old = make_run(name="old", status=RunStatus.COMPLETED)
    new = make_run(name="new", dataset_key="ds-1")
    mine = make_run(name="bobs", created_by=bob, recipe="peft")
    body = api.get("/api/tunix/runs").json()
    assert [r["name"] for r in body["results"]] == ["bobs", "new", "old"]
    assert body["count"] == 3
    assert [r["id"] for r in api.get("/api/tunix/runs?status=completed").json()["results"]] == [
        str(old.pk)
    ]
    assert [r["id"] for r in api.get("/api/tunix/runs?dataset_key=ds-1").json()["results"]] == [
        str(new.pk)
    ]
    assert [r["id"] for r in api.get("/api/tunix/runs?created_by=bob").json()["results"]] == [
        str(mine.pk)
    ]
    assert [r["id"] for r in api.get("/api/tunix/runs?recipe=peft").json()["results"]] == [
        str(mine.pk)
    ]


def test_it_rejects_an_unknown_status_filter(api: APIClient) -> None:
    response = api.get("/api/tunix/runs?status=sleeping")
    assert response.status_code == 400
    assert "status" in response.json()["error"]["fields"]


def test_it_pages_at_most_100_runs(api: APIClient, make_run: Any) -> None:
    for _ in range(105):
        make_run()
    body = api.get("/api/tunix/runs?page_size=500").json()
    assert len(body["results"]) == 100 and body["next"] is not None
    assert len(api.get("/api/tunix/runs").json()["results"]) == 50
    assert api.get("/api/tunix/runs?page=99").status_code == 404


def test_it_reads_a_run_and_its_status(api: APIClient, make_run: Any) -> None:
    run = make_run(name="r")
    detail = api.get(f"/api/tunix/runs/{run.pk}").json()
    assert detail["id"] == str(run.pk) and detail["created_by"] == "alice"
    status = api.get(f"/api/tunix/runs/{run.pk}/status").json()
    assert set(status) == {
        "run_id",
        "status",
        "status_reason",
        "queued_at",
        "started_at",
        "finished_at",
        "exit_code",
        "attempt",
    }
    assert status["status"] == "pending"


@pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
@pytest.mark.parametrize("suffix", ["", "/status"])
def test_unknown_or_malformed_run_ids_are_404_json(
    api: APIClient, run_id: str, suffix: str
) -> None:
    response = api.get(f"/api/tunix/runs/{run_id}{suffix}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/tunix/runs"),
        ("post", "/api/tunix/run"),
        ("get", f"/api/tunix/runs/{uuid.uuid4()}"),
        ("get", "/api/schema/"),
    ],
)
def test_the_api_needs_credentials(anon: APIClient, method: str, path: str) -> None:
    response = getattr(anon, method)(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_bad_token_is_refused(anon: APIClient) -> None:
    anon.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert anon.get("/api/tunix/runs").status_code == 401


def test_session_authentication_works_for_the_browser(alice: Any, make_run: Any) -> None:
    client = APIClient()
    # Through the login form, as a browser does (axes needs the request to count failures).
    login = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert login.status_code == 302
    assert client.get("/api/tunix/runs").status_code == 200


def test_drf_create_token_gives_a_working_token(alice: Any) -> None:
    out = StringIO()
    call_command("drf_create_token", "alice", stdout=out)
    key = Token.objects.get(user=alice).key
    assert key in out.getvalue()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/tunix/runs").status_code == 200


def test_health_endpoints_need_no_login(anon: APIClient) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"


def test_the_openapi_schema_describes_the_run_api(api: APIClient) -> None:
    response = api.get("/api/schema/")
    assert response.status_code == 200
    schema = response.json()
    assert "/api/tunix/run" in schema["paths"]
    assert "/api/tunix/runs/{run_id}/cancel" in schema["paths"]
    create = schema["paths"]["/api/tunix/run"]["post"]
    assert {"202", "400", "413"} <= set(create["responses"])


def test_the_schema_documents_refusals_and_rates_on_every_operation(api: APIClient) -> None:
    paths = api.get("/api/schema/").json()["paths"]
    operations = {
        op["operationId"]: op["responses"]
        for item in paths.values()
        for method, op in item.items()
        if method in ("get", "post")
    }
    assert len(operations) >= 17
    for name, responses in operations.items():
        assert {"401", "429"} <= set(responses), name
    for name in ("run_create", "run_cancel", "trace_create", "trace_batch_create", "dataset_build"):
        assert "403" in operations[name], name
