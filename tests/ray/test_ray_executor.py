"""Ray runs through a real worker against a real local Ray head (tests/ray/conftest.py).

The head is started once for the module; the last test stops it mid-run.
"""

import asyncio
import dataclasses
import hashlib
import os
import re
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from artifacts.models import Artifact
from runs.models import LogChunk, Run, RunMetric, RunStatus
from runs.services import run_cancel, run_dir, run_enqueue
from tests.ray.conftest import RayHead
from tests.runs.helpers import RUN_FIELDS, WorkerThread, log_text, status_of, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("child_recipes"),
    pytest.mark.ray,
    pytest.mark.postgres,
    pytest.mark.slow,
]

TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED}


@pytest.fixture
def on_ray(ray_head: RayHead, settings: Any) -> Iterator[RayHead]:
    settings.RAY_ADDRESS = ray_head.address
    settings.TUNIX_RAY_DASHBOARD_URL = ray_head.address
    settings.TUNIX_RAY_SUBMIT_RETRY_SECONDS = 5.0
    settings.TUNIX_RAY_LOST_SECONDS = 3.0
    yield ray_head


def enqueue_ray(user: Any = None, recipe: str = "ray_child", **config: Any) -> Run:
    options = {k: config.pop(k) for k in list(config) if k in RUN_FIELDS}
    return run_enqueue(recipe=recipe, created_by=user, config=config, **options)


def ended(run: Run, timeout: float = 60.0) -> Run:
    wait_for(lambda: status_of(run) in TERMINAL, timeout=timeout, interval=0.05)
    return Run.objects.get(pk=run.pk)


def job_processes(run: Run) -> list[int]:
    """Processes on this node (the head's only node) that belong to the run's job: the entry
    point, the command and anything they started carry the run's id in their environment."""
    return processes_with(f"TUNIX_RUN_ID={run.pk}".encode())


