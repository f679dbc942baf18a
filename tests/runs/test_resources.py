"""Resources on one host: devices split between runs, a cgroup per run, memory limits, child user.

CPU only here: the devices are fake ids, and a test child prints the environment it was given.
The cgroup and child-user tests need root (CI runs as root) and a cgroup hierarchy the worker may
manage; they say so when skipped.
"""

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runs.execution.cgroups import detect
from runs.models import Run, RunStatus
from runs.services import run_cancel, run_dir
from tests.runs.helpers import (
    TERMINAL,
    enqueue_child,
    log_text,
    process_alive,
    status_of,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]

CGROUPS, CGROUPS_NOTE = detect()
needs_cgroups = pytest.mark.skipif(CGROUPS is None, reason=f"no cgroups here: {CGROUPS_NOTE}")
FOUR = ("--devices", "0,1,2,3")


def worker(spawn_worker: Any, *args: str, **env: str) -> Any:
    return spawn_worker("--poll-interval", "0.05", *args, **env)


def finish(run: Run, timeout: float = 20) -> Run:
    wait_for(lambda: status_of(run) in TERMINAL, timeout=timeout, interval=0.05)
    run.refresh_from_db()
    return run


def shown(run: Run, name: str) -> str:
    for line in log_text(run).splitlines():
        if line.startswith(f"{name}="):
            return line.partition("=")[2]
    raise AssertionError(f"{name} not printed: {log_text(run)!r}")


def running(*runs: Run) -> bool:
    return all(status_of(run) == RunStatus.RUNNING for run in runs)


# -- devices --------------------------------------------------------------------------------------


def test_two_runs_share_a_four_device_worker_with_disjoint_devices_and_a_third_waits(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, *FOUR, "--concurrency", "3")
    first = enqueue_child(alice, devices=2, print_env=True, sleep=2)
    second = enqueue_child(alice, devices=2, print_env=True, sleep=2)
    third = enqueue_child(alice, devices=2, print_env=True)
    wait_for(lambda: running(first, second), timeout=20)
    assert status_of(third) == RunStatus.PENDING
    first, second = finish(first), finish(second)
    gpus = [set(shown(run, "CUDA_VISIBLE_DEVICES").split(",")) for run in (first, second)]
    assert all(len(ids) == 2 for ids in gpus) and not gpus[0] & gpus[1]
    assert {first.device_ids, second.device_ids} == {"0,1", "2,3"}
    assert shown(first, "XLA_PYTHON_CLIENT_PREALLOCATE") == "false"
    third = finish(third)
    assert third.status == RunStatus.COMPLETED
    assert third.started_at is not None and third.started_at >= min(
        first.finished_at or third.started_at, second.finished_at or third.started_at
    )


def test_a_run_without_devices_sees_none_of_the_workers_gpus(alice: Any, spawn_worker: Any) -> None:
    worker(spawn_worker, *FOUR)
    run = finish(enqueue_child(alice, print_env=True))
    assert shown(run, "CUDA_VISIBLE_DEVICES") == ""
    assert run.device_ids == ""


def test_a_run_needing_more_devices_than_any_worker_has_waits_and_says_why(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, *FOUR, TUNIX_LEASE_SECONDS="3")
    big = enqueue_child(alice, devices=5)
    small = finish(enqueue_child(alice, devices=1))
    assert small.status == RunStatus.COMPLETED
    wait_for(lambda: Run.objects.get(pk=big.pk).status_reason != "", timeout=10)
    big.refresh_from_db()
    assert big.status == RunStatus.PENDING
    assert big.status_reason == "waiting: needs 5 devices; the largest live worker has 4"


@pytest.mark.parametrize("ending", ["cancel", "timeout", "crash"])
def test_devices_are_free_again_after_every_ending(
    alice: Any, spawn_worker: Any, ending: str
) -> None:
    worker(spawn_worker, *FOUR)
    options: dict[str, Any] = {"devices": 4, "cancel_grace_seconds": 1}
    if ending == "cancel":
        options["sleep"] = 60
    elif ending == "timeout":
        options |= {"sleep": 60, "timeout_seconds": 1}
    else:
        options["exit_code"] = 3
    run = enqueue_child(alice, **options)
    if ending == "cancel":
        wait_for(lambda: running(run))
        run_cancel(run_id=run.pk, user=alice)
    assert (
        finish(run).status
        == {
            "cancel": RunStatus.CANCELLED,
            "timeout": RunStatus.TIMEOUT,
            "crash": RunStatus.FAILED,
        }[ending]
    )
    after = finish(enqueue_child(alice, devices=4, print_env=True))
    assert after.status == RunStatus.COMPLETED
    assert shown(after, "CUDA_VISIBLE_DEVICES") == "0,1,2,3"


