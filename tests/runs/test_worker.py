import os
import signal
import time
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from runs.execution.logsink import CHUNK_MAX_CHARS
from runs.execution.worker import Worker
from runs.models import LogChunk, Run, RunStatus
from runs.services import run_cancel, run_dir
from tests.runs.helpers import (
    WorkerThread,
    enqueue_child,
    log_text,
    process_alive,
    seqs,
    status_of,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def run_once(**options: Any) -> int:
    return Worker(once=True, poll_interval=0.05, **options).run()


def test_it_runs_a_child_to_completion_and_keeps_every_line(alice: Any) -> None:
    run = enqueue_child(alice, lines=500, stderr_lines=3)
    assert run_once() == 1
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.exit_code == 0
    assert run.attempt == 1 and run.started_at and run.finished_at and run.worker_id
    assert log_text(run, "stdout") == "".join(f"line {i}\n" for i in range(1, 501))
    assert log_text(run, "stderr") == "err 1\nerr 2\nerr 3\n"
    assert seqs(run.pk) == list(range(1, len(seqs(run.pk)) + 1))
    assert run.stdout_tail.endswith("line 500\n")
    assert run.stderr_tail == "err 1\nerr 2\nerr 3\n"
    assert run.log_bytes == len(log_text(run).encode())
    assert (run_dir(run.pk) / "config.json").exists()


def test_a_non_zero_exit_fails_the_run_with_its_code(alice: Any) -> None:
    run = enqueue_child(alice, exit_code=3)
    run_once()
    run.refresh_from_db()
    assert (run.status, run.exit_code, run.status_reason) == (RunStatus.FAILED, 3, "exit code 3")


def test_a_program_that_cannot_start_fails_and_the_worker_keeps_serving(alice: Any) -> None:
    from runs.services import run_enqueue

    broken = run_enqueue(recipe="missing_program", created_by=alice)
    good = enqueue_child(alice, lines=1)
    assert run_once() == 2
    broken.refresh_from_db()
    assert broken.status == RunStatus.FAILED
    assert broken.status_reason.startswith("could not start:")
    assert "[tunixops] run could not start" in log_text(broken)
    assert status_of(good) == RunStatus.COMPLETED


def test_a_run_whose_recipe_is_gone_fails_with_a_clear_reason(alice: Any, make_run: Any) -> None:
    run = make_run(recipe="retired_recipe")
    run_once()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.status_reason == "could not start: unknown recipe 'retired_recipe'"


def test_it_claims_by_priority_then_age(operator: Any) -> None:
    # An operator: only they may set a priority.
    low = enqueue_child(operator, priority=0, name="low")
    high = enqueue_child(operator, priority=5, name="high")
    older_low = Run.objects.get(pk=low.pk)
    late_low = enqueue_child(operator, priority=0, name="late")
    run_once()
    order = list(Run.objects.order_by("started_at").values_list("name", flat=True))
    assert order == ["high", "low", "late"]
    assert older_low.pk == low.pk and high.pk and late_low.pk


def test_it_never_starts_a_run_cancelled_while_pending(alice: Any) -> None:
    run = enqueue_child(alice, lines=1)
    run_cancel(run_id=run.pk, user=alice)
    assert run_once() == 0
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.started_at is None
    assert not LogChunk.objects.filter(run=run).exists()


def test_a_run_that_outlives_its_timeout_is_terminated(alice: Any, settings: Any) -> None:
    run = enqueue_child(alice, sleep=30, timeout_seconds=1)
    started = time.monotonic()
    run_once()
    run.refresh_from_db()
    assert time.monotonic() - started < 10
    assert run.status == RunStatus.TIMEOUT
    assert run.status_reason == "timed out after 1 s"
    assert run.exit_code == -signal.SIGTERM
    assert "[tunixops] timed out after 1 s: sending SIGTERM" in log_text(run)


def test_an_unterminated_line_is_flushed_while_the_child_still_runs(alice: Any) -> None:
    run = enqueue_child(alice, partial="progress 42%", sleep=30)
    with WorkerThread():
        began = time.monotonic()
        wait_for(lambda: "progress 42%" in log_text(run), timeout=5)
        assert time.monotonic() - began < 3
        run_cancel(run_id=run.pk, user=alice)
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED)


