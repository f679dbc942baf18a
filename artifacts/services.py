"""Artifact registry workflows: the worker keeps the registry in step with each run's directory."""

import fcntl
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.db import IntegrityError, models, transaction
from django.db.models import Max, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from artifacts.fs import (
    ArtifactUnavailable,
    FoundFile,
    Identity,
    open_in_run_dir,
    remove_from_run_dir,
    scan_run_dir,
    step_dir_of,
)
from artifacts.models import Artifact
from runs.models import Run

logger = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1024 * 1024
# Rows per INSERT/DELETE statement; well under SQLite's bound-parameter limit.
BATCH_SIZE = 200

# One sync per run at a time in this process: the worker's periodic thread and its final call
# would otherwise race, and an older scan could re-add a row a newer one had just removed.
# Entries are [lock, holders] and leave the dict with their last holder.
_locks_guard = threading.Lock()
_run_locks: dict[uuid.UUID, tuple[threading.Lock, list[int]]] = {}


@dataclass(frozen=True)
class SyncResult:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


@contextmanager
def _run_lock(run_id: uuid.UUID) -> Iterator[None]:
    with _locks_guard:
        lock, holders = _run_locks.setdefault(run_id, (threading.Lock(), [0]))
        holders[0] += 1
    try:
        with lock:
            yield
    finally:
        with _locks_guard:
            holders[0] -= 1
            if not holders[0]:
                del _run_locks[run_id]


def _hash(run_id: uuid.UUID, found: FoundFile) -> str | None:
    """The file's sha256, streamed; None if it vanished, became a hard link, or changed while it
    was read (a file still being written is registered by a later sync, once it holds still)."""
    try:
        opened = open_in_run_dir(run_id, found.name)
    except ArtifactUnavailable:
        return None
    with opened:
        digest = hashlib.sha256()
        while chunk := os.read(opened.fd, HASH_CHUNK_BYTES):
            digest.update(chunk)
        after = os.fstat(opened.fd)
    if after.st_nlink > 1 or Identity.of(after) != found.identity:
        return None
    if opened.identity != found.identity:
        return None
    return digest.hexdigest()


def artifacts_sync(*, run_id: uuid.UUID) -> SyncResult:
    """Bring the run's registry in line with `TUNIX_ARTIFACT_ROOT/<run_id>/`.

    New or changed files are hashed and registered; rows whose file is gone (or is now a hard
    link) are deleted. A file whose identity (size, mtime, inode, ctime) matches its row is not
    read again, so a sync that finds nothing new costs one directory walk and one query. Safe to
    call from a background thread while the web process serves downloads; a download checks the
    identity against its row before sending.
    """
    with _run_lock(run_id):
        return _sync(run_id)


def _sync(run_id: uuid.UUID) -> SyncResult:
    known = {
        name: (Identity(size, mtime_ns, inode, ctime_ns), step, pk)
        for name, size, mtime_ns, inode, ctime_ns, step, pk in Artifact.objects.filter(
            run_id=run_id
        ).values_list("name", "size_bytes", "mtime_ns", "inode", "ctime_ns", "step", "pk")
    }
    now = timezone.now()
    rows: list[Artifact] = []
    seen: set[str] = set()
    added = updated = unchanged = 0
    for found in scan_run_dir(run_id):
        seen.add(found.name)
        row = known.get(found.name)
        if row is not None and row[:2] == (found.identity, found.step):
            unchanged += 1
            continue
        sha256 = _hash(run_id, found)
        if sha256 is None:
            continue
        rows.append(
            Artifact(
                run_id=run_id,
                name=found.name,
                size_bytes=found.size,
                mtime_ns=found.mtime_ns,
                inode=found.identity.inode,
                ctime_ns=found.identity.ctime_ns,
                sha256=sha256,
                step=found.step,
                created_at=now,
                updated_at=now,
            )
        )
        if row is None:
            added += 1
        else:
            updated += 1
    gone = [row[2] for name, row in known.items() if name not in seen]
    if not rows and not gone:
        return SyncResult(unchanged=unchanged)
    if not Run.objects.filter(pk=run_id).exists():
        return SyncResult()
    try:
        with transaction.atomic():
            # An upsert rather than separate INSERT and UPDATE: a second process syncing the same
            # run (a restarted worker, a manual resync) cannot make this one fail.
            Artifact.objects.bulk_create(
                rows,
                batch_size=BATCH_SIZE,
                update_conflicts=True,
                unique_fields=["run", "name"],
                update_fields=[
                    "size_bytes",
                    "mtime_ns",
                    "inode",
                    "ctime_ns",
                    "sha256",
                    "step",
                    "updated_at",
                ],
            )
            for start in range(0, len(gone), BATCH_SIZE):
                Artifact.objects.filter(pk__in=gone[start : start + BATCH_SIZE]).delete()
            _recount(run_id)
    except IntegrityError:
        if not Run.objects.filter(pk=run_id).exists():
            logger.info("artifacts_sync: run %s was deleted during the sync", run_id)
            return SyncResult()
        raise
    result = SyncResult(added=added, updated=updated, removed=len(gone), unchanged=unchanged)
    logger.info("artifacts_sync: run %s %s", run_id, result)
    return result


