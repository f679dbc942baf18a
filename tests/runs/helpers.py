"""Helpers for tests that run real workers and real children."""

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from runs.execution.worker import Worker
from runs.models import LogChunk, Run, RunStatus
from runs.services import run_enqueue


def enqueue_child(user: Any = None, **config: Any) -> Run:
    options = {k: config.pop(k) for k in list(config) if k in RUN_FIELDS}
    return run_enqueue(recipe="child", created_by=user, config=config, **options)


RUN_FIELDS = {
    "timeout_seconds",
    "max_attempts",
    "priority",
    "cancel_grace_seconds",
    "name",
    "devices",
    "memory_limit_mb",
    "retry_on",
}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def status_of(run: Run) -> str:
    return Run.objects.values_list("status", flat=True).get(pk=run.pk)


def log_text(run: Run, stream: str | None = None) -> str:
    chunks = LogChunk.objects.filter(run=run).order_by("seq")
    if stream:
        chunks = chunks.filter(stream=stream)
    return "".join(chunks.values_list("chunk", flat=True))


def seqs(run_id: uuid.UUID) -> list[int]:
    return list(
        LogChunk.objects.filter(run_id=run_id).order_by("seq").values_list("seq", flat=True)
    )


class WorkerThread:
    """An in-process worker on a thread, for tests that act while a run is going."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("poll_interval", 0.05)
        self.worker = Worker(**options)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.shutdown()
        self.thread.join(30)
        assert not self.thread.is_alive(), "worker did not stop"


TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED}


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
