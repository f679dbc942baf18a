"""A fleet and a run's whole life: pools, drain, retry rules and attempts, continue from a step.

Every test runs real worker processes on the test children.
"""

import signal
import subprocess
import sys
from typing import Any

import pytest

from runs.models import Run, RunAttempt, RunStatus, WorkerHeartbeat
from runs.services import run_cancel, run_continue, run_enqueue
from tests.conftest import REPO
from tests.runs.helpers import TERMINAL, enqueue_child, log_text, status_of, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def worker(spawn_worker: Any, worker_id: str, *args: str, **env: str) -> Any:
    return spawn_worker("--worker-id", worker_id, "--poll-interval", "0.05", *args, **env)


def finish(run: Run, timeout: float = 20) -> Run:
    wait_for(lambda: status_of(run) in TERMINAL, timeout=timeout, interval=0.05)
    run.refresh_from_db()
    return run


def in_pool(user: Any, pool: str, **config: Any) -> Run:
    return run_enqueue(recipe="child", created_by=user, config=config, pool=pool)


# -- pools ----------------------------------------------------------------------------------------


def test_runs_go_to_the_workers_of_their_pool_and_an_unserved_pool_waits_with_a_reason(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, "gpu-box", "--pools", "gpu,spare", TUNIX_LEASE_SECONDS="3")
    worker(spawn_worker, "cpu-box", TUNIX_LEASE_SECONDS="3")
    gpu = [in_pool(alice, "gpu", lines=1) for _ in range(3)]
    cpu = [in_pool(alice, "default", lines=1) for _ in range(3)]
    lonely = in_pool(alice, "tpu-v5e", lines=1)
    assert {finish(run).worker_id for run in gpu} == {"gpu-box"}
    assert {finish(run).worker_id for run in cpu} == {"cpu-box"}
    wait_for(lambda: Run.objects.get(pk=lonely.pk).status_reason != "", timeout=10)
    lonely.refresh_from_db()
    assert lonely.status == RunStatus.PENDING
    assert lonely.status_reason == "waiting: no live worker serves pool 'tpu-v5e'"
    beat = WorkerHeartbeat.objects.get(worker_id="gpu-box")
    assert beat.pools == ["gpu", "spare"]


def test_a_pool_name_is_checked(api: Any) -> None:
    response = api.post(
        "/api/tunix/run", {"recipe": "tiny_sft", "pool": "no spaces/allowed"}, format="json"
    )
    assert response.status_code == 400
    assert "pool" in response.json()["error"]["fields"]


# -- drain ----------------------------------------------------------------------------------------


def drain(worker_id: str, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "tunix_worker", "--drain", worker_id, *extra],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_a_drained_worker_lets_its_run_finish_claims_nothing_more_and_stops(
    alice: Any, spawn_worker: Any, process_env: dict[str, str]
) -> None:
    proc = worker(spawn_worker, "old", TUNIX_HEARTBEAT_SECONDS="0.2")
    # Long enough to outlast the drain command's own start-up on a loaded machine.
    running = enqueue_child(alice, lines=1, sleep=8)
    wait_for(lambda: status_of(running) == RunStatus.RUNNING)
    done = drain("old", env=process_env)
    assert done.returncode == 0 and "worker old: asked to drain" in done.stdout
    wait_for(
        lambda: WorkerHeartbeat.objects.filter(worker_id="old", draining=True).exists(), timeout=10
    )
    waiting = enqueue_child(alice, lines=1)
    assert finish(running).status == RunStatus.COMPLETED
    assert proc.wait(20) == 0
    assert status_of(waiting) == RunStatus.PENDING
    assert not WorkerHeartbeat.objects.filter(worker_id="old").exists()


def test_draining_an_unknown_worker_is_an_error(process_env: dict[str, str]) -> None:
    done = drain("nobody", env=process_env)
    assert done.returncode != 0
    assert "no running worker 'nobody'" in done.stderr


