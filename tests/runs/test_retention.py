"""`tunix_prune` on real rows and real files: exactly the right things go, in bounded batches,
once; a dry run changes nothing; pinned, pending and running runs and datasets are untouched."""

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import (
    FORGET_WORKER_SECONDS,
    LogChunk,
    RetentionPrune,
    Run,
    RunMetric,
    RunStatus,
    WorkerHeartbeat,
)
from runs.retention import PruneOptions, prune
from runs.services import run_dir, run_pin
from tests.conftest import REPO
from tests.runs.helpers import wait_for
from traces.models import Dataset

pytestmark = pytest.mark.django_db

CHUNKS = 7
BATCH = 3
STEPS = (10, 20, 30)
OLD = timedelta(days=40)
RECENT = timedelta(days=2)
FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED)


def committed_step(run: Run, step: int, size: int = 2048) -> None:
    step_dir = run_dir(run.pk) / "checkpoints" / str(step)
    (step_dir / "state").mkdir(parents=True)
    (step_dir / "state" / "array.bin").write_bytes(os.urandom(size))
    (step_dir / "commit_success.txt").write_text("ok")


def populate(run: Run, *, chunks: int = CHUNKS) -> Run:
    """A run as a worker leaves it: log chunks, tails, metrics, checkpoints and other files."""
    LogChunk.objects.bulk_create(
        LogChunk(run=run, seq=i, stream="stdout", chunk=f"line {i}\n") for i in range(1, chunks + 1)
    )
    RunMetric.objects.bulk_create(
        RunMetric(run=run, step=s, values={"loss": 1.0 / s}) for s in range(1, 4)
    )
    directory = run_dir(run.pk)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text("{}")
    for step in STEPS:
        committed_step(run, step)
    Run.objects.filter(pk=run.pk).update(stdout_tail=f"tail of {run.name}", stderr_tail="err tail")
    artifacts_sync(run_id=run.pk)
    run.refresh_from_db()
    return run


@dataclass
class World:
    old: dict[RunStatus, Run]  # finished long ago, by status
    recent: dict[RunStatus, Run]  # finished lately, by status
    active: dict[RunStatus, Run]  # pending, running, cancel_requested; created long ago
    pinned: Run
    dataset: Dataset

    @property
    def doomed(self) -> list[Run]:
        return list(self.old.values())

    @property
    def spared(self) -> list[Run]:
        return [*self.recent.values(), *self.active.values(), self.pinned]


@pytest.fixture
def world(make_run: Any) -> World:
    now = timezone.now()

    def finished(status: RunStatus, age: timedelta, **fields: Any) -> Run:
        run = make_run(status, name=f"{status}-{age.days}d", finished_at=now - age, **fields)
        Run.objects.filter(pk=run.pk).update(created_at=now - age - timedelta(hours=1))
        return populate(run)

    # Each a day older than the one before, the pinned one oldest, so `--keep-last` has an order.
    old = {
        status: finished(status, OLD + timedelta(days=i), dataset_key="shared-v1")
        for i, status in enumerate(FINISHED)
    }
    recent = {status: finished(status, RECENT) for status in FINISHED}
    active = {}
    for status in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED):
        run = make_run(status, name=status, dataset_key="shared-v1")
        Run.objects.filter(pk=run.pk).update(created_at=now - OLD)
        active[status] = populate(run)
    pinned = finished(RunStatus.COMPLETED, OLD + timedelta(days=10), pinned=True)
    return World(old, recent, active, pinned, Dataset.objects.get(key="shared-v1"))


def files_of(run: Run) -> set[str]:
    top = run_dir(run.pk)
    return (
        {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()} if top.exists() else set()
    )


def state(run: Run) -> tuple[Any, ...]:
    run.refresh_from_db()
    return (
        LogChunk.objects.filter(run=run).count(),
        sorted(Artifact.objects.filter(run=run).values_list("name", flat=True)),
        files_of(run),
        run.artifact_bytes,
        run.log_pruned_at,
        run.artifacts_pruned_at,
        run.stdout_tail,
        run.stderr_tail,
        RunMetric.objects.filter(run=run).count(),
    )


def everything() -> dict[Any, tuple[Any, ...]]:
    return {run.pk: state(run) for run in Run.objects.all()}


