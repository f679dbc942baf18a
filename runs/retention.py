"""Retention: what old finished runs no longer need is deleted, in bounded batches.

For each finished run older than the limit (and not among the `keep_last` newest, and not
pinned) a prune deletes its log chunks (the run keeps its stdout/stderr tails and records
`log_pruned_at`) and its checkpoint files with their artifact rows (every step but the last
committed one, or everything with `all`; it records `artifacts_pruned_at`), keeping any step a
pending or running continuation starts from. Forgotten worker heartbeat rows go too. Runs, their
metrics, traces and datasets are never deleted, so a dataset a pending run needs is never
touched; pending and running runs are never selected.

Every DELETE removes at most `batch_size` rows and is its own short transaction, so a prune of
millions of rows holds no long lock and builds no huge transaction; log batches lock the run's row
and re-check the pin, so a run pinned during a prune loses nothing more. A second prune finds
nothing left to do; a dry run only counts.

Started by `manage.py tunix_prune` (runs/management/commands/tunix_prune.py) or by a worker once
a day at `TUNIX_RETENTION_HOUR` (`scheduled_prune`, one worker at a time under a PostgreSQL
advisory lock).
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from artifacts.fs import artifact_root
from artifacts.models import Artifact
from artifacts.services import PruneMode, artifacts_prune, artifacts_prune_plan
from runs.models import (
    ACTIVE_STATUSES,
    FORGET_WORKER_SECONDS,
    TERMINAL_STATUSES,
    LogChunk,
    RetentionPrune,
    Run,
    RunStatus,
    WorkerHeartbeat,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
# Runs read per query while walking the candidates.
RUN_PAGE = 200
# Larger than any seq (a PositiveIntegerField).
MAX_SEQ = 2**31 - 1
# Any constant shared by every process of one database: "tunixops retention" as an int64.
ADVISORY_LOCK_KEY = 0x7475_6E69_7872_6574


@dataclass(frozen=True)
class PruneOptions:
    # Finished more than this many days ago; None: no run is old enough (retention off).
    older_than_days: float | None
    keep_last: int = 0
    logs: bool = True
    artifacts: PruneMode | None = "last"
    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False


def options_from_settings(**overrides: Any) -> PruneOptions:
    """The prune that `tunix_prune` without options, and the worker's daily prune, perform."""
    modes: dict[str, PruneMode | None] = {"last": "last", "all": "all", "none": None}
    base = PruneOptions(
        older_than_days=settings.TUNIX_RETENTION_DAYS or None,
        keep_last=settings.TUNIX_RETENTION_KEEP_LAST,
        logs=settings.TUNIX_RETENTION_LOGS,
        artifacts=modes[settings.TUNIX_RETENTION_ARTIFACTS],
    )
    return PruneOptions(**{**asdict(base), **overrides})