def test_past_the_drain_timeout_the_runs_left_are_stopped_and_put_back(
    alice: Any, spawn_worker: Any, process_env: dict[str, str]
) -> None:
    proc = worker(spawn_worker, "slow", "--drain-seconds", "1", TUNIX_HEARTBEAT_SECONDS="0.2")
    run = enqueue_child(alice, sleep=60, max_attempts=2, cancel_grace_seconds=1)
    wait_for(lambda: status_of(run) == RunStatus.RUNNING)
    assert drain("slow", env=process_env).returncode == 0
    assert proc.wait(30) == 0
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING
    assert run.status_reason == "worker shutdown"


def test_with_drain_on_sigterm_the_first_sigterm_drains(alice: Any, spawn_worker: Any) -> None:
    proc = worker(spawn_worker, "rolling", TUNIX_WORKER_DRAIN="true")
    run = enqueue_child(alice, lines=1, sleep=1.5)
    wait_for(lambda: status_of(run) == RunStatus.RUNNING)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert status_of(run) == RunStatus.COMPLETED


# -- retry rules and attempts --------------------------------------------------------------------


def test_exit_137_is_retried_by_its_rule_and_exit_1_is_not(alice: Any, spawn_worker: Any) -> None:
    worker(spawn_worker, "retrier")
    retried = run_enqueue(
        recipe="child",
        created_by=alice,
        config={"exit_code": 137, "lines": 1},
        max_attempts=3,
        retry_on=["exit:137"],
    )
    assert finish(retried).status == RunStatus.FAILED
    assert retried.attempt == 3
    attempts = list(RunAttempt.objects.filter(run=retried).order_by("number"))
    assert [(a.number, a.ending, a.exit_code) for a in attempts] == [
        (1, RunStatus.PENDING, 137),
        (2, RunStatus.PENDING, 137),
        (3, RunStatus.FAILED, 137),
    ]
    assert "retrying in 0.2 s (rule exit:137, attempt 1 of 3)" in attempts[0].reason
    text = log_text(retried)
    assert [f"attempt {n} of 3 on retrier" in text for n in (1, 2, 3)] == [True] * 3
    assert text.count("line 1\n") == 3
    once = run_enqueue(
        recipe="child",
        created_by=alice,
        config={"exit_code": 1},
        max_attempts=3,
        retry_on=["exit:137"],
    )
    assert finish(once).status == RunStatus.FAILED
    assert once.attempt == 1


def test_a_retry_waits_out_its_backoff(alice: Any, spawn_worker: Any) -> None:
    worker(spawn_worker, "patient")
    run = run_enqueue(
        recipe="child",
        created_by=alice,
        config={"exit_code": 2},
        max_attempts=2,
        retry_on=["exit:2"],
    )
    finish(run)
    first, second = RunAttempt.objects.filter(run=run).order_by("number")
    assert first.finished_at is not None
    assert (second.started_at - first.finished_at).total_seconds() >= 0.2


def test_a_run_killed_by_a_signal_matches_signal_and_exit_137(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, "sig")
    run = run_enqueue(
        recipe="child",
        created_by=alice,
        config={"sleep": 60, "ignore_sigterm": True},
        max_attempts=2,
        retry_on=["exit:137"],
        timeout_seconds=1,
        cancel_grace_seconds=0.5,
    )
    # A timeout is not retried (its rule is `timeout`), even though the kill was a SIGKILL.
    assert finish(run).status == RunStatus.TIMEOUT
    assert run.attempt == 1


def test_unknown_retry_rules_are_refused(api: Any) -> None:
    response = api.post(
        "/api/tunix/run", {"recipe": "tiny_sft", "retry_on": ["exit:999"]}, format="json"
    )
    assert response.status_code == 400
    assert "retry_on" in response.json()["error"]["fields"]


def test_a_cancel_is_never_retried(alice: Any, spawn_worker: Any) -> None:
    worker(spawn_worker, "canceller")
    run = run_enqueue(
        recipe="child",
        created_by=alice,
        config={"sleep": 60},
        max_attempts=3,
        retry_on=["signal", "exit:143"],
        cancel_grace_seconds=1,
    )
    wait_for(lambda: status_of(run) == RunStatus.RUNNING)
    run_cancel(run_id=run.pk, user=alice)
    assert finish(run).status == RunStatus.CANCELLED
    assert run.attempt == 1


# -- continue and fork -----------------------------------------------------------------------------