def test_a_run_of_a_sigkilled_worker_gets_devices_from_the_worker_that_reclaims_it(
    alice: Any, spawn_worker: Any
) -> None:
    env = {"TUNIX_LEASE_SECONDS": "2", "TUNIX_HEARTBEAT_SECONDS": "0.5"}
    doomed = worker(spawn_worker, "--devices", "0,1", "--worker-id", "doomed", **env)
    run = enqueue_child(alice, devices=2, print_env=True, sleep=60, max_attempts=2)
    wait_for(lambda: running(run))
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    worker(spawn_worker, "--devices", "6,7", "--worker-id", "rescuer", **env)
    wait_for(lambda: Run.objects.get(pk=run.pk).attempt == 2, timeout=20)
    wait_for(lambda: "CUDA_VISIBLE_DEVICES=6,7" in log_text(run), timeout=20)
    run_cancel(run_id=run.pk, user=alice)
    assert finish(run).status == RunStatus.CANCELLED
    assert finish(enqueue_child(alice, devices=2)).worker_id == "rescuer"


def test_a_large_run_is_not_starved_by_a_stream_of_small_ones(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, *FOUR, "--concurrency", "4")
    smalls = [enqueue_child(alice, devices=1, sleep=0.5) for _ in range(4)]
    wait_for(lambda: running(*smalls), timeout=20)
    large = enqueue_child(alice, devices=4, sleep=0.2)
    later = [enqueue_child(alice, devices=1, sleep=0.5) for _ in range(8)]
    large = finish(large, timeout=30)
    assert large.status == RunStatus.COMPLETED
    # The large run went before every small run queued after it.
    for small in later:
        started = Run.objects.get(pk=small.pk).started_at
        assert started is None or started >= (large.finished_at or started)


def test_tpu_chips_come_with_the_bounds_of_one_process(alice: Any, spawn_worker: Any) -> None:
    worker(spawn_worker, *FOUR, "--device-kind", "tpu")
    run = finish(enqueue_child(alice, devices=2, print_env=True))
    assert shown(run, "TPU_VISIBLE_CHIPS") == "0,1"
    assert shown(run, "TPU_CHIPS_PER_PROCESS_BOUNDS") == "1,2,1"
    assert shown(run, "TPU_PROCESS_BOUNDS") == "1,1,1"
    assert shown(run, "TPU_MESH_CONTROLLER_PORT") == "8476"
    odd = finish(enqueue_child(alice, devices=3))
    assert odd.status == RunStatus.FAILED
    assert "a TPU run takes 1, 2, 4 or 8 chips of one host, not 3" in odd.status_reason


def test_a_run_asking_more_devices_than_its_recipe_allows_is_refused(api: Any) -> None:
    response = api.post("/api/tunix/run", {"recipe": "tiny_sft", "devices": 65}, format="json")
    assert response.status_code == 400
    assert "devices" in response.json()["error"]["fields"]


# -- containment ----------------------------------------------------------------------------------


@needs_cgroups
@pytest.mark.parametrize("ending", ["cancel", "normal end"])
def test_a_setsid_double_forked_daemon_is_gone_when_the_run_ends(
    alice: Any, spawn_worker: Any, tmp_path: Path, ending: str
) -> None:
    worker(spawn_worker)
    pid_file = tmp_path / "daemon.pid"
    sleep = 60 if ending == "cancel" else 0.5
    run = enqueue_child(alice, daemon_pid_file=str(pid_file), sleep=sleep, cancel_grace_seconds=1)
    wait_for(pid_file.exists)
    daemon = int(wait_for(lambda: pid_file.read_text().strip()))
    assert process_alive(daemon)
    if ending == "cancel":
        run_cancel(run_id=run.pk, user=alice)
    finish(run)
    wait_for(lambda: not process_alive(daemon), timeout=10)


