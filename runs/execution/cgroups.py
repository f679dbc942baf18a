"""One cgroup per run: every process of it is found and killed, and its memory can be limited.

A process group is not enough: a child that double-forks with `setsid` (as daemons and some
launchers do) leaves the group and survives a cancel. A cgroup keeps every descendant, however it
detaches. Two layouts are handled:

- cgroup v2 (`/sys/fs/cgroup` is the unified hierarchy): a group per run under the worker's own
  cgroup; `cgroup.kill` ends every process, `memory.max` limits, `memory.events` counts OOM kills.
- cgroup v1 (separate hierarchies, as on hosts with the legacy or hybrid layout): a group in each
  of `freezer` (everything is frozen before it is killed, so nothing forks meanwhile), `pids` (to
  list the processes) and `memory` (limit and OOM count), under the worker's own path in each.

Either needs the worker to run as root or to own a delegated subtree. Where neither works,
`detect()` returns None and a reason; the worker says so once and keeps process-group containment.

A run's group is named `w<worker pid>-<run id>-<attempt>`, so that a worker can find and kill the
groups a dead worker on the same host left behind (its escaped processes included).
"""

import contextlib
import errno
import logging
import os
import re
import signal
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PARENT = "tunixops"
V1_CONTROLLERS = ("freezer", "pids", "memory")
_NAME = re.compile(r"^w(?P<pid>[0-9]+)-(?P<run>[0-9a-f-]{36})-(?P<attempt>[0-9]+)$")
EMPTY_WAIT_SECONDS = 10.0


class CgroupError(OSError):
    pass


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


@dataclass(frozen=True)
class RunGroup:
    """The cgroup(s) of one run attempt."""

    name: str
    paths: tuple[Path, ...]
    memory_limit_bytes: int | None

    @property
    def procs_files(self) -> list[str]:
        """What a starting child writes its pid into, before it execs the run's command."""
        return [str(path / "cgroup.procs") for path in self.paths]


class Cgroups(ABC):
    """Where this worker creates run groups, and how it kills them."""

    version: str

    def __init__(self, parents: dict[str, Path]) -> None:
        # The `tunixops` directory under the worker's own cgroup, by controller ("" for v2).
        self.parents = parents

    def create(self, run_id: uuid.UUID, attempt: int, memory_limit_bytes: int | None) -> RunGroup:
        name = f"w{os.getpid()}-{run_id}-{attempt}"
        paths = []
        for parent in self.parents.values():
            parent.mkdir(exist_ok=True)
            path = parent / name
            path.mkdir(exist_ok=True)
            paths.append(path)
        group = RunGroup(name=name, paths=tuple(paths), memory_limit_bytes=memory_limit_bytes)
        if memory_limit_bytes is not None:
            self._limit_memory(group, memory_limit_bytes)
        return group

    @abstractmethod
    def _limit_memory(self, group: RunGroup, limit: int) -> None: ...

    @abstractmethod
    def processes(self, group: RunGroup) -> list[int]: ...

    @abstractmethod
    def kill(self, group: RunGroup) -> None:
        """SIGKILL every process in the group."""

    @abstractmethod
    def oom_kills(self, group: RunGroup) -> int: ...

    def remove(self, group: RunGroup) -> None:
        """Kill what is left, wait until the group is empty, and delete it."""
        deadline = time.monotonic() + EMPTY_WAIT_SECONDS
        while True:
            self.kill(group)
            if not self.processes(group):
                break
            if time.monotonic() > deadline:
                log.error("cgroup %s: processes left after %.0f s", group.name, EMPTY_WAIT_SECONDS)
                return
            time.sleep(0.02)
        for path in group.paths:
            with contextlib.suppress(FileNotFoundError):
                # Sub-groups a child made (v2 lets it, when delegated) go first.
                for sub in sorted(path.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                    if sub != path:
                        sub.rmdir()
                path.rmdir()

    def groups(self) -> list[RunGroup]:
        """Every run group under this worker's parent, whoever created it."""
        names: set[str] = set()
        for parent in self.parents.values():
            if parent.is_dir():
                names |= {p.name for p in parent.iterdir() if _NAME.match(p.name)}
        return [
            RunGroup(name, tuple(parent / name for parent in self.parents.values()), None)
            for name in sorted(names)
        ]

    def find(self, run_id: uuid.UUID, attempt: int) -> list[RunGroup]:
        suffix = f"-{run_id}-{attempt}"
        return [group for group in self.groups() if group.name.endswith(suffix)]

    def sweep_dead_workers(self) -> int:
        """Remove the groups of workers on this host that died; return how many."""
        removed = 0
        for group in self.groups():
            match = _NAME.match(group.name)
            if match is None or _alive(int(match["pid"])):
                continue
            log.warning("cgroup %s: its worker is gone; killing what is left", group.name)
            self.remove(group)
            removed += 1
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CgroupsV2(Cgroups):
    version = "v2"

    def _limit_memory(self, group: RunGroup, limit: int) -> None:
        (path,) = group.paths
        _write(path / "memory.max", str(limit))
        with contextlib.suppress(FileNotFoundError):
            _write(path / "memory.swap.max", "0")

    def processes(self, group: RunGroup) -> list[int]:
        (path,) = group.paths
        found = _pids(path / "cgroup.procs")
        for sub in path.glob("*/**/cgroup.procs"):
            found += _pids(sub)
        return found

    def kill(self, group: RunGroup) -> None:
        (path,) = group.paths
        with contextlib.suppress(FileNotFoundError):
            _write(path / "cgroup.kill", "1")

    def oom_kills(self, group: RunGroup) -> int:
        (path,) = group.paths
        return _counter(path / "memory.events", "oom_kill")


class CgroupsV1(Cgroups):
    version = "v1"

    def _path(self, group: RunGroup, controller: str) -> Path:
        return self.parents[controller] / group.name

    def _limit_memory(self, group: RunGroup, limit: int) -> None:
        path = self._path(group, "memory")
        _write(path / "memory.limit_in_bytes", str(limit))
        # With swap accounting, memory plus swap gets the same limit: no swapping past it.
        with contextlib.suppress(FileNotFoundError, OSError):
            _write(path / "memory.memsw.limit_in_bytes", str(limit))

    def processes(self, group: RunGroup) -> list[int]:
        return _pids(self._path(group, "pids") / "cgroup.procs")

    def kill(self, group: RunGroup) -> None:
        freezer = self._path(group, "freezer") / "freezer.state"
        try:
            _write(freezer, "FROZEN")
            deadline = time.monotonic() + 2.0
            while freezer.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.005)
            for pid in self.processes(group):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        except FileNotFoundError:
            return
        finally:
            # A frozen process cannot die; thawed, the SIGKILLs take effect.
            with contextlib.suppress(FileNotFoundError):
                _write(freezer, "THAWED")

    def oom_kills(self, group: RunGroup) -> int:
        return _counter(self._path(group, "memory") / "memory.oom_control", "oom_kill")