def prune_command(*args: str) -> str:
    out = StringIO()
    call_command("tunix_prune", *args, stdout=out)
    return out.getvalue()


def sql_of(queries: CaptureQueriesContext, verb: str, table: str) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith(f"{verb} ") and f'"{table}"' in q["sql"].split(" WHERE ")[0]
    ]


def test_a_prune_deletes_old_finished_runs_logs_and_all_but_their_last_checkpoint(
    world: World,
) -> None:
    spared_before = {run.pk: state(run) for run in world.spared}
    with CaptureQueriesContext(connection) as queries:
        out = prune_command("--older-than", "30", "--batch-size", str(BATCH))
    for run in world.doomed:
        chunks, names, files, size, log_pruned, files_pruned, stdout, stderr, metrics = state(run)
        assert chunks == 0
        assert log_pruned is not None and files_pruned is not None
        # The tails and the metrics stay: the page still shows the end, compare still works.
        assert (stdout, stderr) == (f"tail of {run.name}", "err tail")
        assert metrics == 3
        last = "checkpoints/30/"
        assert names == sorted(
            ["config.json", f"{last}commit_success.txt", f"{last}state/array.bin"]
        )
        assert files == set(names)
        assert not (run_dir(run.pk) / "checkpoints" / "10").exists()
        assert size == sum(Artifact.objects.filter(run=run).values_list("size_bytes", flat=True))
    for run in world.spared:
        assert state(run) == spared_before[run.pk], run.name
    assert Dataset.objects.filter(key="shared-v1").exists()
    # Every DELETE of log chunks removes at most --batch-size rows, oldest first.
    deletes = sql_of(queries, "DELETE", "tunix_run_log_chunks")
    assert len(deletes) == len(world.doomed) * math.ceil(CHUNKS / BATCH)
    assert all(f"LIMIT 1 OFFSET {BATCH - 1}" in sql for sql in deletes)
    assert "deleted 28 chunks of 4 runs in 12 batches of at most 3" in out
    assert "deleted 8 checkpoint steps, 16 files" in out


def test_a_second_prune_finds_nothing_to_do(world: World) -> None:
    prune_command("--older-than", "30", "--batch-size", str(BATCH))
    before = everything()
    with CaptureQueriesContext(connection) as queries:
        out = prune_command("--older-than", "30", "--batch-size", str(BATCH))
    assert everything() == before
    assert not sql_of(queries, "DELETE", "tunix_run_log_chunks")
    assert not sql_of(queries, "DELETE", "tunix_run_artifacts")
    assert "0 with something to prune" in out
    assert "deleted 0 chunks of 0 runs" in out


def test_a_dry_run_changes_nothing_and_counts_what_a_prune_then_deletes(world: World) -> None:
    before = everything()
    with CaptureQueriesContext(connection) as queries:
        dry = prune_command("--older-than", "30", "--dry-run")
    assert everything() == before
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].split()[0] != "SELECT"]
    assert writes == []
    assert not RetentionPrune.objects.exists()
    assert dry.startswith("dry run: nothing is changed.")
    assert "would delete 28 chunks of 4 runs" in dry
    assert "would delete 8 checkpoint steps, 16 files" in dry
    real = prune_command("--older-than", "30")
    assert "deleted 28 chunks of 4 runs" in real
    assert "deleted 8 checkpoint steps, 16 files" in real


def test_artifacts_all_removes_every_file_and_row_of_old_runs(world: World) -> None:
    out = prune_command("--older-than", "30", "--artifacts=all")
    for run in world.doomed:
        run.refresh_from_db()
        assert not run_dir(run.pk).exists()
        assert not Artifact.objects.filter(run=run).exists()
        assert run.artifact_bytes == 0 and run.artifacts_pruned_at is not None
        # Only artifacts were asked for: the log stays.
        assert LogChunk.objects.filter(run=run).count() == CHUNKS and run.log_pruned_at is None
    assert files_of(world.pinned) and files_of(world.active[RunStatus.RUNNING])
    assert "artifacts (every file): deleted 12 checkpoint steps, 28 files" in out
    assert "logs:" not in out


def test_logs_only_leaves_the_checkpoints(world: World) -> None:
    prune_command("--older-than", "30", "--logs")
    for run in world.doomed:
        assert not LogChunk.objects.filter(run=run).exists()
        assert len(files_of(run)) == 1 + 2 * len(STEPS)