@needs_cgroups
def test_a_daemon_left_by_a_sigkilled_worker_is_killed_when_its_run_is_reclaimed(
    alice: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    env = {"TUNIX_LEASE_SECONDS": "2", "TUNIX_HEARTBEAT_SECONDS": "0.5"}
    doomed = worker(spawn_worker, "--worker-id", "doomed", **env)
    pid_file = tmp_path / "daemon.pid"
    run = enqueue_child(alice, daemon_pid_file=str(pid_file), sleep=60, max_attempts=1)
    daemon = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip()))
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    assert process_alive(daemon), "the daemon outlives its worker until the run is reclaimed"
    worker(spawn_worker, "--worker-id", "rescuer", **env)
    assert finish(run).status_reason == "worker lost"
    wait_for(lambda: not process_alive(daemon), timeout=10)


@needs_cgroups
def test_a_run_over_its_memory_limit_fails_as_out_of_memory(alice: Any, spawn_worker: Any) -> None:
    worker(spawn_worker)
    run = finish(enqueue_child(alice, alloc_mb=400, memory_limit_mb=100), timeout=30)
    assert run.status == RunStatus.FAILED
    assert run.status_reason == "out of memory (limit 100 MiB)"
    fits = finish(enqueue_child(alice, alloc_mb=20, memory_limit_mb=100))
    assert fits.status == RunStatus.COMPLETED


@needs_cgroups
def test_the_workers_default_memory_limit_applies_to_runs_that_set_none(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, "--memory-limit-mb", "100")
    run = finish(enqueue_child(alice, alloc_mb=400), timeout=30)
    assert run.status_reason == "out of memory (limit 100 MiB)"


def test_without_cgroups_a_memory_limit_is_reported_as_not_enforced(
    alice: Any, spawn_worker: Any
) -> None:
    worker(spawn_worker, TUNIX_WORKER_CGROUPS="off")
    run = finish(enqueue_child(alice, memory_limit_mb=100, lines=1))
    assert run.status == RunStatus.COMPLETED
    assert "memory limit not enforced: this worker cannot manage cgroups" in log_text(run)


# -- the child's user -----------------------------------------------------------------------------

CHILD_USER = "tunixchild"


@pytest.fixture
def shared_root(process_env: dict[str, str]) -> Iterator[Path]:
    """An artifact root the child user can reach (pytest's own tmp dirs are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="tunixops-child-user-"))
    root.chmod(0o755)
    process_env["TUNIX_ARTIFACT_ROOT"] = str(root)
    yield root
    os.system(f"rm -rf {root}")  # noqa: S605 - a path this fixture made


@pytest.mark.skipif(os.geteuid() != 0, reason="children run as another user only under root")
def test_a_child_run_as_the_child_user_cannot_reach_the_worker_or_other_runs(
    alice: Any, spawn_worker: Any, shared_root: Path, settings: Any
) -> None:
    import pwd

    try:
        child = pwd.getpwnam(CHILD_USER)
    except KeyError:
        pytest.skip(f"no user {CHILD_USER} (scripts/system-deps creates it)")
    settings.TUNIX_ARTIFACT_ROOT = shared_root
    worker(spawn_worker, TUNIX_CHILD_USER=CHILD_USER, SECRET_KEY="worker-secret")
    earlier = finish(enqueue_child(alice, lines=1))
    earlier_dir = run_dir(earlier.pk)
    assert earlier_dir.stat().st_uid == 0, "a finished run's files go back to the worker"
    run = finish(enqueue_child(alice, probe_path=str(earlier_dir), print_env=True))
    text = log_text(run)
    assert run.status == RunStatus.COMPLETED, text
    assert f"uid {child.pw_uid}" in text
    assert "worker environ refused: Permission denied" in text
    assert "foreign write refused: Permission denied" in text
    assert "SECRET_KEY=<unset>" in text and "DATABASE_URL=<unset>" in text
    assert not (earlier_dir / "intruder.txt").exists()
    # What the run wrote is the worker's again once it is over.
    assert {p.stat().st_uid for p in run_dir(run.pk).rglob("*")} <= {0}


def test_an_unknown_child_user_stops_the_worker_at_start(spawn_worker: Any) -> None:
    proc = worker(spawn_worker, TUNIX_CHILD_USER="no-such-user-here")
    assert proc.wait(30) != 0
