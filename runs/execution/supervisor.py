"""One attempt of a run, supervised: start its job, capture its output, stop it, record the end.

Executor-independent: where the job runs is the executor's business (runs/execution/executor.py);
what a stop, a timeout and an outcome mean is decided here, the same for every executor.
"""

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from artifacts.fs import FORK_INPUT_DIR, ArtifactUnavailable
from artifacts.services import artifacts_copy_step, artifacts_sync
from runs import retry_rules
from runs.execution.executor import Executor, Job, LaunchSpec, RunSetupError
from runs.execution.local import LocalExecutor
from runs.execution.logsink import LogSink
from runs.execution.retry import retrying
from runs.execution.tensorboard import TensorBoardMetrics
from runs.models import LogStream, Run, RunStatus
from runs.recipes import get_recipe
from runs.services import run_dir
from runs.state_machine import IllegalTransition, transition
from traces.services import dataset_write_jsonl

log = logging.getLogger(__name__)

# How long the output of a job that has ended may take to reach the sink.
DRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class StopRequest:
    kind: str  # "cancel", "timeout" or "shutdown"
    message: str
    grace: float


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    reason: str
    exit_code: int | None
    # The job was lost with its cluster (retried like a lost worker), or left running for
    # another worker to adopt (a Ray job when its worker shuts down).
    lost: bool = False
    detached: bool = False


def prepare(run: Run) -> LaunchSpec:
    """Create the run directory with its config (and dataset) and build the command."""
    recipe = get_recipe(run.recipe)
    if recipe is None:
        raise RunSetupError(f"unknown recipe {run.recipe!r}")
    directory = run_dir(run.pk)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(run.config, indent=2, sort_keys=True))
    dataset_file = ""
    if run.dataset_id:
        dataset_file = str(_write_dataset(run.dataset_id, directory))
    parent_env = {}
    if run.continued_from_id is not None and run.continued_from_step is not None:
        parent_env["TUNIX_PARENT_CHECKPOINT"] = str(_copy_parent_step(run, directory))
    argv = recipe.render_argv(
        python=settings.TUNIX_PYTHON or sys.executable,
        run_dir=str(directory),
        config=run.config,
        dataset_file=dataset_file,
        model_id=run.model_id,
        run_id=str(run.pk),
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(directory)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": str(settings.BASE_DIR),
        "TUNIX_RUN_ID": str(run.pk),
        "TUNIX_RUN_DIR": str(directory),
        **recipe.child_env(os.environ),
        **parent_env,
    }
    return LaunchSpec(
        run_id=run.pk,
        attempt=run.attempt,
        argv=argv,
        env=env,
        run_dir=directory,
        devices=tuple(run.device_ids.split(",")) if run.device_ids else (),
        memory_limit_mb=run.memory_limit_mb,
        stop_grace=(
            run.cancel_grace_seconds
            if run.cancel_grace_seconds is not None
            else settings.TUNIX_CANCEL_GRACE_SECONDS
        ),
        ray=recipe.ray if run.executor == "ray" else None,
    )


def _copy_parent_step(run: Run, directory: Path) -> Path:
    """The parent's step, where the child finds it (its path is in TUNIX_PARENT_CHECKPOINT).

    A continuation gets it at the same place in its own directory, so its trainer resumes from
    it as from its own checkpoint. A fork (another recipe, whose trainer would misread a foreign
    checkpoint as its own) gets it under `parent/`, for its entry point to load.
    """
    parent, step = run.continued_from_id, run.continued_from_step
    assert parent is not None and step is not None
    parent_recipe = Run.objects.values_list("recipe", flat=True).get(pk=parent)
    target = directory if parent_recipe == run.recipe else directory / FORK_INPUT_DIR
    try:
        return artifacts_copy_step(source_run_id=parent, step=step, target_dir=target)
    except (OSError, ArtifactUnavailable) as exc:
        raise RunSetupError(
            f"checkpoint step {step} of run {parent} cannot be copied: {exc}"
        ) from exc


def _write_dataset(key: str, directory: Path) -> Path:
    path = directory / "dataset.jsonl"
    try:
        dataset_write_jsonl(key=key, path=path)
    except Exception as exc:
        raise RunSetupError(f"dataset {key!r} cannot be written: {exc}") from exc
    return path


