"""Ray recipes, and which workers claim Ray runs: none of this needs a Ray cluster."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient

from runs.entrypoints import ray_job
from runs.execution.worker import Worker
from runs.models import Run, RunStatus, WorkerHeartbeat
from runs.recipes import RayOptions, load_recipes_file
from runs.services import WAITING_FOR_RAY, run_enqueue

RAY_RECIPE = """
[recipes.on_ray]
argv = ["{python}", "-m", "mine", "{config_file}"]
executor = "ray"

[recipes.on_ray.ray]
num_cpus = 2
num_gpus = 0.5
resources = {TPU = 4}
runtime_env = {env_vars = {A = "b"}, pip = ["x==1"]}
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "recipes.toml"
    path.write_text(text)
    return load_recipes_file(path)


def test_a_ray_recipe_loads_with_what_its_job_asks_of_the_cluster(tmp_path: Path) -> None:
    recipe = load(tmp_path, RAY_RECIPE)["on_ray"]
    assert recipe.executor == "ray"
    assert recipe.ray == RayOptions(
        num_cpus=2.0,
        num_gpus=0.5,
        resources={"TPU": 4.0},
        runtime_env={"env_vars": {"A": "b"}, "pip": ["x==1"]},
    )


def test_a_recipe_runs_locally_unless_it_says_otherwise(tmp_path: Path) -> None:
    text = RAY_RECIPE.split("executor")[0]
    assert load(tmp_path, text)["on_ray"].executor == "local"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('executor = "ray"', 'executor = "k8s"'), "executor must be one of local, ray"),
        (('executor = "ray"', 'executor = "local"'), 'a [ray] table needs executor = "ray"'),
        (("num_cpus = 2", "num_cpus = -1"), "ray.num_cpus must be a number >= 0"),
        (("num_gpus = 0.5", 'num_gpus = "1"'), "ray.num_gpus must be a number >= 0"),
        (("num_cpus = 2", "cpus = 2"), "unknown ray field(s) cpus"),
        (("{TPU = 4}", '{TPU = "4"}'), "ray.resources must map resource names to numbers"),
        (("{TPU = 4}", "{TPU = -4}"), "ray.resources must map resource names to numbers"),
        (('pip = ["x==1"]', 'pipp = ["x==1"]'), "unknown ray.runtime_env field(s) pipp"),
        (('{A = "b"}', "{A = 1}"), "ray.runtime_env.env_vars must map strings to strings"),
    ],
)
def test_a_mistake_in_the_ray_table_is_refused_at_load(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    old, new = edit
    assert old in RAY_RECIPE
    with pytest.raises(ImproperlyConfigured) as info:
        load(tmp_path, RAY_RECIPE.replace(old, new, 1))
    assert expected in str(info.value)
    assert "recipe 'on_ray'" in str(info.value)


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytestmark_db
@pytest.mark.usefixtures("child_recipes")
def test_a_worker_without_ray_address_leaves_ray_runs_pending_and_says_why(
    alice: Any, settings: Any
) -> None:
    settings.RAY_ADDRESS = ""
    ray_run = run_enqueue(recipe="ray_child", created_by=alice, config={"lines": 1})
    local_run = run_enqueue(recipe="child", created_by=alice, config={"lines": 1})
    assert ray_run.executor == "ray" and local_run.executor == "local"
    worker = Worker(once=True, poll_interval=0.05)
    assert worker.ray_note == "RAY_ADDRESS is not set"
    worker.run()
    ray_run.refresh_from_db()
    assert Run.objects.get(pk=local_run.pk).status == RunStatus.COMPLETED
    assert ray_run.status == RunStatus.PENDING
    assert ray_run.status_reason == WAITING_FOR_RAY.format(pool="default")


@pytestmark_db
@pytest.mark.usefixtures("child_recipes")
def test_the_heartbeat_says_which_executors_a_worker_can_use(settings: Any) -> None:
    settings.RAY_ADDRESS = ""
    worker = Worker(worker_id="w-local")
    worker.beat()
    settings.RAY_ADDRESS = "http://ray-head:8265"
    ray_worker = Worker(worker_id="w-ray")
    ray_worker.beat()
    executors = dict(WorkerHeartbeat.objects.values_list("worker_id", "executors"))
    assert executors["w-local"] == ["local"]
    expected = ["local"] if ray_worker.ray_note else ["local", "ray"]
    assert executors["w-ray"] == expected


@pytestmark_db
@pytest.mark.usefixtures("child_recipes")
def test_a_ray_capable_worker_claims_ray_runs(settings: Any, alice: Any) -> None:
    pytest.importorskip("ray.job_submission", reason="needs Ray (requirements-ray.txt)")
    settings.RAY_ADDRESS = "http://127.0.0.1:1"
    run = run_enqueue(recipe="ray_child", created_by=alice, config={})
    claimed = Worker(worker_id="w-ray").claim()
    assert claimed is not None and claimed.pk == run.pk


@pytestmark_db
@pytest.mark.usefixtures("child_recipes")
def test_the_api_and_page_show_where_a_ray_run_ran(
    api: APIClient, alice: Any, settings: Any, client: Any
) -> None:
    settings.TUNIX_RAY_DASHBOARD_URL = "http://ray-head:8265"
    run = run_enqueue(recipe="ray_child", created_by=alice, config={})
    Run.objects.filter(pk=run.pk).update(ray_submission_id=f"tunixops-{run.pk}-1")
    body = api.get(f"/api/tunix/runs/{run.pk}").json()
    assert body["executor"] == "ray"
    assert body["ray_submission_id"] == f"tunixops-{run.pk}-1"
    assert body["ray_dashboard_url"] == f"http://ray-head:8265/#/jobs/tunixops-{run.pk}-1"
    client.force_login(alice)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert f"tunixops-{run.pk}-1" in page
    assert f'href="http://ray-head:8265/#/jobs/tunixops-{run.pk}-1"' in page


def test_the_job_entry_point_refuses_a_run_directory_the_worker_did_not_write(
    tmp_path: Path,
) -> None:
    control = tmp_path / "control"
    control.mkdir()
    (control / "launch").write_text("the-workers-token")
    argv = [sys.executable, ray_job.__file__, str(control), "1", "--", "true"]
    seen = subprocess.run(
        argv, env={"TUNIX_RAY_LAUNCH_TOKEN": "another"}, capture_output=True, text=True, check=False
    )
    assert seen.returncode == ray_job.NOT_SHARED
    assert "does not see the worker's run directory" in seen.stdout
    assert not (control / "output").exists()


def test_the_job_entry_point_records_every_line_and_the_exit(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    (control / "launch").write_text("token")
    script = "import sys; print('a'); print('b' * 70000); sys.stderr.write('tail'); sys.exit(4)"
    argv = [sys.executable, ray_job.__file__, str(control), "1", "--", sys.executable, "-c", script]
    done = subprocess.run(argv, env={"TUNIX_RAY_LAUNCH_TOKEN": "token"}, check=False)
    assert done.returncode == 4
    records = (control / "output").read_bytes().split(b"\n")[:-1]
    stdout = [r for r in records if r[:1] == b"o"]
    assert stdout[0] == b"oLa"
    assert [r[:2] for r in stdout[1:]] == [b"oP", b"oL"]
    assert b"".join(r[2:] for r in stdout[1:]) == b"b" * 70000
    assert [r for r in records if r[:1] == b"e"] == [b"ePtail"]
    ended = json.loads((control / "exit").read_text())
    assert ended == {"code": 4, "output_bytes": (control / "output").stat().st_size}


def test_a_ray_job_lost_with_its_cluster_is_retried_like_a_lost_worker() -> None:
    from runs import retry_rules

    assert retry_rules.endings(exit_code=None, lost=True) == {"worker_lost"}
    assert retry_rules.matching(["exit:1", "worker_lost"], {"worker_lost"}) == "worker_lost"
    assert retry_rules.endings(exit_code=None) == set()


def test_a_cluster_that_accepts_but_never_answers_reads_as_unreachable(monkeypatch: Any) -> None:
    """A black-holed job server (a real socket that takes the connection and says nothing) must
    not hold the worker's call forever."""
    pytest.importorskip("ray.job_submission")
    import socket
    import time

    from runs.execution import ray as ray_executor

    monkeypatch.setattr(ray_executor, "REQUEST_TIMEOUT", (1.0, 1.0))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        cluster = ray_executor.Cluster(f"http://127.0.0.1:{silent.getsockname()[1]}")
        began = time.monotonic()
        with pytest.raises(ray_executor.Unreachable, match="Timeout"):
            cluster.info("tunixops-anything-1")
        assert time.monotonic() - began < 30
