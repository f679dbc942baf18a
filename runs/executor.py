"""One run's child process: start it, capture its output, stop it, record how it ended."""

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings
from django.db import Error, close_old_connections, connection

from artifacts.services import artifacts_sync
from runs.logsink import LogSink
from runs.models import LogStream, Run, RunStatus
from runs.recipes import get_recipe
from runs.services import run_dir
from runs.state_machine import IllegalTransition, transition
from traces.services import dataset_write_jsonl

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_worker() -> None:
    # If the worker is SIGKILLed, the kernel kills the child too, so a reclaimed run is never
    # executed twice at once. Runs between fork and exec: only an async-signal-safe syscall.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RunSetupError(Exception):
    """The run cannot start (unknown recipe, missing dataset, unstartable command)."""


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


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def prepare(run: Run) -> tuple[list[str], dict[str, str], Path]:
    """Create the run directory with its config (and dataset) and build the command."""
    recipe = get_recipe(run.recipe)
    if recipe is None:
        raise RunSetupError(f"unknown recipe {run.recipe!r}")
    directory = run_dir(run.pk)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(run.config, indent=2, sort_keys=True))
    dataset_file = ""
    if run.dataset_key:
        dataset_file = str(_write_dataset(run.dataset_key, directory))
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
        **recipe.env,
    }
    return argv, env, directory


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
        on_done: Callable[["Execution"], None] | None = None,
    ) -> None:
        self.run = run
        self.run_id: uuid.UUID = run.pk
        self.worker_id = worker_id
        self.on_done = on_done
        self.sink = LogSink(run.pk, max_bytes=settings.TUNIX_LOG_MAX_BYTES)
        self.process: subprocess.Popen[bytes] | None = None
        self.outcome: Outcome | None = None
        self._stop: StopRequest | None = None
        self._stop_event = threading.Event()
        self._child_done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"run-{run.pk}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def request_stop(self, kind: str, message: str, grace: float | None = None) -> None:
        """Ask the child to stop; the first request wins (a cancel is not turned into a timeout)."""
        if self._stop is None:
            if grace is None:
                grace = self.run.cancel_grace_seconds
            if grace is None:
                grace = settings.TUNIX_CANCEL_GRACE_SECONDS
            self._stop = StopRequest(kind, message, grace)
            self._stop_event.set()

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
        try:
            try:
                argv, env, cwd = prepare(self.run)
                self.process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=_die_with_worker,
                    bufsize=0,
                )
            except (RunSetupError, OSError) as exc:
                self.sink.system(f"run could not start: {exc}")
                return Outcome(RunStatus.FAILED, f"could not start: {exc}", None)
            readers = [
                self._reader(self.process.stdout, "stdout"),
                self._reader(self.process.stderr, "stderr"),
            ]
            syncer = threading.Thread(
                target=self._sync_artifacts_while_running, name=f"artifacts-{self.run_id}"
            )
            syncer.start()
            code = self._supervise(self.process)
            self._kill_group(signal.SIGKILL)  # whatever the child left behind goes with it
            for reader in readers:
                reader.join(10)
            self._child_done.set()
            syncer.join()
        finally:
            self.sink.close()
        # Registered before the terminal status, so a finished run lists all its files.
        self._sync_artifacts()
        return self._outcome(code)

    def _sync_artifacts_while_running(self) -> None:
        """Register checkpoints as they commit, off the log-capture and supervision paths."""
        try:
            while not self._child_done.wait(settings.TUNIX_ARTIFACT_SYNC_SECONDS):
                self._sync_artifacts()
        finally:
            connection.close()

    def _sync_artifacts(self) -> None:
        try:
            artifacts_sync(run_id=self.run_id)
        except Exception:
            # A registry hiccup must not fail the training run; the next sync catches up.
            log.exception("run %s: artifact sync failed", self.run_id)

    def _reader(self, pipe: IO[bytes] | None, stream: str) -> threading.Thread:
        assert pipe is not None
        fd = pipe.fileno()

        def pump() -> None:
            try:
                while data := os.read(fd, 65536):
                    self.sink.write(stream, data)
            finally:
                pipe.close()

        thread = threading.Thread(target=pump, name=f"{stream}-{self.run_id}", daemon=True)
        thread.start()
        return thread

    def _supervise(self, process: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + self.run.timeout_seconds
        kill_at: float | None = None
        while True:
            if self._stop_event.wait(0.02 if kill_at is None else 0.05):
                self._stop_event.clear()
                if kill_at is None and self._stop is not None:
                    stop = self._stop
                    self.sink.system(f"{stop.message}: sending SIGTERM")
                    self._kill_group(signal.SIGTERM)
                    kill_at = time.monotonic() + stop.grace
            code = process.poll()
            if code is not None:
                return code
            now = time.monotonic()
            if kill_at is None and now >= deadline:
                self.request_stop("timeout", f"timed out after {self.run.timeout_seconds} s", None)
            elif kill_at is not None and now >= kill_at:
                self.sink.system("grace period over: sending SIGKILL")
                self._kill_group(signal.SIGKILL)
                kill_at = float("inf")

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _outcome(self, code: int) -> Outcome:
        stop = self._stop
        if stop is not None and stop.kind == "cancel":
            return Outcome(RunStatus.CANCELLED, "", code)
        if stop is not None and stop.kind == "timeout":
            return Outcome(RunStatus.TIMEOUT, stop.message, code)
        if stop is not None and stop.kind == "shutdown":
            return Outcome(RunStatus.PENDING, "worker shutdown", code)
        if code == 0:
            return Outcome(RunStatus.COMPLETED, "", code)
        return Outcome(RunStatus.FAILED, describe_exit(code), code)

    def _record(self, outcome: Outcome) -> None:
        """Write the outcome through the state machine, riding out a database outage."""
        delay = 0.2
        while True:
            try:
                close_old_connections()
                self._transition(outcome)
                return
            except IllegalTransition as exc:
                log.warning("run %s: outcome %s not recorded: %s", self.run_id, outcome.status, exc)
                return
            except Error as exc:
                log.warning("run %s: cannot record outcome yet (%s); retrying", self.run_id, exc)
                connection.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _transition(self, outcome: Outcome) -> None:
        fields = {
            "exit_code": outcome.exit_code,
            "stdout_tail": self.sink.tails[LogStream.STDOUT],
            "stderr_tail": self.sink.tails[LogStream.STDERR],
            "log_truncated": self.sink.truncated,
        }
        owned = {"worker_id": self.worker_id, "attempt": self.run.attempt}
        active = {RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED}
        latest = Run.objects.only("status", "status_reason").get(pk=self.run_id)
        current = latest.status
        target, reason = outcome.status, outcome.reason
        if target == RunStatus.PENDING:
            if current == RunStatus.CANCEL_REQUESTED:
                target, reason = RunStatus.CANCELLED, ""
            elif self.run.attempt >= self.run.max_attempts:
                target, reason = RunStatus.FAILED, "worker shutdown; no attempts left"
        elif current == RunStatus.CANCEL_REQUESTED and target == RunStatus.FAILED:
            # The child died of the cancel before our own signal went out.
            target, reason = RunStatus.CANCELLED, ""
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
