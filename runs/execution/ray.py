"""The Ray executor: a run as a job on a Ray cluster, submitted through Ray's Jobs API.

The job's entry point is runs/entrypoints/ray_job.py, copied into the run's control directory
(`<run_dir>/.ray/<submission id>/`) on the storage the worker and every Ray node share. It runs
the recipe's command and appends its output, record by record, to a file there, which this worker
follows (Ray's own log API replays from the start and lags a second or two). What is stored is
counted in `Run.job_output_offset` in the same transaction as the log chunks (LogSink
`write_record`), so a worker that takes the run over after its worker died adopts the job, still
running or not, and resumes right after the last stored byte: every line once, one job.

Submission ids are derived from the run and attempt (`tunixops-<run id>-<attempt>`), and a
submission that finds its id taken adopts that job: a worker that crashes right after submitting
never starts a second copy.

Stopping: a `stop` file and Ray's `stop_job` both reach the entry point, which sends SIGTERM to
the command's process group and SIGKILL after the run's grace (or at once on a `kill` file);
Ray's own SIGKILL follows a little later (`RAY_JOB_STOP_WAIT_TIME_S`, which Ray 2.60 reads per
job from the runtime env: ray/dashboard/modules/job/job_supervisor.py) in case the entry point
itself does not answer.
"""

import contextlib
import json
import logging
import math
import secrets
import shlex
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from django.db import connection

from runs.entrypoints import ray_job
from runs.execution.executor import Executor, Job, LaunchSpec, OutputSink, RunSetupError
from runs.models import Run, RunStatus
from runs.services import run_ray_job_record

log = logging.getLogger(__name__)

T = TypeVar("T")

ENTRYPOINT = Path(ray_job.__file__)
# How often a running job's status is asked of Ray (the exit file says more, and sooner).
STATUS_SECONDS = 1.0
FOLLOW_SECONDS = 0.02
# How long an ended job's exit file may take to show on shared storage (attribute caches).
EXIT_FILE_WAIT_SECONDS = 5.0
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# How long a job may go on after its hard stop before it is given up: a job Ray has not started
# yet (waiting for resources) ignores `stop_job` until it starts, and its entry point then exits
# at once on the `stop` file.
KILL_WAIT_SECONDS = 5.0
# Seconds Ray waits after its own SIGTERM before SIGKILL, beyond the run's grace.
RAY_STOP_MARGIN_SECONDS = 2


def submission_id(run_id: uuid.UUID, attempt: int) -> str:
    return f"tunixops-{run_id}-{attempt}"


# (connect, read) seconds for each request to the job-submission server; its answers take
# milliseconds, a submission with a runtime_env to upload a few seconds.
REQUEST_TIMEOUT = (5.0, 60.0)


class Unreachable(Exception):
    """The Ray cluster did not answer."""


