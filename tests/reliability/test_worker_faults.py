"""Worker faults and load: floods and sudden death. Each test is bounded in time.

Many workers sharing one queue, each run executed once: tests/runs/test_worker.py.
"""

import os
import signal
import time
from typing import Any

import pytest
from django.db.models import Sum
from django.db.models.functions import Length

from runs.models import LogChunk, Run, RunStatus
from runs.services import run_dir
from tests.artifacts.servers import proc_status
from tests.runs.helpers import TERMINAL, enqueue_child, log_text, status_of, wait_for


def peak_rss_kib(pid: int) -> int:
    return proc_status(pid, "VmHWM")


pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


@pytest.mark.slow
def test_a_child_printing_a_gigabyte_is_bounded_in_the_database_and_the_worker(
    alice: Any, spawn_worker: Any
) -> None:
    limit = 20 * 1024 * 1024
    run = enqueue_child(alice, flood_bytes=10**9, timeout_seconds=300)
    worker = spawn_worker("--poll-interval", "0.1", TUNIX_LOG_MAX_BYTES=str(limit))
    wait_for(lambda: status_of(run) in TERMINAL, timeout=240, interval=0.2)
    # VmHWM, read while the worker lives: its own peak since exec. (wait4's ru_maxrss would also
    # count the pytest process it was forked from.)
    peak = peak_rss_kib(worker.pid) / 1024
    worker.terminate()
    assert worker.wait(30) == 0
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_reason
    assert run.log_truncated
    stored = LogChunk.objects.filter(run=run).aggregate(s=Sum(Length("chunk")))["s"]
    assert stored <= limit + 1024
    assert run.stdout_tail.endswith("y" * 99 + "\n")
    assert peak < 256, f"worker peak RSS {peak:.0f} MB"


def test_a_sigkilled_worker_loses_no_flushed_line_and_its_run_is_retried(
    alice: Any, spawn_worker: Any
) -> None:
    run = enqueue_child(alice, lines=5, rate=50, sleep=60, max_attempts=2)
    env = {"TUNIX_LEASE_SECONDS": "2", "TUNIX_HEARTBEAT_SECONDS": "0.5"}
    doomed = spawn_worker("--worker-id", "doomed", "--poll-interval", "0.1", **env)
    wait_for(lambda: "line 5\n" in log_text(run))
    began = time.monotonic()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    spawn_worker("--worker-id", "rescuer", "--poll-interval", "0.1", **env)
    wait_for(lambda: Run.objects.get(pk=run.pk).attempt == 2, timeout=20)
    assert time.monotonic() - began < 2 + 5, "reclaimed within the lease (plus a sweep)"
    run.refresh_from_db()
    assert run.worker_id == "rescuer" and run.status == RunStatus.RUNNING
    # The first attempt's lines are all there; the second attempt appends after them.
    wait_for(lambda: log_text(run).count("line 5\n") == 2, timeout=20)
    seqs = list(LogChunk.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert not Run.objects.filter(status=RunStatus.RUNNING, worker_id="doomed").exists()
    assert os.path.isdir(run_dir(run.pk))