def processes_with(marker: bytes) -> list[int]:
    """Live processes with `marker` (NAME=value) in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def ray_jobs_of(head: RayHead, run: Run) -> list[Any]:
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(head.address).list_jobs()
    return [job for job in jobs if (job.submission_id or "").startswith(f"tunixops-{run.pk}")]


def test_twenty_thousand_lines_at_ten_thousand_a_second_are_stored_once_in_order(
    on_ray: RayHead, alice: Any
) -> None:
    run = enqueue_ray(alice, lines=20000, rate=10000, stderr_lines=3)
    with WorkerThread():
        run = ended(run)
    assert run.status == RunStatus.COMPLETED, run.status_reason
    assert run.exit_code == 0
    out = log_text(run, "stdout").splitlines()
    assert out == [f"line {i}" for i in range(1, 20001)]
    assert log_text(run, "stderr").count("err ") == 3
    assert run.ray_submission_id == f"tunixops-{run.pk}-1"
    assert run.ray_dashboard_url == f"{on_ray.address}/#/jobs/{run.ray_submission_id}"
    assert run.executor == "ray" and run.job_output_offset is None
    [job] = ray_jobs_of(on_ray, run)
    assert str(job.status) == "SUCCEEDED"


def test_metric_lines_of_a_ray_job_become_metrics(on_ray: RayHead, alice: Any) -> None:
    run = enqueue_ray(alice, metric_steps=5)
    with WorkerThread():
        run = ended(run)
    assert run.status == RunStatus.COMPLETED, run.status_reason
    steps = dict(RunMetric.objects.filter(run=run).values_list("step", "values"))
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert steps[4]["loss"] == pytest.approx(0.25)


def test_the_job_gets_the_run_and_recipe_env_and_none_of_the_workers_secrets(
    on_ray: RayHead, alice: Any
) -> None:
    assert os.environ.get("SECRET_KEY") and os.environ.get("DATABASE_URL")
    run = enqueue_ray(alice, print_env=True)
    with WorkerThread():
        run = ended(run)
    out = log_text(run, "stdout")
    assert f"TUNIX_RUN_ID={run.pk}" in out
    assert "RECIPE_RAY_VAR=from-the-recipe" in out
    assert "SECRET_KEY=<unset>" in out
    assert "DATABASE_URL=<unset>" in out


def test_a_failing_job_fails_the_run_with_its_exit_code_and_rays_verdict(
    on_ray: RayHead, alice: Any
) -> None:
    run = enqueue_ray(alice, lines=2, exit_code=3)
    with WorkerThread():
        run = ended(run)
    assert run.status == RunStatus.FAILED
    assert run.exit_code == 3
    assert run.status_reason.startswith("exit code 3 (Ray: FAILED")
    assert log_text(run, "stdout") == "line 1\nline 2\n"


def cancel_when_ready(run: Run, user: Any, **config: Any) -> Run:
    ready = run_dir(run.pk) / "ready"
    wait_for(ready.exists, timeout=60)
    started = time.monotonic()
    run_cancel(run_id=run.pk, user=user)
    run = ended(run, timeout=30)
    run.cancel_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize(
    ("config", "grace"),
    [({}, 30.0), ({"ignore_sigterm": True}, 1.0), ({"grandchild": True}, 30.0)],
    ids=["cooperative", "ignores-sigterm", "with-grandchild"],
)
def test_a_cancelled_ray_job_is_gone_with_every_process_it_started(
    on_ray: RayHead, alice: Any, config: dict[str, Any], grace: float
) -> None:
    run = enqueue_ray(alice, sleep=120, ready_file="ready", cancel_grace_seconds=grace, **config)
    with WorkerThread():
        run = cancel_when_ready(run, alice)
        assert run.status == RunStatus.CANCELLED
        # Within the grace when the job is cooperative, just after it when it is not.
        assert run.cancel_seconds < grace + 5  # type: ignore[attr-defined]
        wait_for(lambda: not job_processes(run), timeout=10)
        if config.get("grandchild"):
            pid = int((run_dir(run.pk) / "grandchild.pid").read_text())
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
    wait_for(lambda: str(ray_jobs_of(on_ray, run)[0].status) == "STOPPED", timeout=15)


def test_rays_own_stop_wait_is_set_per_job_through_its_runtime_env(on_ray: RayHead) -> None:
    """What the executor relies on (RAY_JOB_STOP_WAIT_TIME_S, ray/dashboard/modules/job/
    job_supervisor.py in Ray 2.60): a job that ignores SIGTERM outlives Ray's default 3 s when
    its runtime env says 60."""
    from ray.job_submission import JobSubmissionClient

    marker = f"TUNIX_TEST_MARKER={uuid.uuid4()}"
    client = JobSubmissionClient(on_ray.address)
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"
    )
    job = client.submit_job(
        entrypoint="exec " + shlex.join([sys.executable, "-c", script]),
        runtime_env={
            "env_vars": {
                "RAY_JOB_STOP_WAIT_TIME_S": "60",
                marker.split("=")[0]: marker.split("=")[1],
            }
        },
    )
    [pid] = wait_for(lambda: processes_with(marker.encode()), timeout=60)
    wait_for(lambda: "ready" in client.get_job_logs(job), timeout=30, interval=0.2)
    client.stop_job(job)
    time.sleep(6)
    try:
        assert Path(f"/proc/{pid}").exists()
        assert str(client.get_job_status(job)) != "STOPPED"
    finally:
        # Ray marks the job STOPPED once its 60 s are over.
        os.kill(pid, signal.SIGKILL)


def test_a_ray_run_past_its_timeout_ends_as_timeout(on_ray: RayHead, alice: Any) -> None:
    run = enqueue_ray(alice, sleep=120, timeout_seconds=2, cancel_grace_seconds=1)
    with WorkerThread():
        run = ended(run)
        assert run.status == RunStatus.TIMEOUT
        assert "timed out after 2 s" in run.status_reason
        wait_for(lambda: not job_processes(run), timeout=10)


def test_a_job_asking_for_more_of_a_resource_than_the_cluster_has_waits_in_ray(
    on_ray: RayHead, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runs import recipes

    greedy = recipes.get_recipe("ray_child")
    assert greedy is not None
    greedy = dataclasses.replace(
        greedy,
        name="ray_greedy",
        ray=dataclasses.replace(greedy.ray, resources={"tunixops_slot": 99}),
    )
    monkeypatch.setitem(recipes.all_recipes(), "ray_greedy", greedy)
    run = enqueue_ray(alice, recipe="ray_greedy", lines=1, cancel_grace_seconds=1)
    with WorkerThread():
        wait_for(lambda: ray_jobs_of(on_ray, run), timeout=30)
        time.sleep(2)
        [job] = ray_jobs_of(on_ray, run)
        assert str(job.status) == "PENDING"
        assert status_of(run) == RunStatus.RUNNING
        run_cancel(run_id=run.pk, user=alice)
        assert ended(run, timeout=30).status == RunStatus.CANCELLED


def test_a_worker_killed_mid_run_leaves_the_job_to_the_next_worker_every_line_once(
    on_ray: RayHead, alice: Any, spawn_worker: Any
) -> None:
    env = {
        "RAY_ADDRESS": on_ray.address,
        "TUNIX_LEASE_SECONDS": "3",
        "TUNIX_HEARTBEAT_SECONDS": "1",
    }
    run = enqueue_ray(alice, lines=20000, rate=4000)
    first = spawn_worker("--poll-interval", "0.05", **env)
    wait_for(lambda: LogChunk.objects.filter(run=run).count() >= 3, timeout=60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    spawn_worker("--poll-interval", "0.05", **env)
    run = ended(run, timeout=90)
    assert run.status == RunStatus.COMPLETED, run.status_reason
    assert log_text(run, "stdout").splitlines() == [f"line {i}" for i in range(1, 20001)]
    adopted = re.search(r"adopting Ray job .*; its (\d+) s so far count", log_text(run, "stderr"))
    assert adopted is not None
    # The lease (3 s) passed between the kill and the takeover: the job's time is carried over.
    assert int(adopted.group(1)) >= 3
    assert run.attempt == 2
    [job] = ray_jobs_of(on_ray, run)
    assert str(job.status) == "SUCCEEDED"


def test_a_worker_shutting_down_leaves_its_ray_job_running_for_the_next_worker(
    on_ray: RayHead, alice: Any
) -> None:
    run = enqueue_ray(alice, lines=12000, rate=3000)
    with WorkerThread():
        wait_for(lambda: LogChunk.objects.filter(run=run).count() >= 3, timeout=60)
    left = Run.objects.get(pk=run.pk)
    assert left.status == RunStatus.PENDING
    assert "keeps running for the next worker to adopt" in left.status_reason
    assert left.job_output_offset
    with WorkerThread():
        run = ended(run)
    assert run.status == RunStatus.COMPLETED, run.status_reason
    assert log_text(run, "stdout").splitlines() == [f"line {i}" for i in range(1, 12001)]
    [job] = ray_jobs_of(on_ray, run)
    assert str(job.status) == "SUCCEEDED"


def test_a_cluster_that_never_answers_fails_the_run_past_the_submit_limit(
    alice: Any, settings: Any
) -> None:
    settings.RAY_ADDRESS = f"http://127.0.0.1:{free_closed_port()}"
    settings.TUNIX_RAY_SUBMIT_RETRY_SECONDS = 1.0
    run = enqueue_ray(alice, lines=1)
    with WorkerThread():
        run = ended(run)
    assert run.status == RunStatus.FAILED
    assert "did not answer for 1 s (TUNIX_RAY_SUBMIT_RETRY_SECONDS)" in run.status_reason
    assert "Ray cluster unreachable" in log_text(run, "stderr")


def free_closed_port() -> int:
    from tests.ray.conftest import free_port

    return free_port()


@pytest.mark.tunix
def test_a_tiny_sft_run_on_ray_commits_checkpoints_that_download(
    on_ray: RayHead, alice: Any, api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    from runs import recipes

    on_ray_sft = dataclasses.replace(recipes.TINY_SFT, name="tiny_sft_ray", executor="ray")
    monkeypatch.setitem(recipes.all_recipes(), "tiny_sft_ray", on_ray_sft)
    run = run_enqueue(
        recipe="tiny_sft_ray", created_by=alice, config={"max_steps": 6, "save_every_steps": 3}
    )
    with WorkerThread():
        run = ended(run, timeout=240)
    assert run.status == RunStatus.COMPLETED, run.status_reason + run.stderr_tail
    assert re.findall(r"^step (\d+) loss", log_text(run, "stdout"), re.M) == [
        str(i) for i in range(1, 7)
    ]
    assert RunMetric.objects.filter(run=run).count() == 6
    names = set(Artifact.objects.filter(run=run).values_list("name", flat=True))
    assert "checkpoints/6/commit_success.txt" in names
    assert not [name for name in names if name.startswith(".ray/")]
    checkpoint = Artifact.objects.filter(run=run, step=6).order_by("-size_bytes").first()
    assert checkpoint is not None
    got = api.get(f"/api/tunix/runs/{run.pk}/artifacts/{checkpoint.pk}/download")
    assert got.status_code == 200
    body = asyncio.run(read_all(got.streaming_content))  # type: ignore[attr-defined]
    assert hashlib.sha256(body).hexdigest() == checkpoint.sha256


async def read_all(content: Any) -> bytes:
    """The body of a download response (an async iterator: it is served over ASGI)."""
    if hasattr(content, "__aiter__"):
        return b"".join([part async for part in content])
    return b"".join(content)


def test_the_head_stopped_mid_run_fails_the_run_or_retries_it_like_a_lost_worker(
    on_ray: RayHead, alice: Any
) -> None:
    """Two runs on the head when it stops: the plain one fails, the one with a `worker_lost`
    retry rule goes back to the queue for its next attempt; neither is left running."""
    run = enqueue_ray(alice, sleep=120, ready_file="ready")
    retried = enqueue_ray(
        alice, sleep=120, ready_file="ready", max_attempts=2, retry_on=["worker_lost"]
    )
    # max_runs: the worker claims these two and no more, so the retry waits in the queue.
    with WorkerThread(concurrency=2, max_runs=2):
        for each in (run, retried):
            wait_for((run_dir(each.pk) / "ready").exists, timeout=60)
        on_ray.stop()
        run = ended(run, timeout=60)
        wait_for(lambda: status_of(retried) == RunStatus.PENDING, timeout=60, interval=0.05)
    assert run.status == RunStatus.FAILED
    assert run.status_reason.startswith("Ray job lost")
    retried = Run.objects.get(pk=retried.pk)
    assert retried.attempt == 1
    assert retried.status_reason.startswith("Ray job lost")
    assert "(rule worker_lost, attempt 1 of 2)" in retried.status_reason
    for each in (run, retried):
        wait_for(lambda: not job_processes(each), timeout=15)  # noqa: B023
