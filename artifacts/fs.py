"""Filesystem access confined to one run's directory, without following any symlink.

Every open walks the path one component at a time from a directory descriptor with `O_NOFOLLOW`,
so neither a symlink planted by the training code nor one swapped in between a check and the open
(the usual time-of-check race) can lead outside `TUNIX_ARTIFACT_ROOT/<run_id>/`. Only regular
files are ever opened for reading; a FIFO or a device is refused without blocking on it.

A file with more than one hard link is neither listed nor opened: the training code could have
linked a file it may not read by name but that the web process may (another run's checkpoint, the
SQLite database) into its own directory. Each file is identified by size, mtime, inode and ctime;
any change to its bytes, or its replacement by another file, changes one of them.
"""

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

# The registry's `name` column holds at most this many characters.
MAX_NAME_LENGTH = 1024

# Orbax writes a step as `<step>.orbax-checkpoint-tmp...` and renames it once committed; an item
# inside a step can carry the same suffix while it is being written.
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"
# Either file in a numeric directory says Orbax finished that step.
ORBAX_COMMIT_MARKERS = frozenset({"commit_success.txt", "_CHECKPOINT_METADATA"})
# Where a fork's run directory holds the parent's step it starts from (runs/execution/
# supervisor.py): the run's input, registered as plain files, never as a step of its own (its
# checkpoint list, downloads and "continue from the last step" are of what it wrote).
FORK_INPUT_DIR = "parent"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK only matters if the name is a FIFO: the open returns at once and fstat refuses it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ArtifactUnavailable(Exception):
    """The name is unsafe, or no regular file is reachable under it inside the run directory."""


def artifact_root() -> Path:
    return Path(settings.TUNIX_ARTIFACT_ROOT)


def is_safe_name(name: str) -> bool:
    """A relative POSIX path of plain components: no `..`, `.`, empty parts, NUL or leading /."""
    if not name or len(name) > MAX_NAME_LENGTH or "\x00" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def is_step_dir_name(name: str) -> bool:
    return name.isascii() and name.isdigit()


@dataclass(frozen=True)
class Identity:
    """What tells one version of a file from another without reading it. A rewrite with the
    same size and an old mtime (`os.utime`) still moves ctime, which no one can set back."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass
class OpenFile:
    """A regular file opened inside a run directory; close it (or use `with`) when done."""

    fd: int
    size: int
    mtime_ns: int
    identity: Identity
    closed: bool = field(default=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> "OpenFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_run_dir(run_id: uuid.UUID) -> int:
    root_fd = os.open(artifact_root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(str(run_id), _DIR_FLAGS, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def open_in_run_dir(run_id: uuid.UUID, name: str) -> OpenFile:
    """Open `name` for reading, refusing anything that is not a regular file reached plainly."""
    if not is_safe_name(name):
        raise ArtifactUnavailable(name)
    parts = name.split("/")
    try:
        dir_fd = _open_run_dir(run_id)
    except OSError as exc:
        raise ArtifactUnavailable(name) from exc
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise ArtifactUnavailable(name) from exc
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise ArtifactUnavailable(name)
    return OpenFile(fd=fd, size=st.st_size, mtime_ns=st.st_mtime_ns, identity=Identity.of(st))


def step_dir_of(name: str) -> str | None:
    """The checkpoint step directory a registered file lies in: its first numeric directory
    (`checkpoints/10/state/x` -> `checkpoints/10`), as `scan_run_dir` assigns steps."""
    parts = name.split("/")[:-1]
    if parts[:1] == [FORK_INPUT_DIR]:
        return None
    for i, part in enumerate(parts):
        if is_step_dir_name(part):
            return "/".join(parts[: i + 1])
    return None


def remove_from_run_dir(run_id: uuid.UUID, name: str | None = None) -> bool:
    """Delete `name` (a file or a whole directory tree) inside the run's directory, or the run
    directory itself when `name` is None; False if it was already gone.

    Like every open here, the path is walked from directory descriptors without following a
    symlink, and `shutil.rmtree` with `dir_fd` removes the tree without following any link in
    it: a symlink planted by training code is deleted as a link, never through.
    """
    if name is not None and not is_safe_name(name):
        raise ArtifactUnavailable(name)
    try:
        dir_fd = os.open(artifact_root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    parts = [str(run_id), *(name.split("/") if name is not None else [])]
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        last = parts[-1]
        st = os.stat(last, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(last, dir_fd=dir_fd)
        else:
            os.unlink(last, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        # A component on the way is a file or a symlink: nothing of ours is under it.
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            # O_NOFOLLOW met a symlink on the way: refuse to go through it.
            return False
        raise
    finally:
        os.close(dir_fd)
    return True


@dataclass(frozen=True)
class FoundFile:
    name: str
    identity: Identity
    step: int | None

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def mtime_ns(self) -> int:
        return self.identity.mtime_ns


EXECUTOR_DIRS = frozenset({".ray"})


def scan_run_dir(run_id: uuid.UUID) -> Iterator[FoundFile]:
    """The regular files a run wrote, with their Orbax step; in-flight and uncommitted steps,
    every symlink and every hard-linked file are left out. Entries that vanish during the walk
    (pruned steps) are skipped."""
    top = artifact_root() / str(run_id)
    if top.is_symlink() or not top.is_dir():
        return
    # Step of each directory visited, by its path relative to the run directory; topdown order
    # means a parent is always recorded before its children.
    steps: dict[str, int | None] = {".": None}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        rel = os.path.relpath(dirpath, top)
        if rel not in steps:
            # fwalk only descends into directories listed by its parent's visit, so a missing
            # parent means the walk raced with a rename; leave this subtree to the next sync.
            dirnames[:] = []
            continue
        step = steps[rel]
        fork_input = rel.split(os.sep, 1)[0] == FORK_INPUT_DIR
        if (
            step is None
            and not fork_input
            and rel != "."
            and is_step_dir_name(os.path.basename(rel))
        ):
            if ORBAX_COMMIT_MARKERS.isdisjoint(filenames):
                # Not committed yet (or not an Orbax step at all): nothing below is listed.
                dirnames[:] = []
                continue
            step = int(os.path.basename(rel))
        dirnames[:] = [d for d in dirnames if ORBAX_TMP_MARKER not in d]
        if rel == ".":
            # The executor's own bookkeeping (a Ray job's entry point, launch token and output
            # file: runs/execution/ray.py), not something the run wrote.
            dirnames[:] = [d for d in dirnames if d not in EXECUTOR_DIRS]
        for d in dirnames:
            steps[d if rel == "." else f"{rel}/{d}"] = step
        for filename in filenames:
            name = filename if rel == "." else f"{rel}/{filename}"
            if not _is_storable(name):
                continue
            try:
                st = os.stat(filename, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                yield FoundFile(name=name, identity=Identity.of(st), step=step)


def _is_storable(name: str) -> bool:
    """Names the registry can hold: safe, and valid UTF-8 (undecodable bytes come back from the
    filesystem as surrogate escapes that no database column accepts)."""
    if not is_safe_name(name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
