"""Artifact registry workflows: the worker keeps the registry in step with each run's directory."""

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from artifacts.fs import ArtifactUnavailable, FoundFile, open_in_run_dir, scan_run_dir
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
    """The file's sha256, streamed; None if it vanished, or changed while it was read (a file
    still being written is registered by a later sync, once it holds still)."""
    try:
        opened = open_in_run_dir(run_id, found.name)
    except ArtifactUnavailable:
        return None
    with opened:
        digest = hashlib.sha256()
        while chunk := os.read(opened.fd, HASH_CHUNK_BYTES):
            digest.update(chunk)
        after = os.fstat(opened.fd)
    if (after.st_size, after.st_mtime_ns) != (found.size, found.mtime_ns):
        return None
    if (opened.size, opened.mtime_ns) != (found.size, found.mtime_ns):
        return None
    return digest.hexdigest()


def artifacts_sync(*, run_id: uuid.UUID) -> SyncResult:
    """Bring the run's registry in line with `TUNIX_ARTIFACT_ROOT/<run_id>/`.

    New or changed files are hashed and registered; rows whose file is gone are deleted. A file
    whose size and mtime match its row is not read again, so a sync that finds nothing new costs
    one directory walk and one query. Safe to call from a background thread while the web
    process serves downloads; a download checks size and mtime against its row before sending.
    """
    with _run_lock(run_id):
        return _sync(run_id)


def _sync(run_id: uuid.UUID) -> SyncResult:
    known = {
        name: (size, mtime_ns, step, pk)
        for name, size, mtime_ns, step, pk in Artifact.objects.filter(run_id=run_id).values_list(
            "name", "size_bytes", "mtime_ns", "step", "pk"
        )
    }
    now = timezone.now()
    rows: list[Artifact] = []
    seen: set[str] = set()
    added = updated = unchanged = 0
    for found in scan_run_dir(run_id):
        seen.add(found.name)
        row = known.get(found.name)
        if row is not None and row[:3] == (found.size, found.mtime_ns, found.step):
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
    gone = [row[3] for name, row in known.items() if name not in seen]
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
                update_fields=["size_bytes", "mtime_ns", "sha256", "step", "updated_at"],
            )
            for start in range(0, len(gone), BATCH_SIZE):
                Artifact.objects.filter(pk__in=gone[start : start + BATCH_SIZE]).delete()
    except IntegrityError:
        if not Run.objects.filter(pk=run_id).exists():
            logger.info("artifacts_sync: run %s was deleted during the sync", run_id)
            return SyncResult()
        raise
    result = SyncResult(added=added, updated=updated, removed=len(gone), unchanged=unchanged)
    logger.info("artifacts_sync: run %s %s", run_id, result)
    return result