def test_an_over_long_line_is_split_never_dropped(alice: Any) -> None:
    run = enqueue_child(alice, long_line=300_000)
    run_once()
    chunks = list(LogChunk.objects.filter(run=run).values_list("chunk", flat=True))
    assert max(len(c) for c in chunks) <= CHUNK_MAX_CHARS
    assert "".join(chunks) == "z" * 300_000 + "\n"


def test_the_stored_log_is_bounded_and_the_tail_is_kept(alice: Any, settings: Any) -> None:
    settings.TUNIX_LOG_MAX_BYTES = 1_000_000
    run = enqueue_child(alice, flood_bytes=5_000_000, lines=0)
    run_once()
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert run.log_truncated
    text = log_text(run)
    assert "[tunixops] log truncated at 1000000 bytes" in text
    stored = sum(
        len(c.encode()) for c in LogChunk.objects.filter(run=run).values_list("chunk", flat=True)
    )
    assert stored < 1_000_000 + 200
    assert run.stdout_tail.endswith("y" * 99 + "\n")


def test_a_chatty_child_loses_no_line(alice: Any) -> None:
    run = enqueue_child(alice, lines=200_000)
    run_once()
    assert status_of(run) == RunStatus.COMPLETED
    text = log_text(run, "stdout")
    assert text.count("\n") == 200_000
    assert text.endswith("line 200000\n") and text.startswith("line 1\n")


def test_shutdown_puts_a_run_back_when_attempts_remain(alice: Any) -> None:
    run = enqueue_child(alice, sleep=30, max_attempts=2)
    with WorkerThread() as worker:
        wait_for(lambda: status_of(run) == RunStatus.RUNNING)
        worker.shutdown()
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING
    assert run.status_reason == "worker shutdown"
    assert run.attempt == 1 and run.worker_id == ""


def test_shutdown_fails_a_run_without_attempts_left(alice: Any) -> None:
    run = enqueue_child(alice, sleep=30, max_attempts=1)
    with WorkerThread() as worker:
        wait_for(lambda: status_of(run) == RunStatus.RUNNING)
        worker.shutdown()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.status_reason == "worker shutdown; no attempts left"


def test_a_stale_run_is_retried_while_attempts_remain(make_run: Any) -> None:
    old = timezone.now() - timedelta(seconds=120)
    retry = make_run(
        RunStatus.RUNNING, worker_id="dead:1", heartbeat_at=old, attempt=1, max_attempts=2
    )
    give_up = make_run(RunStatus.RUNNING, worker_id="dead:1", heartbeat_at=old, attempt=1)
    cancelling = make_run(
        RunStatus.CANCEL_REQUESTED, worker_id="dead:1", heartbeat_at=old, attempt=1
    )
    fresh = make_run(RunStatus.RUNNING, worker_id="alive:1", heartbeat_at=timezone.now(), attempt=1)
    assert Worker().reclaim_stale() == 3
    retry.refresh_from_db()
    assert retry.status == RunStatus.PENDING
    assert "worker dead:1 lost" in retry.status_reason and "retrying" in retry.status_reason
    give_up.refresh_from_db()
    assert (give_up.status, give_up.status_reason) == (RunStatus.FAILED, "worker lost")
    assert status_of(cancelling) == RunStatus.CANCELLED
    assert status_of(fresh) == RunStatus.RUNNING


def test_a_late_outcome_from_a_lost_worker_does_not_overwrite_the_next_attempt(
    alice: Any,
) -> None:
    from runs.state_machine import IllegalTransition, transition

    run = enqueue_child(alice)
    transition(run.pk, RunStatus.RUNNING, worker_id="new:2", attempt=2)
    with pytest.raises(IllegalTransition):
        transition(run.pk, RunStatus.FAILED, where={"worker_id": "old:1", "attempt": 1})
    assert status_of(run) == RunStatus.RUNNING


def test_the_command_validates_its_options() -> None:
    with pytest.raises(CommandError):
        call_command("tunix_worker", "--concurrency", "0")
    with pytest.raises(CommandError):
        call_command("tunix_worker", "--poll-interval", "-1")