def test_keep_last_spares_the_most_recently_finished_runs_whatever_their_age(
    world: World,
) -> None:
    # The 4 recent runs, then the 2 newest of the old ones, are the 6 most recently finished.
    prune_command("--older-than", "30", "--keep-last", str(len(world.recent) + 2))
    kept = [run.name for run in world.doomed if LogChunk.objects.filter(run=run).exists()]
    assert kept == ["completed-40d", "failed-41d"]


def test_retention_is_off_by_default_and_only_forgets_dead_workers(
    world: World, settings: Any
) -> None:
    now = timezone.now()
    for worker_id, age in (("fresh", 5), ("silent", 3600), ("dead", FORGET_WORKER_SECONDS + 60)):
        WorkerHeartbeat.objects.create(
            worker_id=worker_id,
            hostname="h",
            pid=1,
            started_at=now - timedelta(days=3),
            last_seen=now - timedelta(seconds=age),
        )
    before = everything()
    out = prune_command()
    assert everything() == before
    assert "retention is off" in out
    assert sorted(WorkerHeartbeat.objects.values_list("worker_id", flat=True)) == [
        "fresh",
        "silent",
    ]
    assert "worker heartbeats: deleted 1 rows" in out


def test_the_settings_choose_the_defaults(world: World, settings: Any) -> None:
    settings.TUNIX_RETENTION_DAYS = 30
    settings.TUNIX_RETENTION_ARTIFACTS = "none"
    out = prune_command()
    assert "logs: deleted 28 chunks" in out and "artifacts" not in out
    assert all(len(files_of(run)) == 1 + 2 * len(STEPS) for run in world.doomed)
    record = RetentionPrune.objects.get()
    assert record.trigger == "command" and record.finished_at is not None
    assert record.summary["log_chunks"] == 28 and record.error == ""


@pytest.mark.postgres
def test_a_run_pinned_while_its_log_is_pruned_loses_nothing_more(make_run: Any) -> None:
    run = populate(make_run(RunStatus.COMPLETED, finished_at=timezone.now() - OLD), chunks=10)
    # The first batch's DELETE pins the run (the only one), as an owner clicking Pin at that
    # moment would.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION pin_now() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "UPDATE tunix_runs SET pinned = true; RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER pin_now AFTER DELETE ON tunix_run_log_chunks "
            "FOR EACH STATEMENT EXECUTE FUNCTION pin_now()"
        )
    report = prune(PruneOptions(older_than_days=30, batch_size=BATCH))
    assert LogChunk.objects.filter(run=run).count() == 10 - BATCH
    assert report.skipped_pinned == 1 and report.log_chunks == BATCH
    # Pinned before its checkpoints' turn: they all stay.
    assert len(files_of(run)) == 1 + 2 * len(STEPS)


def test_pinning_exempts_a_run_and_unpinning_makes_it_prunable_again(
    world: World, alice: Any
) -> None:
    target = world.old[RunStatus.COMPLETED]
    run_pin(run_id=target.pk, user=alice)
    prune_command("--older-than", "30")
    assert LogChunk.objects.filter(run=target).count() == CHUNKS
    run_pin(run_id=target.pk, user=alice, pinned=False)
    prune_command("--older-than", "30")
    assert not LogChunk.objects.filter(run=target).exists()


def test_a_directory_that_cannot_be_removed_is_reported_and_tried_again(
    make_run: Any,
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root removes files from read-only directories")
    run = populate(make_run(RunStatus.COMPLETED, finished_at=timezone.now() - OLD))
    locked = run_dir(run.pk) / "checkpoints"
    locked.chmod(0o555)
    try:
        out = prune_command("--older-than", "30")
        assert f"error: run {run.pk}" in out
        assert Artifact.objects.filter(run=run, step=10).exists()
    finally:
        locked.chmod(0o755)
    out = prune_command("--older-than", "30")
    assert "error" not in out
    assert not Artifact.objects.filter(run=run, step=10).exists()


def test_a_symlink_in_a_run_directory_is_removed_as_a_link_never_followed(
    make_run: Any, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"keep me")
    run = populate(make_run(RunStatus.COMPLETED, finished_at=timezone.now() - OLD))
    (run_dir(run.pk) / "checkpoints" / "10" / "state" / "escape").symlink_to(outside)
    prune_command("--older-than", "30")
    assert (outside / "precious.bin").read_bytes() == b"keep me"
    assert not (run_dir(run.pk) / "checkpoints" / "10").exists()
    prune_command("--older-than", "30", "--artifacts=all")
    assert (outside / "precious.bin").read_bytes() == b"keep me"
    assert not run_dir(run.pk).exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than", "-1"],
        ["--older-than", "soon"],
        ["--older-than", "nan"],
        ["--keep-last", "-3"],
        ["--batch-size", "0"],
        ["--artifacts=some"],
    ],
)
def test_bad_options_are_refused_before_anything_is_deleted(world: World, args: list[str]) -> None:
    before = everything()
    with pytest.raises(CommandError):
        prune_command(*args)
    assert everything() == before


