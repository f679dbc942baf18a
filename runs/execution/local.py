"""The local executor: a run as a child process group on the worker's own host.

The child gets its own session (so a stop reaches every process it started), stdin closed, and
both pipes read concurrently into the log sink. Where the worker may manage cgroups
(runs/execution/cgroups.py) the child also runs in a cgroup of its own, which it joins before it
execs the recipe's command: every process it ever starts, however it detaches, is killed when the
run ends, and the run's memory limit applies to all of them.

The child dies with the worker: `setpriv --pdeathsig KILL` sets the parent-death signal between
fork and exec in a program of its own, which is safe in a multithreaded worker where a Python
`preexec_fn` is not (the subprocess docs warn that it can deadlock the child). The signal fires
when the worker thread that started the child exits, and that thread lives until the run's end.

When the worker runs as root and `TUNIX_CHILD_USER` names a user, the child runs as that user
(setpriv again, no supplementary groups): it can neither read the worker's environment in
`/proc/<pid>/environ` nor write outside its own run directory, which it owns only while it runs.
"""

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.core.exceptions import ImproperlyConfigured

from runs.execution.cgroups import Cgroups, RunGroup
from runs.execution.devices import device_env
from runs.execution.executor import Executor, Job, LaunchSpec, OutputSink, RunSetupError

log = logging.getLogger(__name__)

READ_BYTES = 65536
SETPRIV = shutil.which("setpriv")
# Joins the run's cgroups (the files given before `--`), then becomes the command after it.
JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'


@dataclass(frozen=True)
class ChildUser:
    name: str
    uid: int
    gid: int

    @classmethod
    def resolve(cls, name: str) -> "ChildUser":
        try:
            entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        except KeyError:
            raise ImproperlyConfigured(f"TUNIX_CHILD_USER={name!r}: no such user") from None
        if entry.pw_uid == 0:
            raise ImproperlyConfigured("TUNIX_CHILD_USER must not be root")
        if os.geteuid() != 0:
            raise ImproperlyConfigured(
                f"TUNIX_CHILD_USER={name!r} needs the worker to run as root, to start children "
                "as that user; unset it to run children as the worker's own user"
            )
        if SETPRIV is None:
            raise ImproperlyConfigured("TUNIX_CHILD_USER needs setpriv (util-linux)")
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def child_argv(
    argv: list[str], path: str | None, user: ChildUser | None, group: RunGroup | None
) -> list[str]:
    """The command line that starts `argv` in its cgroup, as its user, dying with the worker.

    The program is looked up here, with the child's PATH, so that a missing one is refused at
    launch (as Popen would) rather than reported as the child's exit status 127.
    """
    program = shutil.which(argv[0], path=path)
    if program is None:
        raise RunSetupError(f"[Errno 2] No such file or directory: {argv[0]!r}")
    command = [program, *argv[1:]]
    if SETPRIV is not None:
        credentials = []
        if user is not None:
            credentials = [f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        command = [SETPRIV, *credentials, "--pdeathsig", "KILL", "--", *command]
    if group is not None:
        command = ["/bin/sh", "-c", JOIN_CGROUPS, "sh", *group.procs_files, "--", *command]
    return command


class LocalJob(Job):
    def __init__(
        self,
        process: subprocess.Popen[bytes],
        sink: OutputSink,
        *,
        cgroups: Cgroups | None,
        group: RunGroup | None,
        run_dir: Path,
        user: ChildUser | None,
    ) -> None:
        self.process = process
        self._sink = sink
        self._cgroups = cgroups
        self._group = group
        self._run_dir = run_dir
        self._user = user
        self._oom_kills = 0
        self._readers = [
            self._pump(process.stdout, "stdout"),
            self._pump(process.stderr, "stderr"),
        ]

    def _pump(self, pipe: IO[bytes] | None, stream: str) -> threading.Thread:
        assert pipe is not None
        fd = pipe.fileno()

        def pump() -> None:
            try:
                while data := os.read(fd, READ_BYTES):
                    self._sink.write(stream, data)
            finally:
                pipe.close()

        thread = threading.Thread(target=pump, name=f"{stream}-{self.process.pid}", daemon=True)
        thread.start()
        return thread

    def poll(self) -> int | None:
        return self.process.poll()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)
        if self._cgroups is not None and self._group is not None:
            # Processes that left the process group get the polite signal too.
            for pid in self._cgroups.processes(self._group):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self._cgroups is not None and self._group is not None:
            self._cgroups.kill(self._group)

    def drain(self, timeout: float) -> None:
        for reader in self._readers:
            reader.join(timeout)

    def close(self) -> None:
        if self._cgroups is not None and self._group is not None:
            self._oom_kills = self._cgroups.oom_kills(self._group)
            self._cgroups.remove(self._group)
        if self._user is not None:
            # The run is over: its files go back to the worker, so no later child (of any run)
            # can change them.
            _chown_tree(self._run_dir, os.geteuid(), os.getegid())

    def describe_exit(self, code: int) -> str:
        group = self._group
        if self._oom_kills and group is not None and group.memory_limit_bytes is not None:
            return f"out of memory (limit {group.memory_limit_bytes // 2**20} MiB)"
        return super().describe_exit(code)


class LocalExecutor(Executor):
    name = "local"

    def __init__(
        self,
        *,
        cgroups: Cgroups | None = None,
        child_user: ChildUser | None = None,
        device_kind: str = "",
        default_memory_limit_mb: int | None = None,
    ) -> None:
        self.cgroups = cgroups
        self.child_user = child_user
        self.device_kind = device_kind
        self.default_memory_limit_mb = default_memory_limit_mb

    def launch(self, spec: LaunchSpec, sink: OutputSink) -> Job:
        env = dict(spec.env)
        if spec.devices:
            # A run given devices runs on them: a recipe's JAX_PLATFORMS=cpu is for CPU runs.
            env.pop("JAX_PLATFORMS", None)
        try:
            env.update(device_env(self.device_kind, spec.devices))
        except ValueError as exc:
            raise RunSetupError(str(exc)) from exc
        memory_mb = spec.memory_limit_mb or self.default_memory_limit_mb
        if memory_mb is not None and self.cgroups is None:
            sink.system("memory limit not enforced: this worker cannot manage cgroups")
        group = None
        if self.cgroups is not None:
            limit = memory_mb * 2**20 if memory_mb is not None else None
            group = self.cgroups.create(spec.run_id, spec.attempt, limit)
        if self.child_user is not None:
            env["HOME"] = str(spec.run_dir)
            _chown_tree(spec.run_dir, self.child_user.uid, self.child_user.gid)
        argv = child_argv(spec.argv, env.get("PATH"), self.child_user, group)
        try:
            process = subprocess.Popen(
                argv,
                cwd=spec.run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            if group is not None and self.cgroups is not None:
                self.cgroups.remove(group)
            raise RunSetupError(str(exc)) from exc
        return LocalJob(
            process,
            sink,
            cgroups=self.cgroups,
            group=group,
            run_dir=spec.run_dir,
            user=self.child_user,
        )

    def reclaimed(self, run_id: uuid.UUID, attempt: int) -> None:
        if self.cgroups is None:
            return
        for group in self.cgroups.find(run_id, attempt):
            log.warning("cgroup %s: killing what the dead attempt left", group.name)
            self.cgroups.remove(group)