def test_the_command_drains_the_queue_with_once(alice: Any) -> None:
    runs = [enqueue_child(alice, lines=2) for _ in range(3)]
    out = StringIO()
    call_command("tunix_worker", "--once", "--concurrency", "2", "--worker-id", "cmd", stdout=out)
    assert "3 run(s) started" in out.getvalue()
    assert all(status_of(r) == RunStatus.COMPLETED for r in runs)
    assert set(Run.objects.values_list("worker_id", flat=True)) == {"cmd"}


def test_max_runs_stops_the_worker(alice: Any) -> None:
    for _ in range(3):
        enqueue_child(alice)
    assert Worker(max_runs=2, poll_interval=0.05).run() == 2
    assert Run.objects.filter(status=RunStatus.PENDING).count() == 1


# -- several real worker processes -----------------------------------------------------------


@pytest.mark.slow
def test_concurrent_workers_execute_every_run_exactly_once(
    alice: Any, spawn_worker: Any, settings: Any
) -> None:
    # Past the default quota of active runs (100) for one user: lifted, this is about workers.
    settings.TUNIX_MAX_ACTIVE_RUNS_PER_USER = 0
    runs = [enqueue_child(alice, lines=1) for _ in range(200)]
    workers = [
        spawn_worker("--once", "--worker-id", f"w{i}", "--poll-interval", "0.05") for i in range(4)
    ]
    for proc in workers:
        assert proc.wait(240) == 0
    assert Run.objects.filter(status=RunStatus.COMPLETED).count() == 200
    assert set(Run.objects.values_list("attempt", flat=True)) == {1}
    for run in runs:
        # A second execution would have appended a second "line 1".
        assert log_text(run) == "line 1\n"
    used = set(Run.objects.values_list("worker_id", flat=True))
    assert len(used) >= 2, f"expected the work to be shared, got {used}"


def test_a_run_of_a_sigkilled_worker_is_reclaimed_and_its_child_dies(
    alice: Any, spawn_worker: Any
) -> None:
    run = enqueue_child(alice, lines=3, sleep=60, max_attempts=1)
    env = {"TUNIX_LEASE_SECONDS": "2", "TUNIX_HEARTBEAT_SECONDS": "0.5"}
    doomed = spawn_worker("--worker-id", "doomed", "--poll-interval", "0.1", **env)
    wait_for(lambda: "line 3" in log_text(run))
    child_pids = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and _cmdline(p).endswith(f"{run_dir(run.pk)}/config.json")
    ]
    assert child_pids
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    wait_for(lambda: not any(process_alive(pid) for pid in child_pids), timeout=5)
    spawn_worker("--worker-id", "rescuer", "--poll-interval", "0.1", **env)
    wait_for(lambda: status_of(run) == RunStatus.FAILED, timeout=15)
    run.refresh_from_db()
    assert run.status_reason == "worker lost"
    # Lines flushed before the crash are kept.
    assert log_text(run) == "line 1\nline 2\nline 3\n"


@pytest.mark.postgres  # LISTEN/NOTIFY
def test_an_idle_worker_wakes_on_notify_not_on_its_poll(alice: Any, spawn_worker: Any) -> None:
    spawn_worker("--worker-id", "idle", "--poll-interval", "30")
    time.sleep(2)  # let it reach its idle LISTEN wait; the poll is 30 s away
    run = enqueue_child(alice, sleep=5)
    began = time.monotonic()
    wait_for(lambda: status_of(run) == RunStatus.RUNNING, timeout=20, interval=0.005)
    # Milliseconds when idle (bench/pickup_latency.py measures it); the bound only has to tell
    # the notification from the 30 s poll on a loaded CI machine.
    assert time.monotonic() - began < 10


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@pytest.mark.postgres
def test_a_worker_refuses_to_start_with_the_web_processes_connection_pool() -> None:
    """A pool sized for short requests would starve the worker's long-lived threads; an `.env`
    that turns it on for every process is refused at start, naming the variable."""
    import subprocess
    import sys

    from tests.conftest import REPO

    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("the pool exists only on PostgreSQL")
    done = subprocess.run(
        [sys.executable, "manage.py", "tunix_worker", "--once"],
        cwd=REPO,
        env={**os.environ, "TUNIX_DB_POOL": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "TUNIX_DB_POOL is for web processes" in done.stderr