def test_continuing_a_run_without_checkpoints_is_refused(alice: Any, make_run: Any) -> None:
    from runs.recipes import ConfigError

    parent = make_run(status=RunStatus.COMPLETED)
    with pytest.raises(ConfigError) as info:
        run_continue(run_id=parent.pk, user=alice)
    assert "no committed checkpoint" in info.value.errors["step"][0]


def test_a_running_run_cannot_be_continued(api: Any, make_run: Any) -> None:
    parent = make_run(status=RunStatus.RUNNING)
    response = api.post(f"/api/tunix/runs/{parent.pk}/continue", {}, format="json")
    assert response.status_code == 409


def _committed_step(run: Run, step: int) -> None:
    from artifacts.services import artifacts_sync
    from runs.services import run_dir

    step_dir = run_dir(run.pk) / "checkpoints" / str(step)
    step_dir.mkdir(parents=True)
    (step_dir / "commit_success.txt").write_text("ok")
    artifacts_sync(run_id=run.pk)


@pytest.mark.parametrize("parent_recipe", ["tiny_sft", "peft_cli"])
def test_a_fork_into_a_recipe_that_does_not_start_from_the_parents_is_refused(
    api: Any, make_run: Any, parent_recipe: str
) -> None:
    parent = make_run(status=RunStatus.COMPLETED, recipe=parent_recipe)
    _committed_step(parent, 4)
    response = api.post(f"/api/tunix/runs/{parent.pk}/continue", {"recipe": "grpo"}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]["recipe"] == [
        f"recipe 'grpo' cannot start from a {parent_recipe!r} checkpoint"
    ]
    assert not Run.objects.filter(continued_from=parent).exists()


def test_a_fork_into_grpo_goes_on_with_the_parents_model(api: Any, make_run: Any) -> None:
    parent = make_run(status=RunStatus.COMPLETED, recipe="peft", model_id="Qwen/Qwen3-0.6B")
    _committed_step(parent, 4)
    response = api.post(
        f"/api/tunix/runs/{parent.pk}/continue",
        {"recipe": "grpo", "config": {"rl_training_config.max_steps": 2}},
        format="json",
    )
    assert response.status_code == 202, response.content
    child = Run.objects.get(pk=response.json()["run_id"])
    assert (child.recipe, child.model_id, child.continued_from_step) == (
        "grpo",
        "Qwen/Qwen3-0.6B",
        4,
    )
    # The parent's peft settings are not grpo's: the fork takes grpo's defaults and the changes.
    assert child.config["rl_training_config.max_steps"] == 2
    assert "model_config.lora_config.rank" not in child.config


@pytest.mark.slow
@pytest.mark.tunix
def test_continue_resumes_tiny_sft_from_the_parents_last_step(
    alice: Any, api: Any, spawn_worker: Any
) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    worker(spawn_worker, "sft")
    parent = run_enqueue(
        recipe="tiny_sft", created_by=alice, config={"max_steps": 6, "save_every_steps": 3}
    )
    assert finish(parent, timeout=120).status == RunStatus.COMPLETED, parent.status_reason
    wait_for(lambda: parent.artifacts.filter(step=6).exists(), timeout=20)
    before = set(parent.artifacts.values_list("name", "sha256", "mtime_ns"))
    response = api.post(
        f"/api/tunix/runs/{parent.pk}/continue", {"config": {"max_steps": 9}}, format="json"
    )
    assert response.status_code == 202, response.content
    child = Run.objects.get(pk=response.json()["run_id"])
    assert (child.continued_from_id, child.continued_from_step) == (parent.pk, 6)
    assert finish(child, timeout=120).status == RunStatus.COMPLETED, child.status_reason
    steps = [m.step for m in child.metrics.order_by("step")]
    assert steps == [7, 8, 9], "its first logged step is the parent's last + 1"
    assert f"starting from checkpoint step 6 of run {parent.pk}" in log_text(child)
    # The parent's own files never change.
    assert set(parent.artifacts.values_list("name", "sha256", "mtime_ns")) == before
    detail = api.get(f"/api/tunix/runs/{child.pk}").json()
    assert detail["continued_from"] == str(parent.pk) and detail["continued_from_step"] == 6