class Execution:
    """Runs one claimed run to its end on a thread of its own."""

    def __init__(
        self,
        run: Run,
        *,
        worker_id: str,
        executor: Executor | None = None,
        on_done: Callable[["Execution"], None] | None = None,
    ) -> None:
        self.run = run
        self.run_id: uuid.UUID = run.pk
        self.worker_id = worker_id
        self.executor = executor or LocalExecutor()
        self.on_done = on_done
        self.sink = LogSink(run.pk, max_bytes=settings.TUNIX_LOG_MAX_BYTES)
        self.tensorboard = TensorBoardMetrics(run.pk, run_dir(run.pk))
        self.job: Job | None = None
        self.outcome: Outcome | None = None
        self._stop: StopRequest | None = None
        self._stop_event = threading.Event()
        self._job_done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"run-{run.pk}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def request_stop(self, kind: str, message: str, grace: float | None = None) -> None:
        """Ask the job to stop; the first request wins (a cancel is not turned into a timeout)."""
        if self._stop is None:
            if grace is None:
                grace = self.run.cancel_grace_seconds
            if grace is None:
                grace = settings.TUNIX_CANCEL_GRACE_SECONDS
            self._stop = StopRequest(kind, message, grace)
            self._stop_event.set()

    def kill_now(self) -> None:
        """Hard-stop the job at once (the worker is exiting without waiting)."""
        if self.job is not None:
            self.job.kill()

    def _main(self) -> None:
        try:
            self.outcome = self._execute()
        except Exception as exc:
            log.exception("run %s: worker error", self.run_id)
            self.outcome = Outcome(RunStatus.FAILED, f"worker error: {exc}", None)
        try:
            self._record(self.outcome)
        finally:
            connection.close()
            if self.on_done is not None:
                self.on_done(self)

    def _execute(self) -> Outcome:
        self.sink.start()
        run = self.run
        if run.max_attempts > 1 or run.attempt > 1:
            # One log for every attempt: where each begins is marked in it.
            self.sink.system(f"attempt {run.attempt} of {run.max_attempts} on {self.worker_id}")
        if run.continued_from_id is not None:
            self.sink.system(
                f"starting from checkpoint step {run.continued_from_step} of run "
                f"{run.continued_from_id}"
            )
        try:
            try:
                self.job = self.executor.launch(prepare(self.run), self.sink)
            except RunSetupError as exc:
                self.sink.system(f"run could not start: {exc}")
                return Outcome(RunStatus.FAILED, f"could not start: {exc}", None)
            syncer = threading.Thread(
                target=self._sync_artifacts_while_running, name=f"artifacts-{self.run_id}"
            )
            syncer.start()
            code = self._supervise(self.job)
            if code is None:
                # Detached: the job runs on without this worker.
                self._job_done.set()
                syncer.join()
                return Outcome(
                    RunStatus.PENDING,
                    f"worker shutdown; its Ray job {self.run.ray_submission_id or ''} keeps "
                    "running for the next worker to adopt",
                    None,
                    detached=True,
                )
            self.job.kill()  # whatever the job left behind goes with it
            self.job.drain(DRAIN_SECONDS)
            self.job.close()
            self._job_done.set()
            syncer.join()
        finally:
            self.sink.close()
        # Registered before the terminal status, so a finished run lists all its files.
        self._sync_artifacts()
        self.tensorboard.poll(final=True)
        return self._outcome(self.job, code)

    def _sync_artifacts_while_running(self) -> None:
        """Register checkpoints as they commit, off the log-capture and supervision paths."""
        try:
            while not self._job_done.wait(settings.TUNIX_ARTIFACT_SYNC_SECONDS):
                self._sync_artifacts()
                self.tensorboard.poll()
        finally:
            connection.close()

    def _sync_artifacts(self) -> None:
        try:
            artifacts_sync(run_id=self.run_id)
        except Exception:
            # A registry hiccup must not fail the training run; the next sync catches up.
            log.exception("run %s: artifact sync failed", self.run_id)

    def _supervise(self, job: Job) -> int | None:
        """The job's exit status, once it has ended; None when it was detached instead."""
        deadline = time.monotonic() + self.run.timeout_seconds - job.ran_before
        kill_at: float | None = None
        while True:
            if self._stop_event.wait(0.02 if kill_at is None else 0.05):
                self._stop_event.clear()
                if kill_at is None and self._stop is not None:
                    stop = self._stop
                    if stop.kind == "shutdown" and job.detach():
                        self.sink.system(f"{stop.message}: the job keeps running")
                        return None
                    self.sink.system(f"{stop.message}: sending SIGTERM")
                    job.terminate()
                    kill_at = time.monotonic() + stop.grace
            code = job.poll()
            if code is not None:
                return code
            now = time.monotonic()
            if kill_at is None and now >= deadline:
                self.request_stop("timeout", f"timed out after {self.run.timeout_seconds} s", None)
            elif kill_at is not None and now >= kill_at:
                self.sink.system("grace period over: sending SIGKILL")
                job.kill()
                kill_at = float("inf")

    def _outcome(self, job: Job, code: int) -> Outcome:
        stop = self._stop
        if job.lost_reason is not None and (stop is None or stop.kind == "shutdown"):
            return Outcome(RunStatus.FAILED, job.lost_reason, None, lost=True)
        if stop is not None and stop.kind == "cancel":
            return Outcome(RunStatus.CANCELLED, "", code)
        if stop is not None and stop.kind == "timeout":
            return Outcome(RunStatus.TIMEOUT, stop.message, code)
        if stop is not None and stop.kind == "shutdown":
            return Outcome(RunStatus.PENDING, "worker shutdown", code)
        if code == 0:
            return Outcome(RunStatus.COMPLETED, "", code)
        return Outcome(RunStatus.FAILED, job.describe_exit(code), code)

    def _record(self, outcome: Outcome) -> None:
        """Write the outcome through the state machine, riding out a database outage.

        Tails the database refuses are dropped rather than retried, so the run always reaches
        its terminal status once the database answers.
        """

        def with_tails() -> None:
            close_old_connections()
            self._transition(outcome, tails=True)

        def without_tails(exc: DatabaseError) -> None:
            log.error("run %s: its output tails were refused: %s", self.run_id, exc)

            def bare() -> None:
                close_old_connections()
                self._transition(outcome, tails=False)

            retrying(bare, what=f"run {self.run_id}: outcome", refused=self._give_up)

        try:
            retrying(with_tails, what=f"run {self.run_id}: outcome", refused=without_tails)
        except IllegalTransition as exc:
            log.warning("run %s: outcome %s not recorded: %s", self.run_id, outcome.status, exc)

    def _retry(self, outcome: Outcome) -> tuple[str, datetime] | None:
        """The reason and the earliest next claim, when a retry rule takes this ending."""
        run = self.run
        if run.attempt >= run.max_attempts:
            return None
        names = retry_rules.endings(
            exit_code=outcome.exit_code,
            timed_out=outcome.status == RunStatus.TIMEOUT,
            oom=outcome.reason.startswith("out of memory"),
            lost=outcome.lost,
        )
        rule = retry_rules.matching(run.retry_on, names)
        if rule is None:
            return None
        recipe = get_recipe(run.recipe)
        base = recipe.retry_backoff_seconds if recipe is not None else 10.0
        wait = retry_rules.backoff_seconds(base, run.attempt)
        reason = (
            f"{outcome.reason}; retrying in {wait:g} s (rule {rule}, "
            f"attempt {run.attempt} of {run.max_attempts})"
        )
        return reason, timezone.now() + timedelta(seconds=wait)

    def _give_up(self, exc: DatabaseError) -> None:
        # Left running with no heartbeat: the lease sweep ends it.
        log.error("run %s: outcome refused by the database: %s", self.run_id, exc)

    def _transition(self, outcome: Outcome, *, tails: bool) -> None:
        fields: dict[str, object] = {
            "exit_code": outcome.exit_code,
            "log_truncated": self.sink.truncated,
        }
        if tails:
            fields["stdout_tail"] = self.sink.tails[LogStream.STDOUT]
            fields["stderr_tail"] = self.sink.tails[LogStream.STDERR]
        if self.run.executor == "ray" and not outcome.detached:
            # This attempt's job is seen to its end: a retry submits a new one.
            fields["job_output_offset"] = None
        owned = {"worker_id": self.worker_id, "attempt": self.run.attempt}
        active = {RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED}
        latest = Run.objects.only("status", "status_reason").get(pk=self.run_id)
        current = latest.status
        target, reason = outcome.status, outcome.reason
        if target == RunStatus.PENDING:
            if current == RunStatus.CANCEL_REQUESTED and outcome.detached:
                # The worker that takes the run back stops the job (`reclaimed`).
                pass
            elif current == RunStatus.CANCEL_REQUESTED:
                target, reason = RunStatus.CANCELLED, ""
            elif self.run.attempt >= self.run.max_attempts and not outcome.detached:
                target, reason = RunStatus.FAILED, "worker shutdown; no attempts left"
        elif current == RunStatus.CANCEL_REQUESTED and target == RunStatus.FAILED:
            # The job died of the cancel before our own signal went out.
            target, reason = RunStatus.CANCELLED, ""
        elif current == RunStatus.RUNNING and target in (RunStatus.FAILED, RunStatus.TIMEOUT):
            retry = self._retry(outcome)
            if retry is not None:
                target, reason, fields["not_before"] = RunStatus.PENDING, *retry
        if target == RunStatus.CANCELLED:
            reason = latest.status_reason.replace("cancel requested by", "cancelled by", 1)
        transition(
            self.run_id,
            target,
            reason=reason or None,
            only_from=active,
            where=owned,
            **fields,
        )