class Cluster:
    """The job-submission client of one Ray cluster, made on first use (it checks the address)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._client: Any = None
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a JobSubmissionClient method; `Unreachable` when the cluster does not answer,
        RuntimeError (Ray's) when it refuses."""
        from ray.job_submission import JobSubmissionClient  # a large import, made only here

        class TimedClient(JobSubmissionClient):  # type: ignore[misc,unused-ignore]
            # Ray's client sends its requests without a timeout: a cluster behind a network
            # that drops packets (rather than refusing them) would hold the worker's call
            # forever. requests' Timeout is an OSError, so it reads as `Unreachable` below.
            def _do_request(self, *args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", REQUEST_TIMEOUT)
                return super()._do_request(*args, **kwargs)

        try:
            with self._lock:
                if self._client is None:
                    self._client = TimedClient(self.address)
                client = self._client
            return getattr(client, method)(*args, **kwargs)
        except OSError as exc:  # ConnectionError, and requests' errors
            with self._lock:
                self._client = None
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    def info(self, submission: str) -> Any | None:
        """Ray's JobDetails of the job, or None when Ray does not know it."""
        try:
            return self.call("get_job_info", submission)
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise


def _retrying(
    operation: Callable[[], T], *, limit: float, what: str, note: Callable[[str], None]
) -> T:
    """`operation` until it gets through to the cluster, backing off, for at most `limit` s."""
    deadline = time.monotonic() + limit
    delay = 0.5
    while True:
        try:
            return operation()
        except Unreachable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunSetupError(
                    f"the Ray cluster did not answer for {limit:g} s "
                    f"(TUNIX_RAY_SUBMIT_RETRY_SECONDS) while {what}: {exc}"
                ) from exc
            wait = min(delay, left)
            note(f"Ray cluster unreachable while {what} ({exc}); retrying in {wait:.1f} s")
            time.sleep(wait)
            delay = min(delay * 2, 10.0)


class RayJob(Job):
    def __init__(
        self,
        cluster: Cluster,
        submission: str,
        control: Path,
        sink: OutputSink,
        *,
        offset: int,
        lost_after: float,
    ) -> None:
        self.cluster = cluster
        self.submission = submission
        self.control = control
        self._sink = sink
        self._lost_after = lost_after
        self._offset = offset
        self._exit: dict[str, int] | None = None
        self._code: int | None = None
        self._ray_status = ""
        self._ray_message = ""
        self._next_status = 0.0
        self._unreachable_since: float | None = None
        self._ended_at: float | None = None
        self._stopping = False
        self._killed_at: float | None = None
        self._stop_following = threading.Event()
        self._follower = threading.Thread(
            target=self._follow, name=f"ray-follow-{submission}", daemon=True
        )
        self._follower.start()

    # -- output ------------------------------------------------------------------------------

    def _follow(self) -> None:
        """Feed complete records of the output file to the sink, from the stored offset."""
        path = self.control / "output"
        pending = b""
        try:
            while True:
                stopping = self._stop_following.is_set()
                data = b""
                # Opened anew each time: shared file systems show appends on open.
                with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
                    handle.seek(self._offset + len(pending))
                    data = handle.read(4 * 1024 * 1024)
                if data:
                    pending = self._feed(pending + data)
                    continue
                if stopping:
                    return
                self._stop_following.wait(FOLLOW_SECONDS)
        finally:
            connection.close()

    def _feed(self, data: bytes) -> bytes:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            stream = "stdout" if data[start : start + 1] == b"o" else "stderr"
            whole = data[start + 1 : start + 2] == b"L"
            text = data[start + 2 : end] + (b"\n" if whole else b"")
            self._offset += end + 1 - start
            self._sink.write_record(stream, text, self._offset)
            start = end + 1
        return data[start:]

    # -- the Job interface -------------------------------------------------------------------

    def _read_exit(self) -> dict[str, int] | None:
        if self._exit is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self._exit = json.loads((self.control / "exit").read_text())
        return self._exit

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        ended = self._read_exit()
        if ended is not None:
            self._code = int(ended["code"])
            return self._code
        now = time.monotonic()
        if self._killed_at is not None and now - self._killed_at >= KILL_WAIT_SECONDS:
            self._sink.system(
                f"Ray job {self.submission} did not end within {KILL_WAIT_SECONDS:g} s of its "
                f"hard stop (Ray: {self._ray_status or 'unknown'}); it is left to Ray, and will "
                "not run the command"
            )
            self._code = -9
            return self._code
        if now < self._next_status:
            return None
        self._next_status = now + STATUS_SECONDS
        try:
            info = self.cluster.info(self.submission)
        except (Unreachable, RuntimeError) as exc:
            if self._unreachable_since is None:
                self._unreachable_since = now
                self._sink.system(f"Ray cluster not answering: {exc}")
            if now - self._unreachable_since >= self._lost_after:
                self.lost_reason = (
                    f"Ray job lost: the cluster did not answer for {self._lost_after:g} s "
                    f"(TUNIX_RAY_LOST_SECONDS): {exc}"
                )
                self._code = -9
            return self._code
        self._unreachable_since = None
        if info is None:
            self.lost_reason = f"Ray job lost: the cluster no longer knows {self.submission}"
            self._code = -9
            return self._code
        self._ray_status, self._ray_message = str(info.status), info.message or ""
        if self._ray_status not in TERMINAL:
            return None
        # Ended without its exit file: the entry point was killed, or never ran its command.
        if self._ended_at is None:
            self._ended_at = now
            self._next_status = now + 0.2
            return None
        if now - self._ended_at < EXIT_FILE_WAIT_SECONDS:
            self._next_status = now + 0.2
            return None
        code = info.driver_exit_code
        self._code = int(code) if code is not None else (-9 if self._ray_status == "STOPPED" else 1)
        if code == ray_job.NOT_SHARED:
            self.lost_reason = (
                "the Ray job does not see the worker's run directory: it must be on storage "
                "the workers and every Ray node mount at the same path (TUNIX_ARTIFACT_ROOT)"
            )
        return self._code

    def _touch(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.control / name).touch()

    def _stop_job(self) -> None:
        def stop() -> None:
            try:
                self.cluster.call("stop_job", self.submission)
            except (Unreachable, RuntimeError) as exc:
                log.warning("Ray job %s: stop_job failed: %s", self.submission, exc)

        threading.Thread(target=stop, name=f"ray-stop-{self.submission}", daemon=True).start()

    def terminate(self) -> None:
        self._stopping = True
        self._touch("stop")
        self._stop_job()

    def kill(self) -> None:
        if self._read_exit() is not None:
            return  # the entry point has ended, and killed what its command left behind
        self._touch("kill")
        if self._killed_at is None:
            self._killed_at = time.monotonic()
        if not self._stopping:
            self._stopping = True
            self._stop_job()

    def drain(self, timeout: float) -> None:
        ended = self._read_exit()
        deadline = time.monotonic() + timeout
        if ended is not None:
            while self._offset < ended["output_bytes"] and time.monotonic() < deadline:
                time.sleep(FOLLOW_SECONDS)
        self._stop_following.set()
        self._follower.join(max(deadline - time.monotonic(), 0.1))
        if ended is None and self.lost_reason is None:
            self._ray_log_tail()

    def _ray_log_tail(self) -> None:
        """Ray's own log of a job that ended without its exit file (it never ran the command)."""
        try:
            logs = str(self.cluster.call("get_job_logs", self.submission))
        except (Unreachable, RuntimeError):
            return
        for line in logs.splitlines()[-20:]:
            self._sink.system(f"Ray: {line}")

    def close(self) -> None:
        self._stop_following.set()

    def detach(self) -> bool:
        self._stop_following.set()
        self._follower.join(10.0)
        return True

    def describe_exit(self, code: int) -> str:
        if self.lost_reason is not None:
            return self.lost_reason
        what = super().describe_exit(code)
        if not self._ray_status or self._ray_status not in TERMINAL:
            # The exit file came first: Ray's verdict follows within moments.
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                with contextlib.suppress(Unreachable, RuntimeError):
                    info = self.cluster.info(self.submission)
                    if info is not None and str(info.status) in TERMINAL:
                        self._ray_status, self._ray_message = str(info.status), info.message or ""
                        break
                time.sleep(0.2)
        message = self._ray_message.strip().splitlines()[0] if self._ray_message.strip() else ""
        return f"{what} (Ray: {self._ray_status or 'unknown'}{': ' + message if message else ''})"


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        address: str,
        *,
        python: str = "python3",
        submit_retry_seconds: float = 60.0,
        lost_seconds: float = 30.0,
    ) -> None:
        self.address = address
        self.cluster = Cluster(address)
        self.python = python
        self.submit_retry_seconds = submit_retry_seconds
        self.lost_seconds = lost_seconds

    def unavailable(self) -> str | None:
        if not self.address:
            return "RAY_ADDRESS is not set"
        try:
            import ray.job_submission  # noqa: F401
        except ImportError:
            return "ray is not installed (pip install -r requirements-ray.txt)"
        return None

    def _job(self, submission: str, control: Path, sink: OutputSink, offset: int) -> RayJob:
        return RayJob(
            self.cluster, submission, control, sink, offset=offset, lost_after=self.lost_seconds
        )

    def launch(self, spec: LaunchSpec, sink: OutputSink) -> Job:
        def note(message: str) -> None:
            sink.system(message)

        run = Run.objects.only("ray_submission_id", "job_output_offset").get(pk=spec.run_id)
        if run.ray_submission_id and run.job_output_offset is not None:
            # An earlier attempt's job was never seen to its end (its worker died): adopt it.
            previous = run.ray_submission_id
            known = _retrying(
                lambda: self.cluster.info(previous),
                limit=self.submit_retry_seconds,
                what=f"looking up job {previous}",
                note=note,
            )
            if known is not None:
                # Ray's start_time is milliseconds since the epoch (None while still queued).
                started = getattr(known, "start_time", None)
                ran = max(0.0, time.time() - started / 1000) if started else 0.0
                sink.system(
                    f"adopting Ray job {previous} ({known.status}) from byte "
                    f"{run.job_output_offset} of its output; its {ran:.0f} s so far count "
                    "toward the run's timeout"
                )
                control = spec.run_dir / ".ray" / previous
                job = self._job(previous, control, sink, run.job_output_offset)
                job.ran_before = ran
                return job
            sink.system(f"Ray job {previous} is gone from the cluster; submitting a new one")
        submission = submission_id(spec.run_id, spec.attempt)
        control = spec.run_dir / ".ray" / submission
        token = self._prepare(control)
        run_ray_job_record(run_id=spec.run_id, submission_id=submission)
        grace = spec.stop_grace
        options = spec.ray
        runtime_env = dict(options.runtime_env) if options is not None else {}
        env_vars = dict(runtime_env.get("env_vars", {}))
        env_vars.update({k: v for k, v in spec.env.items() if k not in ("PATH", "HOME")})
        env_vars["TUNIX_RAY_LAUNCH_TOKEN"] = token
        env_vars["RAY_JOB_STOP_WAIT_TIME_S"] = str(math.ceil(grace) + RAY_STOP_MARGIN_SECONDS)
        runtime_env["env_vars"] = env_vars
        wrapper = [self.python, str(control / ENTRYPOINT.name), str(control), f"{grace:g}"]
        entrypoint = "exec " + shlex.join([*wrapper, "--", *spec.argv])
        kwargs: dict[str, Any] = {"runtime_env": runtime_env}
        if options is not None:
            if options.num_cpus is not None:
                kwargs["entrypoint_num_cpus"] = options.num_cpus
            if options.num_gpus is not None:
                kwargs["entrypoint_num_gpus"] = options.num_gpus
            if options.resources:
                kwargs["entrypoint_resources"] = dict(options.resources)

        def submit() -> None:
            self.cluster.call(
                "submit_job", entrypoint=entrypoint, submission_id=submission, **kwargs
            )

        try:
            _retrying(submit, limit=self.submit_retry_seconds, what="submitting the job", note=note)
            sink.system(f"submitted Ray job {submission} to {self.address}")
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise RunSetupError(f"Ray refused the job: {exc}") from exc
            sink.system(f"Ray job {submission} was already submitted: adopting it")
        return self._job(submission, control, sink, 0)

    def _prepare(self, control: Path) -> str:
        """A fresh control directory with the entry point and the launch token."""
        shutil.rmtree(control, ignore_errors=True)
        control.mkdir(parents=True)
        shutil.copyfile(ENTRYPOINT, control / ENTRYPOINT.name)
        token = secrets.token_hex(16)
        (control / "launch").write_text(token)
        return token

    def reclaimed(self, run_id: uuid.UUID, attempt: int) -> None:
        """A dead worker's Ray run was taken back: stop its job unless the run is to adopt it."""
        run = Run.objects.only("status", "ray_submission_id").get(pk=run_id)
        if run.status == RunStatus.PENDING or not run.ray_submission_id:
            return
        try:
            self.cluster.call("stop_job", run.ray_submission_id)
        except (Unreachable, RuntimeError) as exc:
            log.warning("Ray job %s: stop_job failed: %s", run.ray_submission_id, exc)