@dataclass
class PruneReport:
    options: PruneOptions
    cutoff: datetime | None = None
    runs_considered: int = 0
    log_runs: int = 0
    log_chunks: int = 0
    log_batches: int = 0
    largest_batch: int = 0
    # The longest log batch transaction (lock, DELETE, commit): how long a run's row was held.
    longest_batch_seconds: float = 0.0
    artifact_runs: int = 0
    checkpoint_steps: int = 0
    artifact_rows: int = 0
    artifact_bytes: int = 0
    heartbeats: int = 0
    skipped_pinned: int = 0
    stopped: bool = False
    errors: list[str] = field(default_factory=list)

    def batch(self, deleted: int, seconds: float) -> None:
        self.log_batches += 1
        self.largest_batch = max(self.largest_batch, deleted)
        self.longest_batch_seconds = max(self.longest_batch_seconds, seconds)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        return out

    def lines(self) -> list[str]:
        """What the command prints."""
        o = self.options
        would = "would delete" if o.dry_run else "deleted"
        head = "dry run: nothing is changed. " if o.dry_run else ""
        if self.cutoff is None:
            scope = (
                "retention is off (TUNIX_RETENTION_DAYS unset and no --older-than): no run pruned"
            )
        else:
            scope = f"runs finished before {self.cutoff:%Y-%m-%d %H:%M:%S} UTC"
            if o.keep_last:
                scope += f", except the {o.keep_last} most recent"
            scope += f", not pinned: {self.runs_considered} with something to prune"
        out = [head + scope]
        if o.logs and self.cutoff is not None:
            out.append(
                f"logs: {would} {self.log_chunks:,} chunks of {self.log_runs} runs"
                + (
                    f" in {self.log_batches} batches of at most {o.batch_size:,} "
                    f"(longest {self.longest_batch_seconds * 1000:.0f} ms)"
                    if not o.dry_run
                    else ""
                )
                + "; stdout/stderr tails kept"
            )
        if o.artifacts and self.cutoff is not None:
            kept = "every file" if o.artifacts == "all" else "all but each run's last checkpoint"
            out.append(
                f"artifacts ({kept}): {would} {self.checkpoint_steps} checkpoint steps, "
                f"{self.artifact_rows:,} files ({_size(self.artifact_bytes)}) "
                f"of {self.artifact_runs} runs"
            )
        out.append(f"worker heartbeats: {would} {self.heartbeats} rows of workers silent > 24 h")
        if self.skipped_pinned:
            out.append(f"{self.skipped_pinned} runs were pinned during the prune and kept")
        if self.stopped:
            out.append("stopped early (shutdown); run it again to finish")
        out.extend(f"error: {error}" for error in self.errors)
        return out


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# -- choosing runs --------------------------------------------------------------------------------


def _old_runs(options: PruneOptions, cutoff: datetime) -> QuerySet[Run]:
    """Finished, unpinned runs past the cutoff and outside the `keep_last` newest."""
    runs = Run.objects.filter(status__in=TERMINAL_STATUSES, pinned=False, finished_at__lt=cutoff)
    if options.keep_last:
        newest = (
            Run.objects.filter(status__in=TERMINAL_STATUSES)
            .order_by("-finished_at", "-pk")
            .values_list("finished_at", "pk")[options.keep_last - 1 : options.keep_last]
        )
        boundary = next(iter(newest), None)
        if boundary is None:
            return runs.none()
        finished, pk = boundary
        runs = runs.filter(Q(finished_at__lt=finished) | Q(finished_at=finished, pk__lt=pk))
    return runs


def _with_work(runs: QuerySet[Run], options: PruneOptions) -> QuerySet[Run]:
    """Each run annotated with what is left to prune: index probes per run, no counts."""
    steps = Artifact.objects.filter(run_id=OuterRef("pk"), step__isnull=False).order_by()
    return runs.annotate(
        has_log=Exists(LogChunk.objects.filter(run_id=OuterRef("pk"))),
        has_files=Exists(Artifact.objects.filter(run_id=OuterRef("pk"))),
        first_step=Subquery(steps.order_by("step").values("step")[:1]),
        last_step=Subquery(steps.order_by("-step").values("step")[:1]),
    )


def _pages(runs: QuerySet[Run]) -> Iterator[list[Run]]:
    """Runs oldest first in pages, by keyset on (finished_at, id) as the retention index has it."""
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        page = runs
        if after is not None:
            page = page.filter(
                Q(finished_at__gt=after[0]) | Q(finished_at=after[0], pk__gt=after[1])
            )
        found = list(
            page.order_by("finished_at", "pk").only(
                "pk", "finished_at", "log_pruned_at", "artifacts_pruned_at"
            )[:RUN_PAGE]
        )
        if not found:
            return
        yield found
        last = found[-1]
        assert last.finished_at is not None
        after = (last.finished_at, last.pk)


def _run_dir_exists(run_id: uuid.UUID) -> bool:
    path = artifact_root() / str(run_id)
    return path.is_dir() and not path.is_symlink()