def _recount(run_id: uuid.UUID) -> None:
    """Set the run's `artifact_bytes` to the sum of its rows, in the caller's transaction."""
    total = (
        Artifact.objects.filter(run_id=run_id)
        .order_by()
        .values("run_id")
        .annotate(total=Sum("size_bytes"))
        .values("total")
    )
    Run.objects.filter(pk=run_id).update(artifact_bytes=Coalesce(Subquery(total), 0))


# -- retention ------------------------------------------------------------------------------------

# `last`: every checkpoint step but the last committed one goes, other files stay;
# `all`: the whole run directory and every row go.
PruneMode = Literal["last", "all"]


@dataclass(frozen=True)
class ArtifactPrune:
    steps: int = 0  # checkpoint steps removed (in `all` mode: every step the run had)
    rows: int = 0
    bytes: int = 0
    batches: tuple[int, ...] = ()  # rows deleted by each DELETE statement
    kept_step: int | None = None


def _doomed(
    run_id: uuid.UUID, mode: PruneMode, needed: Collection[int]
) -> tuple[QuerySet[Artifact], int | None]:
    rows = Artifact.objects.filter(run_id=run_id)
    kept = rows.filter(step__isnull=False).aggregate(last=Max("step"))["last"]
    if mode == "all":
        return rows.exclude(step__in=needed), kept
    if kept is None:
        return rows.none(), None
    return rows.filter(step__isnull=False, step__lt=kept).exclude(step__in=needed), kept


def artifacts_prune_plan(
    *, run_id: uuid.UUID, mode: PruneMode, needed: Collection[int] = ()
) -> ArtifactPrune:
    """What `artifacts_prune` would delete now, found without changing anything."""
    doomed, kept = _doomed(run_id, mode, needed)
    found = doomed.aggregate(rows=models.Count("pk"), size=Sum("size_bytes"))
    steps = doomed.filter(step__isnull=False).values("step").distinct().count()
    return ArtifactPrune(steps=steps, rows=found["rows"], bytes=found["size"] or 0, kept_step=kept)