def test_rows_whose_files_a_killed_prune_already_removed_are_deleted_by_the_next(
    make_run: Any,
) -> None:
    run = populate(make_run(RunStatus.COMPLETED, finished_at=timezone.now() - OLD))
    # Where a prune killed between a step's files and its rows leaves the run.
    shutil.rmtree(run_dir(run.pk) / "checkpoints" / "10")
    out = prune_command("--older-than", "30")
    assert "error" not in out
    steps = set(Artifact.objects.filter(run=run).values_list("step", flat=True))
    assert steps == {None, 30}
    assert set(Artifact.objects.filter(run=run).values_list("name", flat=True)) == files_of(run)


PRUNE_ARGS = ("--older-than", "30", "--batch-size", "20")


@pytest.mark.django_db(transaction=True)
def test_a_prune_killed_mid_way_leaves_a_consistent_run_that_the_next_prune_finishes(
    make_run: Any, process_env: dict[str, str]
) -> None:
    run = populate(make_run(RunStatus.COMPLETED, finished_at=timezone.now() - OLD), chunks=20_000)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "tunix_prune", *PRUNE_ARGS],
        env=process_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: LogChunk.objects.filter(run=run).count() < 20_000, 30, 0.005)
    finally:
        proc.kill()
        proc.wait(10)
    left = LogChunk.objects.filter(run=run).count()
    assert 0 < left < 20_000
    run.refresh_from_db()
    # Marked before the first batch: the page already says the log was pruned.
    assert run.log_pruned_at is not None
    # Whatever is left is the newest end of the log, without a gap.
    seqs = list(LogChunk.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(20_001 - left, 20_001))
    out = prune_command("--older-than", "30")
    assert "error" not in out
    assert not LogChunk.objects.filter(run=run).exists()
    assert sorted(files_of(run)) == sorted(
        Artifact.objects.filter(run=run).values_list("name", flat=True)
    )
    assert not (run_dir(run.pk) / "checkpoints" / "20").exists()


@pytest.mark.parametrize("mode", ["--artifacts", "--artifacts=all"])
def test_a_step_a_pending_continuation_starts_from_stays_until_it_has_started(
    make_run: Any, mode: str
) -> None:
    parent = populate(make_run(RunStatus.COMPLETED, finished_at=timezone.now() - OLD))
    child = make_run(RunStatus.PENDING, continued_from=parent, continued_from_step=10)
    prune_command("--older-than", "30", mode)
    assert {n for n in files_of(parent) if n.startswith("checkpoints/10/")} == {
        "checkpoints/10/commit_success.txt",
        "checkpoints/10/state/array.bin",
    }
    assert Artifact.objects.filter(run=parent, step=10).count() == 2
    assert not Artifact.objects.filter(run=parent, step=20).exists()
    assert not (run_dir(parent.pk) / "checkpoints" / "20").exists()
    if mode == "--artifacts=all":
        assert "config.json" not in files_of(parent)
    assert set(Artifact.objects.filter(run=parent).values_list("name", flat=True)) == files_of(
        parent
    )
    # Once the continuation has its copy and has ended, the step may go.
    Run.objects.filter(pk=child.pk).update(status=RunStatus.COMPLETED)
    prune_command("--older-than", "30", mode)
    assert not Artifact.objects.filter(run=parent, step=10).exists()
    assert not (run_dir(parent.pk) / "checkpoints" / "10").exists()
