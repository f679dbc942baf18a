"""Schemathesis against the live OpenAPI schema: no 5xx, and every response is what it documents.

A real daphne server shares the test database; the schema is read from its own `/api/schema/`
with a valid token, so what is fuzzed is exactly what a client downloads. Runs in every state
(one with log lines, metrics and a checkpoint), a trace, a dataset and a registered artifact
exist, and hooks swap some generated path parameters for their ids, so that the fuzzer reaches
found objects and not only 404s.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Permission, User
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from rest_framework.authtoken.models import Token
from schemathesis import Case, HookContext
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok

from artifacts.services import artifacts_sync
from runs.models import LogChunk, Run, RunMetric, RunStatus
from runs.services import run_dir, run_enqueue
from runs.state_machine import transition
from tests.sse.conftest import Server, daphne
from traces.services import dataset_build, trace_create
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db(transaction=True)

RUN_CREATE = "POST /api/tunix/run"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# Fixed seed, derandomized Hypothesis and no example database: CI runs the same cases each time.
# No shrinking: a failure is reported as found, which keeps a failing run within its time budget.
CONFIG = {
    "seed": 20260410,
    "generation": {
        "max-examples": 30,
        "deterministic": True,
        "no-shrink": True,
        "database": "none",
    },
}


def _committed_checkpoint(run: Run, step: int) -> None:
    step_dir = run_dir(run.pk) / str(step)
    (step_dir / "state").mkdir(parents=True)
    (step_dir / "state" / "array.bin").write_bytes(b"\x00\x01" * 512)
    # Orbax writes this file last; without it the step is still in flight and not listed.
    (step_dir / "commit_success.txt").write_text("ok")


@pytest.fixture(autouse=True)
def node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32.5 reads and writes `Node._nodeid` to name each operation's subtest;
    # pytest 9.2 keeps node ids elsewhere, so give it the attribute it expects.
    request.node._nodeid = request.node.nodeid


@pytest.fixture
def objects(alice: User, child_recipes: Path, settings: Any) -> dict[str, list[dict[str, str]]]:
    """Real rows and files in several states; returns path parameter sets that find them."""
    runs = {status: run_enqueue(recipe="child", created_by=alice) for status in RunStatus}
    for status, run in runs.items():
        if status == RunStatus.PENDING:
            continue
        if status != RunStatus.CANCELLED:
            transition(run.pk, RunStatus.RUNNING)
        if status == RunStatus.CANCEL_REQUESTED:
            transition(run.pk, RunStatus.CANCEL_REQUESTED)
        elif status != RunStatus.RUNNING:
            transition(run.pk, status)
    done = runs[RunStatus.COMPLETED]
    LogChunk.objects.bulk_create(
        LogChunk(run=done, seq=seq, stream=stream, chunk=f"{stream} line {seq}\n")
        for seq, stream in enumerate(["stdout", "stderr", "stdout"], 1)
    )
    # A null value is what the recipe's non-finite numbers become.
    RunMetric.objects.bulk_create(
        RunMetric(run=done, step=step, values={"loss": 1 / step, "perplexity": None})
        for step in range(1, 6)
    )
    run_dir(done.pk).mkdir(parents=True)
    (run_dir(done.pk) / "metrics.json").write_text(json.dumps({"loss": 0.5}))
    _committed_checkpoint(done, 10)
    artifacts_sync(run_id=done.pk)
    artifact = done.artifacts.get(name="metrics.json")
    trace = trace_create(
        trace={
            "trace_version": 1,
            "prompt": "2+2?",
            "steps": [{"i": 0, "type": "think", "content": "add"}],
            "final_answer": "4",
            "meta": {"source": "schemathesis"},
        },
        created_by=alice,
    )
    dataset = dataset_build(name="fuzz", version="v1", created_by=alice, limit=10)
    # Alice may manage webhooks here, so their operations are fuzzed past the permission check.
    settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE = True
    alice.user_permissions.add(*Permission.objects.filter(content_type__app_label="webhooks"))
    hook = webhook_create(
        created_by=User.objects.get(pk=alice.pk),
        name="fuzz",
        url="http://127.0.0.1:9/hook",
        events=["run.failed", "metric.threshold"],
        thresholds=["loss < 0.5"],
    )
    # Most specific first: an operation that takes `artifact_id` takes `run_id` too.
    return {
        "artifact_id": [{"run_id": str(done.pk), "artifact_id": str(artifact.pk)}],
        "step": [{"run_id": str(done.pk), "step": "10"}],
        "run_id": [{"run_id": str(run.pk)} for run in runs.values()],
        "trace_id": [{"trace_id": str(trace.pk)}],
        "key": [{"key": dataset.key}],
        "webhook_id": [{"webhook_id": str(hook.pk)}],
    }


@pytest.fixture
def server(artifact_root: Path, child_recipes: Path, tmp_path: Path) -> Iterator[Server]:
    with daphne(
        tmp_path,
        TUNIX_ARTIFACT_ROOT=str(artifact_root),
        TUNIX_RECIPES_FILE=str(child_recipes),
        # Fuzzed webhook URLs are checked without DNS (tests/webhooks covers the address guard).
        TUNIX_WEBHOOKS_ALLOW_PRIVATE="true",
    ) as running:
        yield running


@pytest.fixture
def headers(alice: User) -> dict[str, str]:
    return {"Authorization": f"Token {Token.objects.create(user=alice).key}"}


@pytest.fixture
def api_schema(
    server: Server, headers: dict[str, str], objects: dict[str, list[dict[str, str]]]
) -> schemathesis.BaseSchema:
    return load_schema(server, headers, objects)


def load_schema(
    server: Server, headers: dict[str, str], objects: dict[str, list[dict[str, str]]]
) -> schemathesis.BaseSchema:
    config = SchemathesisConfig.from_dict({**CONFIG, "headers": headers})
    schema = schemathesis.openapi.from_url(
        f"{server.url}/api/schema/", config=config, headers=headers, timeout=10
    )
    schema.config.update(base_url=server.url)

    @schema.hook
    def flatmap_path_parameters(
        context: HookContext, path_parameters: dict[str, Any] | None
    ) -> SearchStrategy[dict[str, Any] | None]:
        if not path_parameters:
            return st.just(path_parameters)
        # Schemathesis never puts a NUL in a path parameter, yet Django hands one to the view
        # and PostgreSQL refuses it in any text comparison: try each with one.
        with_nul = {name: f"{value}\x00" for name, value in path_parameters.items()}
        name = next(name for name in objects if name in path_parameters)
        found = [{**path_parameters, **ids} for ids in objects[name]]
        return st.one_of(st.just(path_parameters), st.sampled_from(found), st.just(with_nul))

    @schema.hook
    def flatmap_body(context: HookContext, body: Any) -> SearchStrategy[Any]:
        # A fuzzed recipe name never exists, nor does a fuzzed config suit one: also send the
        # test recipe with its defaults, so that runs are really enqueued, dry-run and waited for.
        if context.operation is None or context.operation.label != RUN_CREATE:
            return st.just(body)
        if not isinstance(body, dict):
            return st.just(body)
        valid = {**body, "recipe": "child", "config": {}, "dataset_key": None}
        return st.one_of(st.just(body), st.just(valid))

    @schema.hook
    def flatmap_query(
        context: HookContext, query: dict[str, Any] | None
    ) -> SearchStrategy[dict[str, Any] | None]:
        if context.operation is None or context.operation.label != RUN_CREATE:
            return st.just(query)
        # No worker runs here, so `mode=sync` waits all of `wait_seconds` (default 30, at most
        # 300) before it answers: cap it, whatever form the fuzzer gave it.
        if query and query.get("mode") == "sync":
            try:
                wait = float(query.get("wait_seconds", 30))
            except (TypeError, ValueError):
                wait = 0
            if wait > 1:
                query = {**query, "wait_seconds": 1}
        # Each mode also with the valid body above, which fuzzing alone rarely pairs them with.
        modes = [{"mode": mode, "wait_seconds": 0.5} for mode in ("async", "sync", "dry-run")]
        return st.one_of(st.just(query), st.sampled_from(modes))

    return schema


# The live log stream is an endless text/event-stream: a request would only end at a terminal
# status or the client's timeout. tests/sse covers it over real HTTP. (Filters belong here: the
# lazy schema replaces those of the schema its fixture returns.)
schema = schemathesis.pytest.from_fixture("api_schema").exclude(
    method="GET", path="/api/tunix/runs/{run_id}/logs"
)


@schema.parametrize()
@pytest.mark.slow
def test_every_operation_answers_as_its_schema_documents(case: Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS, timeout=30)


@pytest.mark.parametrize(
    ("mode", "worker", "status"),
    [("async", False, 202), ("dry-run", False, 200), ("sync", False, 202), ("sync", True, 200)],
)
def test_run_create_answers_as_documented_in_each_mode(
    api_schema: schemathesis.BaseSchema,
    headers: dict[str, str],
    spawn_worker: Any,
    mode: str,
    worker: bool,
    status: int,
) -> None:
    # The fuzzer reaches these only by chance: each mode answers its own shape, and a sync
    # wait answers 200 only once a real worker has finished the run.
    if worker:
        spawn_worker("--poll-interval", "0.1")
    case = api_schema["/api/tunix/run"]["POST"].Case(
        query={"mode": mode, "wait_seconds": 30 if worker else 0.2}, body={"recipe": "child"}
    )
    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)
    assert response.status_code == status


def test_every_json_body_over_its_limit_answers_a_documented_413(
    artifact_root: Path,
    child_recipes: Path,
    tmp_path: Path,
    headers: dict[str, str],
    objects: dict[str, list[dict[str, str]]],
) -> None:
    # The fuzzer's bodies stay far below the limits (256 KB, 2 MB and 32 MB by default), so
    # this server has small ones; every operation that takes a JSON body must document 413.
    limits = ("TUNIX_MAX_REQUEST_BYTES", "TUNIX_TRACE_MAX_REQUEST_BYTES")
    with daphne(
        tmp_path,
        TUNIX_ARTIFACT_ROOT=str(artifact_root),
        TUNIX_RECIPES_FILE=str(child_recipes),
        TUNIX_TRACE_BATCH_MAX_REQUEST_BYTES="2048",
        TUNIX_WEBHOOKS_ALLOW_PRIVATE="true",
        **dict.fromkeys(limits, "2048"),
    ) as small:
        schema = load_schema(small, headers, objects)
        operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
        # Pin, unpin and rotate-secret take no body (and never read one).
        posts = [op for op in operations if op.method.upper() == "POST" and len(op.body) > 0]
        assert len(posts) == 9
        for operation in posts:
            case = operation.Case(
                path_parameters=objects["run_id"][0] if "{run_id}" in operation.path else None,
                body={"padding": "x" * 4096},
            )
            response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
            assert response.status_code == 413, operation.label
            assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["", "/export.jsonl"])
def test_a_dataset_key_with_a_nul_is_unknown_not_a_server_error(api: Any, suffix: str) -> None:
    # Found by the fuzzer above: PostgreSQL refuses a NUL in any text comparison.
    response = api.get(f"/api/datasets/fuzz%00-v1{suffix}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