# -- pruning one run ------------------------------------------------------------------------------


def _lock_unpinned(run_id: uuid.UUID) -> Run | None:
    """The run's row, locked, if it is still not pinned (call inside a transaction)."""
    return (
        Run.objects.select_for_update()
        .filter(pk=run_id, pinned=False)
        .only("pk", "log_pruned_at", "artifacts_pruned_at")
        .first()
    )


def _batch_end(chunks: QuerySet[LogChunk], size: int) -> Coalesce:
    """The seq of the run's `size`-th oldest chunk (or past every seq when fewer are left): one
    DELETE of `seq <= that` walks the (run, seq) index, reading no more than `size` entries."""
    nth = Subquery(chunks.order_by("seq").values("seq")[size - 1 : size])
    return Coalesce(nth, Value(MAX_SEQ))


def _prune_log(
    run_id: uuid.UUID, options: PruneOptions, report: PruneReport, now: datetime
) -> bool:
    """Delete the run's log chunks oldest first; False if the run was pinned meanwhile."""
    if options.dry_run:
        report.log_chunks += LogChunk.objects.filter(run_id=run_id).count()
        report.log_runs += 1
        return True
    chunks = LogChunk.objects.filter(run_id=run_id)
    counted = False
    while True:
        began = time.monotonic()
        with transaction.atomic():
            run = _lock_unpinned(run_id)
            if run is None:
                return False
            if run.log_pruned_at is None:
                Run.objects.filter(pk=run_id).update(log_pruned_at=now)
            deleted, _ = chunks.filter(seq__lte=_batch_end(chunks, options.batch_size)).delete()
        if deleted:
            report.batch(deleted, time.monotonic() - began)
            report.log_chunks += deleted
            if not counted:
                report.log_runs += 1
                counted = True
        if deleted < options.batch_size:
            return True


def _still_unpinned(run_id: uuid.UUID) -> bool:
    return Run.objects.filter(pk=run_id, pinned=False).exists()


def _needed_steps(run_id: uuid.UUID) -> set[int]:
    """The run's checkpoint steps that a pending or running continuation starts from (the
    worker copies the step when it starts the continuation, and again on a retry)."""
    return {
        step
        for step in Run.objects.filter(
            continued_from_id=run_id, status__in=[RunStatus.PENDING, *ACTIVE_STATUSES]
        ).values_list("continued_from_step", flat=True)
        if step is not None
    }


def _prune_artifacts(
    run_id: uuid.UUID, mode: PruneMode, options: PruneOptions, report: PruneReport, now: datetime
) -> bool:
    if options.dry_run:
        done = artifacts_prune_plan(run_id=run_id, mode=mode, needed=_needed_steps(run_id))
    else:
        with transaction.atomic():
            run = _lock_unpinned(run_id)
            if run is None:
                return False
            if run.artifacts_pruned_at is None:
                Run.objects.filter(pk=run_id).update(artifacts_pruned_at=now)
        done = artifacts_prune(
            run_id=run_id,
            mode=mode,
            batch_size=options.batch_size,
            proceed=lambda: _still_unpinned(run_id),
            needed=lambda: _needed_steps(run_id),
        )
    if done.rows or done.steps:
        report.artifact_runs += 1
    report.checkpoint_steps += done.steps
    report.artifact_rows += done.rows
    report.artifact_bytes += done.bytes
    return True


def _needs_artifact_prune(run: Run, mode: PruneMode) -> bool:
    if mode == "last":
        first, last = getattr(run, "first_step", None), getattr(run, "last_step", None)
        return first is not None and last is not None and first < last
    if getattr(run, "has_files", False):
        return True
    # Files nobody registered still take disk; once pruned, a run has no directory left.
    return run.artifacts_pruned_at is None and _run_dir_exists(run.pk)


# -- the prune ------------------------------------------------------------------------------------