def artifacts_prune(
    *,
    run_id: uuid.UUID,
    mode: PruneMode,
    batch_size: int,
    proceed: Callable[[], bool] = lambda: True,
    needed: Callable[[], Collection[int]] = lambda: (),
) -> ArtifactPrune:
    """Delete a finished run's checkpoint files and their rows (see `PruneMode`).

    Steps that `needed` names (a pending or running continuation starts from them) stay; in
    `all` mode the run directory then goes file by file around them. Files go before their rows:
    a prune stopped in between leaves rows whose files are gone (a download answers 404 and the
    next prune deletes the rows), never files nobody lists. Rows go in DELETEs of at most
    `batch_size`, each its own short transaction. `proceed` and `needed` are asked again before
    each step directory; when `proceed` says no (the run was pinned meanwhile) the prune stops
    there, and the rows of what it already removed are still deleted.
    """
    keep = set(needed())
    doomed, kept = _doomed(run_id, mode, keep)
    if mode == "all" and not keep:
        steps = doomed.filter(step__isnull=False).values("step").distinct().count()
        if not proceed():
            return ArtifactPrune(kept_step=kept)
        remove_from_run_dir(run_id)
        return _delete_rows(run_id, doomed, steps=steps, kept=None, batch_size=batch_size)
    gone_steps: list[int] = []
    for step in (
        doomed.filter(step__isnull=False).order_by("step").values_list("step", flat=True).distinct()
    ):
        if step is None or not proceed():
            break
        if step in needed():
            continue
        names = doomed.filter(step=step).values_list("name", flat=True)
        directories = {step_dir_of(name) for name in names.iterator()}
        for directory in sorted(d for d in directories if d is not None):
            remove_from_run_dir(run_id, directory)
        gone_steps.append(step)
    gone = doomed.filter(step__in=gone_steps)
    if mode == "all" and proceed():
        # Around a needed step: the other files one by one.
        loose = doomed.filter(step__isnull=True)
        for name in loose.values_list("name", flat=True).iterator():
            remove_from_run_dir(run_id, name)
        gone = gone | loose
    return _delete_rows(run_id, gone, steps=len(gone_steps), kept=kept, batch_size=batch_size)


def _delete_rows(
    run_id: uuid.UUID,
    gone: QuerySet[Artifact],
    *,
    steps: int,
    kept: int | None,
    batch_size: int,
) -> ArtifactPrune:
    size = gone.aggregate(size=Sum("size_bytes"))["size"] or 0
    batches: list[int] = []
    while True:
        with transaction.atomic():
            batch = Subquery(gone.order_by("pk").values("pk")[:batch_size])
            deleted, _ = Artifact.objects.filter(pk__in=batch).delete()
            if deleted:
                batches.append(deleted)
            _recount(run_id)
        if deleted < batch_size:
            break
    return ArtifactPrune(
        steps=steps, rows=sum(batches), bytes=size, batches=tuple(batches), kept_step=kept
    )


# FICLONE (linux/fs.h): the destination shares the source's blocks until either is written.
_FICLONE = 0x40049409


def _clone_or_copy(source_fd: int, target: Path) -> None:
    """`target` as a copy of the open source: a reflink where the filesystem has them (XFS,
    Btrfs, and NFS 4.2 servers that do), else a kernel-side copy. Never a hard link: the parent
    run's files must not change through the child's, and the registry refuses linked files."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    target_fd = os.open(target, flags, 0o644)
    try:
        try:
            fcntl.ioctl(target_fd, _FICLONE, source_fd)
            return
        except OSError:
            pass
        offset, size = 0, os.fstat(source_fd).st_size
        while offset < size:
            sent = os.copy_file_range(source_fd, target_fd, size - offset, offset, offset)
            if sent == 0:
                raise OSError(f"{target}: the source ended early")
            offset += sent
    finally:
        os.close(target_fd)


def artifacts_copy_step(*, source_run_id: uuid.UUID, step: int, target_dir: Path) -> Path:
    """Start a run directory from another run's committed checkpoint step; return where the
    step's own directory landed (e.g. `target_dir/checkpoints/6`).

    Only files the registry lists for that step are copied, each opened safely inside the
    source run's directory (artifacts/fs.py), to the same relative name under `target_dir`. A
    file already there with the same size is kept: a retried attempt does not copy twice.
    """
    files = Artifact.objects.filter(run_id=source_run_id, step=step).values_list(
        "name", "size_bytes"
    )
    step_dir = target_dir
    for name, size in files:
        parts = name.split("/")
        if str(step) in parts:
            step_dir = target_dir.joinpath(*parts[: parts.index(str(step)) + 1])
        target = target_dir / name
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        with open_in_run_dir(source_run_id, name) as opened:
            _clone_or_copy(opened.fd, target)
    return step_dir
