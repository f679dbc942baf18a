"""The run worker: claims pending runs, executes them, keeps their leases, reclaims dead ones.

Any number of workers on any number of hosts share one queue. A claim is a short transaction
that takes the best pending row with `FOR UPDATE SKIP LOCKED` and moves it to `running` through
the state machine, so two workers never start the same run. Each claimed run holds a lease,
renewed by heartbeat; a run whose heartbeat is older than `TUNIX_LEASE_SECONDS` belongs to a dead
worker and any live worker puts it back (or fails it when it is out of attempts). The worker's own
heartbeat row (`WorkerHeartbeat`) is renewed on the same beat, busy or idle, for readiness checks
and metrics.
"""

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import Error, connection, transaction
from django.utils import timezone

from runs import notify
from runs.executor import Execution
from runs.models import Run, RunStatus, WorkerHeartbeat
from runs.state_machine import IllegalTransition, transition

log = logging.getLogger(__name__)

# A dead worker's heartbeat row is kept this long, so its silence shows in metrics, then dropped.
FORGET_WORKER_SECONDS = 24 * 3600


def about(run_id: uuid.UUID) -> dict[str, Any]:
    """`extra` for a log record about a run: structured (JSON) logs carry its id as a field."""
    return {"run_id": str(run_id)}


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        *,
        worker_id: str | None = None,
        concurrency: int = 1,
        once: bool = False,
        max_runs: int | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.once = once
        self.max_runs = max_runs
        self.poll_interval = poll_interval or settings.TUNIX_POLL_INTERVAL_SECONDS
        self.lease_seconds = settings.TUNIX_LEASE_SECONDS
        self.heartbeat_seconds = min(settings.TUNIX_HEARTBEAT_SECONDS, self.lease_seconds / 3)
        self.executions: dict[uuid.UUID, Execution] = {}
        self.started = 0
        self.stopping = False
        self.listener = notify.Listener((notify.RUNS_CHANNEL,))
        self._lock = threading.Lock()
        self._next_heartbeat = 0.0
        self._next_presence = 0.0
        self._next_sweep = 0.0
        self._started_at = timezone.now()
        self._cancels_seen: set[uuid.UUID] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            log.warning("second signal: killing children and exiting now")
            for execution in list(self.executions.values()):
                execution._kill_group(signal.SIGKILL)
            os._exit(1)
        log.info("signal %s: stopping; running children are terminated", signum)
        self.shutdown()

    def shutdown(self) -> None:
        """Stop claiming and terminate running children; their runs are retried or failed."""
        self.stopping = True
        for execution in list(self.executions.values()):
            execution.request_stop("shutdown", "worker shutdown")

    def run(self) -> int:
        """The loop; returns how many runs this worker started."""
        log.info("worker %s: started (concurrency %d)", self.worker_id, self.concurrency)
        try:
            while not self._finished():
                self._step_safely()
        finally:
            for execution in list(self.executions.values()):
                execution.join()
            self.listener.close()
            self._forget_self()
            connection.close()
        log.info("worker %s: stopped after %d run(s)", self.worker_id, self.started)
        return self.started

    def _finished(self) -> bool:
        idle = not self.executions
        if self.stopping or (self.max_runs is not None and self.started >= self.max_runs):
            return idle
        return False

    def _step_safely(self) -> None:
        try:
            found = self.step()
        except Error as exc:
            log.warning("worker %s: database error, retrying: %s", self.worker_id, exc)
            connection.close()
            time.sleep(min(self.poll_interval, 1.0))
            return
        if self.once and not found and not self.executions:
            self.stopping = True
            return
        if not found:
            self.listener.wait(self._wait_time())

    def _wait_time(self) -> float:
        due = (
            min(self._next_heartbeat, self._next_presence)
            if self.executions
            else self._next_presence
        )
        return min(self.poll_interval, max(due - time.monotonic(), 0.0))

    # -- one turn of the loop ----------------------------------------------------------------

    def step(self) -> bool:
        """Do what is due; return whether a run was claimed (then look again at once)."""
        self._reap()
        if self.stopping:
            # Also reaches a run claimed while the signal arrived; the first stop request wins.
            for execution in list(self.executions.values()):
                execution.request_stop("shutdown", "worker shutdown")
        now = time.monotonic()
        if now >= self._next_presence:
            self.beat()
            self._next_presence = now + self.heartbeat_seconds
        if now >= self._next_sweep:
            self.reclaim_stale()
            self.forget_dead_workers()
            self._next_sweep = now + max(self.lease_seconds / 3, 1.0)
        if self.executions:
            self.check_cancels()
            if now >= self._next_heartbeat:
                self.heartbeat()
                self._next_heartbeat = now + self.heartbeat_seconds
        if self.stopping or len(self.executions) >= self.concurrency:
            return False
        if self.max_runs is not None and self.started >= self.max_runs:
            return False
        run = self.claim()
        if run is None:
            return False
        self._start(run)
        return True

    def claim(self) -> Run | None:
        with transaction.atomic():
            run = Run.objects.claimable().select_for_update(skip_locked=True).first()
            if run is None:
                return None
            return transition(
                run.pk,
                RunStatus.RUNNING,
                reason="",
                worker_id=self.worker_id,
                attempt=run.attempt + 1,
                exit_code=None,
            )

    def _start(self, run: Run) -> None:
        log.info(
            "run %s: claimed by %s (attempt %d)",
            run.pk,
            self.worker_id,
            run.attempt,
            extra=about(run.pk),
        )
        execution = Execution(run, worker_id=self.worker_id, on_done=self._on_done)
        with self._lock:
            self.executions[run.pk] = execution
        self.started += 1
        execution.start()

    def _on_done(self, execution: Execution) -> None:
        log.info(
            "run %s: finished as %s",
            execution.run_id,
            execution.outcome,
            extra=about(execution.run_id),
        )

    def _reap(self) -> None:
        with self._lock:
            for run_id, execution in list(self.executions.items()):
                if execution.done:
                    del self.executions[run_id]
                    self._cancels_seen.discard(run_id)

    def heartbeat(self) -> None:
        Run.objects.filter(pk__in=list(self.executions), worker_id=self.worker_id).update(
            heartbeat_at=timezone.now()
        )

    def beat(self) -> None:
        """Say this worker is alive, busy or idle (its `WorkerHeartbeat` row)."""
        now = timezone.now()
        if not WorkerHeartbeat.objects.filter(worker_id=self.worker_id).update(last_seen=now):
            WorkerHeartbeat.objects.update_or_create(
                worker_id=self.worker_id,
                defaults={
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "started_at": self._started_at,
                    "last_seen": now,
                },
            )

    def forget_dead_workers(self) -> int:
        deleted, _ = WorkerHeartbeat.objects.forgotten(
            timezone.now(), FORGET_WORKER_SECONDS
        ).delete()
        return deleted

    def _forget_self(self) -> None:
        # A clean stop is no outage: the row goes, and readiness and metrics stop counting it.
        try:
            WorkerHeartbeat.objects.filter(worker_id=self.worker_id).delete()
        except Error as exc:
            log.warning("worker %s: cannot remove its heartbeat row: %s", self.worker_id, exc)

    def check_cancels(self) -> None:
        """Pass cancel requests on to the children they concern."""
        wanted = Run.objects.filter(
            pk__in=list(self.executions), status=RunStatus.CANCEL_REQUESTED
        ).values_list("pk", "status_reason")
        for run_id, reason in wanted:
            execution = self.executions.get(run_id)
            if execution is not None and run_id not in self._cancels_seen:
                self._cancels_seen.add(run_id)
                execution.request_stop("cancel", reason or "cancel requested")

    def reclaim_stale(self) -> int:
        """Put back (or fail) runs whose worker stopped renewing their lease."""
        stale = Run.objects.stale(timezone.now(), self.lease_seconds).exclude(
            pk__in=list(self.executions)
        )
        count = 0
        for run in stale.only("pk", "status", "attempt", "max_attempts", "worker_id")[:100]:
            target, reason = self._reclaim_target(run)
            try:
                transition(
                    run.pk,
                    target,
                    reason=reason,
                    where={"worker_id": run.worker_id, "attempt": run.attempt},
                )
                count += 1
                log.warning("run %s: %s", run.pk, reason, extra=about(run.pk))
            except IllegalTransition:
                continue  # another worker got there first, or the run moved on
        return count

    def _reclaim_target(self, run: Run) -> tuple[RunStatus, str]:
        lost = f"worker {run.worker_id} lost (no heartbeat for {self.lease_seconds} s)"
        if run.status == RunStatus.CANCEL_REQUESTED:
            return RunStatus.CANCELLED, f"{lost} while cancelling"
        if run.attempt < run.max_attempts:
            return (
                RunStatus.PENDING,
                f"{lost}; retrying (attempt {run.attempt} of {run.max_attempts})",
            )
        return RunStatus.FAILED, "worker lost"