def prune(
    options: PruneOptions,
    *,
    trigger: str = "command",
    now: datetime | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneReport:
    """Prune what `options` say; record it (unless a dry run) and return what was done."""
    now = now or timezone.now()
    report = PruneReport(options=options)
    record = None
    if not options.dry_run:
        record = RetentionPrune.objects.create(started_at=now, trigger=trigger[:255])
    try:
        _prune(options, report, now, should_stop)
    except BaseException as exc:
        if record is not None:
            record.finished_at = timezone.now()
            record.summary = report.as_dict()
            record.error = repr(exc)[:2000]
            record.save(update_fields=["finished_at", "summary", "error"])
        raise
    if record is not None:
        record.finished_at = timezone.now()
        record.summary = report.as_dict()
        record.error = "; ".join(report.errors)[:2000]
        record.save(update_fields=["finished_at", "summary", "error"])
    return report


def _prune(
    options: PruneOptions, report: PruneReport, now: datetime, should_stop: Callable[[], bool]
) -> None:
    if options.older_than_days is not None and (options.logs or options.artifacts):
        report.cutoff = now - timedelta(days=options.older_than_days)
        for page in _pages(_with_work(_old_runs(options, report.cutoff), options)):
            for run in page:
                if should_stop():
                    report.stopped = True
                    return
                _prune_run(run, options, report, now)
    dead = WorkerHeartbeat.objects.forgotten(now, FORGET_WORKER_SECONDS)
    if options.dry_run:
        report.heartbeats = dead.count()
    else:
        report.heartbeats, _ = dead.delete()


def _prune_run(run: Run, options: PruneOptions, report: PruneReport, now: datetime) -> None:
    wants_log = options.logs and getattr(run, "has_log", False)
    mode = options.artifacts
    wants_files = mode is not None and _needs_artifact_prune(run, mode)
    if not (wants_log or wants_files):
        return
    report.runs_considered += 1
    kept = True
    if wants_log:
        kept = _prune_log(run.pk, options, report, now)
    if kept and mode is not None and wants_files:
        try:
            kept = _prune_artifacts(run.pk, mode, options, report, now)
        except OSError as exc:
            # One unremovable directory (permissions, a read-only mount) must not stop the rest;
            # its rows stay, so the next prune tries it again.
            report.errors.append(f"run {run.pk}: {exc}")
            log.warning("retention: run %s: %s", run.pk, exc, extra={"run_id": str(run.pk)})
    if not kept:
        report.skipped_pinned += 1


# -- the worker's daily prune ---------------------------------------------------------------------


def last_prune() -> RetentionPrune | None:
    return RetentionPrune.objects.order_by("-started_at").first()


def prune_due(now: datetime) -> bool:
    """Whether the daily prune should start now: configured, at or past today's hour, and no
    prune (by any worker or the command) has started since that hour."""
    hour = settings.TUNIX_RETENTION_HOUR
    if hour is None or not settings.TUNIX_RETENTION_DAYS:
        return False
    mark = now.astimezone(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    if now < mark:
        mark -= timedelta(days=1)
    return not RetentionPrune.objects.filter(started_at__gte=mark).exists()


@contextmanager
def advisory_lock() -> Iterator[bool]:
    """Whether this connection got the retention lock; released on exit (or when the connection
    dies). SQLite serves one host and has no such lock: there it is always granted."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        got = bool(cursor.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])


def scheduled_prune(
    *, trigger: str, now: datetime | None = None, should_stop: Callable[[], bool] = lambda: False
) -> PruneReport | None:
    """The daily prune, if it is due and no other worker is doing it; None when skipped."""
    now = now or timezone.now()
    with advisory_lock() as got:
        # Checked again under the lock: another worker may have just finished today's prune.
        if not got or not prune_due(now):
            return None
        return prune(options_from_settings(), trigger=trigger, now=now, should_stop=should_stop)
