"""The executor boundary: what the worker asks of something that runs a run.

The worker claims a run and keeps its lease; an `Execution` (runs/execution/supervisor.py)
supervises one attempt: it prepares the run directory and command, asks an `Executor` to launch a
`Job`, feeds the job's output into the log sink, enforces cancel and timeout (a polite stop, the
run's grace, then a hard stop) and records the outcome. Only the executor knows where the job
runs: `local` starts a child process group on this host (runs/execution/local.py), `ray` a job
on a Ray cluster (runs/execution/ray.py).
"""

import signal
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from runs.recipes import RayOptions


class RunSetupError(Exception):
    """The run cannot start (unknown recipe, missing dataset, unstartable command)."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything an executor needs to start one attempt of a run."""

    run_id: uuid.UUID
    attempt: int
    argv: list[str]
    # The job's whole environment: nothing of the worker's own is passed on implicitly.
    env: Mapping[str, str]
    run_dir: Path
    # The ids of the accelerators the worker gave the run (its `device_ids`), and its memory
    # limit in MiB (None: the worker's default, if any).
    devices: tuple[str, ...] = ()
    memory_limit_mb: int | None = None
    # How long a stopped job may take before it is killed (the run's grace), and what a Ray job
    # asks of its cluster (the recipe's `[ray]` table).
    stop_grace: float = 10.0
    ray: RayOptions | None = None


class OutputSink(Protocol):
    """Where a job's output goes (runs/execution/logsink.LogSink)."""

    def write(self, stream: str, data: bytes) -> None: ...

    def write_record(self, stream: str, data: bytes, position: int) -> None: ...

    def system(self, message: str) -> None: ...


class Job(ABC):
    """One attempt of a run, started by an executor."""

    # Set when the job was lost rather than ended (its cluster forgot it or stopped answering):
    # the run fails with this reason, or is retried like a lost worker (`worker_lost`).
    lost_reason: str | None = None
    # Seconds the job had already run when this worker took it over (an adopted Ray job): they
    # count toward the run's timeout, which a takeover must not restart.
    ran_before: float = 0.0

    def detach(self) -> bool:
        """Stop following the job and leave it running, for another worker to adopt; False when
        the job cannot outlive its worker (a local child)."""
        return False

    @abstractmethod
    def poll(self) -> int | None:
        """The exit status once the job has ended (negative: killed by that signal), else None."""

    @abstractmethod
    def terminate(self) -> None:
        """Ask the whole job to stop (SIGTERM to every process of it)."""

    @abstractmethod
    def kill(self) -> None:
        """Stop every process the job started, now. Also called after a normal end, so that
        nothing the job left behind outlives it."""

    @abstractmethod
    def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the output the job produced to reach the sink."""

    @abstractmethod
    def close(self) -> None:
        """Release what the job held once it has ended (its cgroup, its files' ownership)."""

    def describe_exit(self, code: int) -> str:
        return describe_exit(code)


class Executor(ABC):
    name: ClassVar[str]

    def unavailable(self) -> str | None:
        """Why this worker cannot run this executor's runs, or None when it can."""
        return None

    @abstractmethod
    def launch(self, spec: LaunchSpec, sink: OutputSink) -> Job:
        """Start the job; raise `RunSetupError` when it cannot start."""

    @abstractmethod
    def reclaimed(self, run_id: uuid.UUID, attempt: int) -> None:
        """A dead worker's attempt of this run was taken back: end whatever is left of it."""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"
