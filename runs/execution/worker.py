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
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import Error, connection, transaction
from django.utils import timezone

from runs import retention
from runs.execution.cgroups import detect
from runs.execution.devices import DevicePool
from runs.execution.executor import Executor
from runs.execution.local import ChildUser, LocalExecutor
from runs.execution.ray import RayExecutor
from runs.execution.retry import OUTAGES
from runs.execution.supervisor import Execution
from runs.live import notify
from runs.models import FORGET_WORKER_SECONDS, Run, RunStatus, WorkerHeartbeat
from runs.recipes import DEFAULT_POOL
from runs.services import run_waiting_reasons_refresh
from runs.state_machine import IllegalTransition, transition
from tunixops.text import storable

log = logging.getLogger(__name__)

# How often an idle or busy worker asks whether today's prune is due (TUNIX_RETENTION_HOUR).
RETENTION_CHECK_SECONDS = 60.0
# How long a stopping worker waits for its prune thread to finish the batch it is in.
RETENTION_JOIN_SECONDS = 60.0


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
        devices: tuple[str, ...] = (),
        device_kind: str = "",
        memory_limit_mb: int | None = None,
        child_user: str = "",
        use_cgroups: bool = True,
        pools: tuple[str, ...] = (DEFAULT_POOL,),
        drain_on_sigterm: bool = False,
        drain_seconds: float | None = None,
    ) -> None:
        self.worker_id = worker_id or default_worker_id()
        self.pools = pools
        self.drain_on_sigterm = drain_on_sigterm
        self.drain_seconds = (
            settings.TUNIX_WORKER_DRAIN_SECONDS if drain_seconds is None else drain_seconds
        )
        # Draining: claim nothing, let running runs end until the deadline, then stop them.
        self.drain_deadline: float | None = None
        self.devices = DevicePool(device_kind, devices)
        cgroups, how = detect() if use_cgroups else (None, "turned off (TUNIX_WORKER_CGROUPS)")
        self.cgroups_note = how
        self.executor = LocalExecutor(
            cgroups=cgroups,
            child_user=ChildUser.resolve(child_user) if child_user else None,
            device_kind=device_kind,
            default_memory_limit_mb=memory_limit_mb,
        )
        self.executors: dict[str, Executor] = {"local": self.executor}
        ray = RayExecutor(
            settings.RAY_ADDRESS,
            python=settings.TUNIX_RAY_PYTHON,
            submit_retry_seconds=settings.TUNIX_RAY_SUBMIT_RETRY_SECONDS,
            lost_seconds=settings.TUNIX_RAY_LOST_SECONDS,
        )
        # Why this worker leaves Ray runs to others, or "" when it submits them.
        self.ray_note = ray.unavailable() or ""
        if not self.ray_note:
            self.executors["ray"] = ray
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
        self._next_retention = 0.0
        self.prune_thread: threading.Thread | None = None
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
                execution.kill_now()
            os._exit(1)
        if self.drain_on_sigterm and signum == signal.SIGTERM and self.drain_deadline is None:
            log.info("signal %s: draining (a second signal stops the runs)", signum)
            self.drain()
            return
        log.info("signal %s: stopping; running children are terminated", signum)
        self.shutdown()

    def drain(self) -> None:
        """Stop claiming; running runs may finish within the drain timeout, then are stopped."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_seconds
            log.info(
                "worker %s: draining: %d run(s) may finish within %.0f s",
                self.worker_id,
                len(self.executions),
                self.drain_seconds,
            )
            # The next step writes "draining" into the heartbeat row at once.
            self._next_presence = 0.0

    def shutdown(self) -> None:
        """Stop claiming and terminate running children; their runs are retried or failed."""
        self.stopping = True
        for execution in list(self.executions.values()):
            execution.request_stop("shutdown", "worker shutdown")

    def run(self) -> int:
        """The loop; returns how many runs this worker started."""
        log.info("worker %s: started (concurrency %d)", self.worker_id, self.concurrency)
        cgroups = self.executor.cgroups
        if cgroups is None:
            log.warning(
                "worker %s: no cgroups (%s): a run's processes are contained by their process "
                "group only, and memory limits are not enforced",
                self.worker_id,
                self.cgroups_note,
            )
        else:
            log.info("worker %s: each run gets its own %s", self.worker_id, self.cgroups_note)
            cgroups.sweep_dead_workers()
        if self.ray_note:
            log.info(
                "worker %s: Ray runs are left to other workers: %s", self.worker_id, self.ray_note
            )
        else:
            log.info("worker %s: Ray runs go to %s", self.worker_id, settings.RAY_ADDRESS)
        if self.devices.total:
            log.info(
                "worker %s: %d %s device(s): %s",
                self.worker_id,
                self.devices.total,
                self.devices.kind,
                ",".join(self.devices.ids),
            )
        try:
            while not self._finished():
                self._step_safely()
        finally:
            for execution in list(self.executions.values()):
                execution.join()
            if self.prune_thread is not None:
                # `stopping` is set: the prune stops after its current batch.
                self.prune_thread.join(RETENTION_JOIN_SECONDS)
            self.listener.close()
            self._forget_self()
            connection.close()
        log.info("worker %s: stopped after %d run(s)", self.worker_id, self.started)
        return self.started

    def _finished(self) -> bool:
        idle = not self.executions
        done = self.stopping or self.drain_deadline is not None
        if done or (self.max_runs is not None and self.started >= self.max_runs):
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
        if self.drain_deadline is not None and now >= self.drain_deadline and not self.stopping:
            log.warning("worker %s: drain timeout: stopping the runs left", self.worker_id)
            self.shutdown()
        if now >= self._next_presence:
            self.beat()
            self._next_presence = now + self.heartbeat_seconds
        if now >= self._next_sweep:
            self.reclaim_stale()
            self.forget_dead_workers()
            run_waiting_reasons_refresh(lease_seconds=self.lease_seconds)
            self._next_sweep = now + max(self.lease_seconds / 3, 1.0)
        if now >= self._next_retention:
            self.maybe_prune()
            self._next_retention = now + RETENTION_CHECK_SECONDS
        if self.executions:
            self.check_cancels()
            if now >= self._next_heartbeat:
                self.heartbeat()
                self._next_heartbeat = now + self.heartbeat_seconds
        if self.stopping or self.drain_deadline is not None:
            return False
        if len(self.executions) >= self.concurrency:
            return False
        if self.max_runs is not None and self.started >= self.max_runs:
            return False
        run = self.claim()
        if run is None:
            return False
        self._start(run)
        return True

    def claim(self) -> Run | None:
        free = len(self.devices.free())
        with transaction.atomic():
            run = (
                Run.objects.claimable_by(
                    pools=self.pools,
                    free_devices=free,
                    total_devices=self.devices.total,
                    executors=tuple(self.executors),
                )
                .select_for_update(skip_locked=True)
                .first()
            )
            if run is None:
                return None
            ids = self.devices.pick(run.devices)
            claimed = transition(
                run.pk,
                RunStatus.RUNNING,
                reason="",
                worker_id=self.worker_id,
                attempt=run.attempt + 1,
                exit_code=None,
                device_ids=",".join(ids),
            )
        # Held from the claim until the run's execution has ended, all its processes gone.
        self.devices.hold(claimed.pk, ids)
        return claimed

    def _start(self, run: Run) -> None:
        log.info(
            "run %s: claimed by %s (attempt %d)",
            run.pk,
            self.worker_id,
            run.attempt,
            extra=about(run.pk),
        )
        execution = Execution(
            run,
            worker_id=self.worker_id,
            executor=self.executors[run.executor],
            on_done=self._on_done,
        )
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
                    self.devices.release(run_id)

    def heartbeat(self) -> None:
        Run.objects.filter(pk__in=list(self.executions), worker_id=self.worker_id).update(
            heartbeat_at=timezone.now()
        )

    def beat(self) -> None:
        """Say this worker is alive, busy or idle (its `WorkerHeartbeat` row), and whether a
        write it must make has been failing for TUNIX_WORKER_STUCK_SECONDS (then it is stuck)."""
        if WorkerHeartbeat.objects.filter(worker_id=self.worker_id, drain_requested=True).exists():
            self.drain()
        now = timezone.now()
        state: dict[str, Any] = {
            "last_seen": now,
            "stuck_reason": "",
            "stuck_since": None,
            "devices_total": self.devices.total,
            "devices_busy": self.devices.busy,
            "pools": list(self.pools),
            "executors": list(self.executors),
            "draining": self.drain_deadline is not None,
            "drain_deadline": (
                now + timedelta(seconds=self.drain_deadline - time.monotonic())
                if self.drain_deadline is not None
                else None
            ),
        }
        outage = OUTAGES.oldest()
        if outage is not None and outage[0] >= settings.TUNIX_WORKER_STUCK_SECONDS:
            seconds, what, error = outage
            state["stuck_reason"] = storable(f"{what} failing for {seconds:.0f} s: {error}")[:1000]
            state["stuck_since"] = now - timedelta(seconds=seconds)
            log.error("worker %s: stuck: %s", self.worker_id, state["stuck_reason"])
        if not WorkerHeartbeat.objects.filter(worker_id=self.worker_id).update(**state):
            WorkerHeartbeat.objects.update_or_create(
                worker_id=self.worker_id,
                defaults={
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "started_at": self._started_at,
                    **state,
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

    # -- retention ---------------------------------------------------------------------------

    def maybe_prune(self, now: datetime | None = None) -> threading.Thread | None:
        """Start today's prune on a thread of its own if it is due (TUNIX_RETENTION_HOUR), so
        the loop keeps claiming and beating meanwhile; the thread skips it if another worker
        holds the retention lock. Returns the thread it started."""
        if settings.TUNIX_RETENTION_HOUR is None or not settings.TUNIX_RETENTION_DAYS:
            return None
        if self.stopping or (self.prune_thread is not None and self.prune_thread.is_alive()):
            return None
        when = now or timezone.now()
        if not retention.prune_due(when):
            return None
        self.prune_thread = threading.Thread(
            target=self._prune, args=(when,), name="retention", daemon=True
        )
        self.prune_thread.start()
        return self.prune_thread

    def _prune(self, when: datetime) -> None:
        try:
            report = retention.scheduled_prune(
                trigger=f"worker {self.worker_id}", now=when, should_stop=lambda: self.stopping
            )
            if report is None:
                log.info("worker %s: retention: another worker prunes today", self.worker_id)
            else:
                for line in report.lines():
                    log.info("worker %s: retention: %s", self.worker_id, line)
        except Exception:
            # A failed prune is recorded (RetentionPrune.error) and tried again tomorrow; the
            # worker goes on running runs.
            log.exception("worker %s: retention: prune failed", self.worker_id)
        finally:
            connection.close()

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
        if "ray" not in self.executors:
            # A Ray run's job outlives its worker: a worker that can reach the cluster takes
            # it back, to adopt the job or to stop it.
            stale = stale.exclude(executor="ray")
        count = 0
        fields = ("pk", "status", "attempt", "max_attempts", "worker_id", "retry_on", "executor")
        for run in stale.only(*fields)[:100]:
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
            # On this host, whatever the dead attempt left (escaped daemons) goes now; a Ray job
            # of a run that is not to adopt it is stopped.
            self.executors[run.executor].reclaimed(run.pk, run.attempt)
        return count

    def _reclaim_target(self, run: Run) -> tuple[RunStatus, str]:
        lost = f"worker {run.worker_id} lost (no heartbeat for {self.lease_seconds} s)"
        if run.status == RunStatus.CANCEL_REQUESTED:
            return RunStatus.CANCELLED, f"{lost} while cancelling"
        if run.executor == "ray":
            # Its job runs on without the worker: the next claim adopts it (no attempt spent).
            return RunStatus.PENDING, f"{lost}; its Ray job is adopted by the next worker"
        if run.attempt < run.max_attempts and "worker_lost" in run.retry_on:
            return (
                RunStatus.PENDING,
                f"{lost}; retrying (attempt {run.attempt} of {run.max_attempts})",
            )
        return RunStatus.FAILED, "worker lost"