def _counter(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except FileNotFoundError:
        pass
    return 0


# -- detection ------------------------------------------------------------------------------------


def _mounts() -> tuple[Path | None, dict[str, Path]]:
    """The cgroup2 mount (if /sys/fs/cgroup is one) and the v1 mount of each controller."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if len(fields) != 2:
            continue
        mount_point = Path(fields[0].split()[4])
        fstype, _, super_options = fields[1].split()[:3]
        if fstype == "cgroup2" and mount_point == Path("/sys/fs/cgroup"):
            v2 = mount_point
        elif fstype == "cgroup":
            for option in super_options.split(","):
                if option in V1_CONTROLLERS:
                    v1[option] = mount_point
    return v2, v1


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and "" for the unified hierarchy."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _probe(parents: dict[str, Path]) -> None:
    """Create and delete a group in each parent: proves the worker may manage them."""
    for parent in parents.values():
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()


def _enable_v2_controllers(own: Path, parent: Path) -> None:
    """Give run groups the memory and pids controllers, if the hierarchy allows it."""
    wanted = {"memory", "pids"} & set((own / "cgroup.controllers").read_text().split())
    if not wanted:
        return
    changes = " ".join(f"+{c}" for c in sorted(wanted))
    try:
        _write(own / "cgroup.subtree_control", changes)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # "No internal processes": our own cgroup holds processes (a container's root). Move
        # this worker into a leaf of its own, then the controllers can be handed down.
        leaf = own / f"worker-{os.getpid()}"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(own / "cgroup.subtree_control", changes)
    _write(parent / "cgroup.subtree_control", changes)


def detect() -> tuple[Cgroups | None, str]:
    """The cgroup layout this worker can use, or None and why not."""
    try:
        v2_mount, v1_mounts = _mounts()
        own = _own_paths()
        if v2_mount is not None:
            base = v2_mount / own.get("", "/").lstrip("/")
            parent = base / PARENT
            _probe({"": parent})
            _enable_v2_controllers(base, parent)
            return CgroupsV2({"": parent}), "cgroup v2"
        missing = [c for c in V1_CONTROLLERS if c not in v1_mounts]
        if missing:
            return None, f"no cgroup v2, and cgroup v1 lacks {', '.join(missing)}"
        parents = {c: v1_mounts[c] / own.get(c, "/").lstrip("/") / PARENT for c in V1_CONTROLLERS}
        _probe(parents)
        return CgroupsV1(parents), "cgroup v1 (freezer, pids, memory)"
    except OSError as exc:
        return None, f"cannot manage cgroups here ({exc.strerror or exc}); run as root or delegate"
