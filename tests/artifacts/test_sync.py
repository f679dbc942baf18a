import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from artifacts.models import Artifact
from artifacts.services import SyncResult, artifacts_sync
from runs.models import Run
from tests.artifacts.conftest import PutFile

pytestmark = pytest.mark.django_db


def registry(run: Run) -> dict[str, tuple[int, str, int | None]]:
    return {a.name: (a.size_bytes, a.sha256, a.step) for a in Artifact.objects.filter(run=run)}


def commit_step(put_file: PutFile, run: Run, step: int, root: str = "checkpoints") -> Path:
    """An Orbax-shaped committed step: metadata, commit marker, one item with a data file."""
    put_file(run, f"{root}/{step}/_CHECKPOINT_METADATA", b'{"step": %d}' % step)
    put_file(run, f"{root}/{step}/commit_success.txt", b"Checkpoint commit was successful.")
    put_file(run, f"{root}/{step}/model_params/_METADATA", b"{}")
    return put_file(run, f"{root}/{step}/model_params/d/0a1b2c", os.urandom(5000))


def test_it_registers_each_file_with_its_size_and_streamed_sha256(
    make_run: Any, put_file: PutFile
) -> None:
    run = make_run()
    data = os.urandom(3 * 1024 * 1024 + 17)
    put_file(run, "config.json", b'{"max_steps": 5}')
    put_file(run, "tb/events.out.tfevents.1", data)

    result = artifacts_sync(run_id=run.pk)

    assert result == SyncResult(added=2)
    assert registry(run) == {
        "config.json": (16, hashlib.sha256(b'{"max_steps": 5}').hexdigest(), None),
        "tb/events.out.tfevents.1": (len(data), hashlib.sha256(data).hexdigest(), None),
    }


def test_files_of_a_committed_step_carry_its_number(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    commit_step(put_file, run, 20)

    artifacts_sync(run_id=run.pk)

    steps = {name: step for name, (_, _, step) in registry(run).items()}
    assert steps == {
        "checkpoints/20/_CHECKPOINT_METADATA": 20,
        "checkpoints/20/commit_success.txt": 20,
        "checkpoints/20/model_params/_METADATA": 20,
        "checkpoints/20/model_params/d/0a1b2c": 20,
    }


def test_a_forks_copy_of_its_parents_step_is_input_not_a_step_of_its_own(
    make_run: Any, put_file: PutFile
) -> None:
    run = make_run()
    commit_step(put_file, run, 20, root="parent/checkpoints")
    commit_step(put_file, run, 3, root="checkpoints/actor")

    artifacts_sync(run_id=run.pk)

    steps = {name: step for name, (_, _, step) in registry(run).items()}
    assert {n for n, step in steps.items() if step is None} == {
        "parent/checkpoints/20/_CHECKPOINT_METADATA",
        "parent/checkpoints/20/commit_success.txt",
        "parent/checkpoints/20/model_params/_METADATA",
        "parent/checkpoints/20/model_params/d/0a1b2c",
    }
    assert set(steps.values()) == {None, 3}


def test_it_skips_in_flight_and_uncommitted_steps(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    commit_step(put_file, run, 10)
    put_file(run, "checkpoints/20.orbax-checkpoint-tmp/model_params/d/ff", b"half written")
    put_file(run, "checkpoints/20.orbax-checkpoint-tmp-1764345600/_CHECKPOINT_METADATA", b"{}")
    put_file(run, "checkpoints/10/optimizer_state.orbax-checkpoint-tmp/d/ee", b"item in flight")
    # A numeric directory without its commit marker is a step Orbax has not finished.
    put_file(run, "checkpoints/30/model_params/d/dd", b"no marker yet")

    artifacts_sync(run_id=run.pk)

    names = set(registry(run))
    assert names == {
        "checkpoints/10/_CHECKPOINT_METADATA",
        "checkpoints/10/commit_success.txt",
        "checkpoints/10/model_params/_METADATA",
        "checkpoints/10/model_params/d/0a1b2c",
    }


def test_a_step_appears_once_it_commits(
    make_run: Any, put_file: PutFile, artifact_root: Path
) -> None:
    run = make_run()
    put_file(run, "checkpoints/30.orbax-checkpoint-tmp/model_params/d/dd", b"data")
    artifacts_sync(run_id=run.pk)
    assert registry(run) == {}

    base = artifact_root / str(run.pk) / "checkpoints"
    os.rename(base / "30.orbax-checkpoint-tmp", base / "30")
    put_file(run, "checkpoints/30/commit_success.txt", b"ok")
    assert artifacts_sync(run_id=run.pk) == SyncResult(added=2)
    assert {step for _, _, step in registry(run).values()} == {30}


def test_a_pruned_step_leaves_the_registry(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    step_file = commit_step(put_file, run, 10)
    commit_step(put_file, run, 20)
    artifacts_sync(run_id=run.pk)

    shutil.rmtree(step_file.parents[2])
    result = artifacts_sync(run_id=run.pk)

    assert result == SyncResult(removed=4, unchanged=4)
    assert {step for _, _, step in registry(run).values()} == {20}


def test_a_second_sync_with_nothing_new_changes_nothing(
    make_run: Any, put_file: PutFile, django_assert_num_queries: Any
) -> None:
    run = make_run()
    commit_step(put_file, run, 10)
    put_file(run, "config.json", b"{}")
    artifacts_sync(run_id=run.pk)
    before = list(Artifact.objects.filter(run=run).values("pk", "updated_at", "sha256"))

    with django_assert_num_queries(1):
        result = artifacts_sync(run_id=run.pk)

    assert result == SyncResult(unchanged=5)
    assert list(Artifact.objects.filter(run=run).values("pk", "updated_at", "sha256")) == before


def test_it_does_not_rehash_a_file_that_was_not_touched(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    put_file(run, "weights.bin", b"A" * 100)
    artifacts_sync(run_id=run.pk)
    assert artifacts_sync(run_id=run.pk) == SyncResult(unchanged=1)


def test_a_file_rewritten_with_the_same_size_and_its_old_mtime_is_hashed_again(
    make_run: Any, put_file: PutFile
) -> None:
    run = make_run()
    path = put_file(run, "weights.bin", b"A" * 100)
    artifacts_sync(run_id=run.pk)
    stat = path.stat()

    # Same size, mtime set back: only the ctime (which no one can set back) says it changed.
    path.write_bytes(b"B" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert artifacts_sync(run_id=run.pk) == SyncResult(updated=1)
    assert registry(run)["weights.bin"][1] == hashlib.sha256(b"B" * 100).hexdigest()


def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_hashed_again(
    make_run: Any, put_file: PutFile, artifact_root: Path
) -> None:
    run = make_run()
    path = put_file(run, "weights.bin", b"A" * 100)
    artifacts_sync(run_id=run.pk)
    stat = path.stat()

    other = artifact_root / "elsewhere.bin"
    other.write_bytes(b"C" * 100)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)  # a new inode under the old name
    assert artifacts_sync(run_id=run.pk) == SyncResult(updated=1)
    row = Artifact.objects.get(run=run)
    assert (row.inode, row.sha256) == (path.stat().st_ino, hashlib.sha256(b"C" * 100).hexdigest())


def test_a_hard_linked_file_is_never_registered(
    make_run: Any, put_file: PutFile, artifact_root: Path
) -> None:
    run = make_run()
    secret = artifact_root / "not-this-runs.bin"
    secret.write_bytes(b"secret" * 100)
    put_file(run, "plain.bin", b"mine")
    target = artifact_root / str(run.pk) / "stolen.bin"
    os.link(secret, target)
    assert artifacts_sync(run_id=run.pk) == SyncResult(added=1)
    assert set(registry(run)) == {"plain.bin"}


def test_a_registered_file_that_becomes_a_hard_link_leaves_the_registry(
    make_run: Any, put_file: PutFile, artifact_root: Path
) -> None:
    run = make_run()
    path = put_file(run, "weights.bin", b"A" * 100)
    artifacts_sync(run_id=run.pk)
    os.link(path, artifact_root / "copy-outside.bin")
    assert artifacts_sync(run_id=run.pk) == SyncResult(removed=1)
    assert registry(run) == {}


def test_a_changed_file_is_hashed_again(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    path = put_file(run, "tb/events", b"one")
    artifacts_sync(run_id=run.pk)
    created = Artifact.objects.get(run=run).created_at

    path.write_bytes(b"one two")
    assert artifacts_sync(run_id=run.pk) == SyncResult(updated=1)

    row = Artifact.objects.get(run=run)
    assert (row.size_bytes, row.sha256) == (7, hashlib.sha256(b"one two").hexdigest())
    assert row.created_at == created
    assert row.updated_at > created


def test_it_never_follows_a_symlink(
    make_run: Any, put_file: PutFile, tmp_path: Path, artifact_root: Path
) -> None:
    run = make_run()
    other = make_run()
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the run dir")
    other_file = put_file(other, "config.json", b"another run's file")
    outside_dir = tmp_path / "outside"
    (outside_dir / "10").mkdir(parents=True)
    (outside_dir / "10" / "commit_success.txt").write_text("ok")
    put_file(run, "config.json", b"{}")
    run_dir = artifact_root / str(run.pk)
    (run_dir / "leak.txt").symlink_to(secret)
    (run_dir / "other.json").symlink_to(other_file)
    (run_dir / "checkpoints").symlink_to(outside_dir, target_is_directory=True)
    (run_dir / "inside.json").symlink_to(run_dir / "config.json")

    artifacts_sync(run_id=run.pk)

    assert set(registry(run)) == {"config.json"}


def test_fifos_and_sockets_are_not_registered(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    path = put_file(run, "config.json", b"{}")
    # Opening a FIFO for reading would block the sync until a writer came along.
    os.mkfifo(path.parent / "pipe")

    assert artifacts_sync(run_id=run.pk) == SyncResult(added=1)


def test_a_run_dir_that_is_a_symlink_registers_nothing(
    make_run: Any, tmp_path: Path, artifact_root: Path
) -> None:
    run = make_run()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    (artifact_root / str(run.pk)).symlink_to(elsewhere, target_is_directory=True)

    assert artifacts_sync(run_id=run.pk) == SyncResult()
    assert registry(run) == {}


def test_a_missing_run_dir_clears_the_registry(
    make_run: Any, put_file: PutFile, artifact_root: Path
) -> None:
    run = make_run()
    put_file(run, "config.json", b"{}")
    artifacts_sync(run_id=run.pk)

    shutil.rmtree(artifact_root / str(run.pk))

    assert artifacts_sync(run_id=run.pk) == SyncResult(removed=1)


def test_names_the_registry_cannot_hold_are_skipped(
    make_run: Any, put_file: PutFile, artifact_root: Path
) -> None:
    run = make_run()
    put_file(run, "config.json", b"{}")
    run_dir = artifact_root / str(run.pk)
    # Bytes that are not UTF-8 come back from the filesystem as surrogate escapes.
    with open(os.fsencode(run_dir) + b"/bad-\xff.bin", "wb") as handle:
        handle.write(b"x")
    deep = run_dir.joinpath(*(c * 200 for c in "defghi"))
    deep.mkdir(parents=True)
    (deep / "too-long.bin").write_bytes(b"x")

    artifacts_sync(run_id=run.pk)

    assert set(registry(run)) == {"config.json"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_syncs_of_one_run_agree(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    for step in (10, 20, 30):
        commit_step(put_file, run, step)
    results: list[SyncResult] = []
    errors: list[BaseException] = []

    def sync() -> None:
        from django.db import connection

        try:
            results.append(artifacts_sync(run_id=run.pk))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sync) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sum(r.added for r in results) == 12
    assert len(registry(run)) == 12


def test_a_deleted_run_syncs_to_nothing(make_run: Any, put_file: PutFile) -> None:
    run = make_run()
    put_file(run, "config.json", b"{}")
    run_id = run.pk
    run.delete()

    assert artifacts_sync(run_id=run_id) == SyncResult()
    assert not Artifact.objects.filter(run_id=run_id).exists()


def test_the_sync_command_rehashes_a_finished_runs_touched_files(
    make_run: Any, put_file: PutFile
) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    run = make_run(status="completed")
    path = put_file(run, "weights.bin", b"A" * 10)
    put_file(run, "config.json", b"{}")
    artifacts_sync(run_id=run.pk)
    before = path.stat()
    path.write_bytes(b"B" * 10)  # restored from a backup, say: other inode/ctime
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    out = StringIO()
    call_command("tunix_artifacts_sync", str(run.pk), stdout=out)
    assert out.getvalue().strip() == f"{run.pk}: 0 added, 1 re-hashed, 0 removed, 1 unchanged"
    assert registry(run)["weights.bin"][1] == hashlib.sha256(b"B" * 10).hexdigest()

    out = StringIO()
    call_command("tunix_artifacts_sync", "--all", stdout=out)
    assert "0 re-hashed" in out.getvalue()
    with pytest.raises(CommandError, match="No such run"):
        call_command("tunix_artifacts_sync", "5f0b8a4e-0000-4000-8000-000000000000")
    with pytest.raises(CommandError, match="Give run ids or --all"):
        call_command("tunix_artifacts_sync")
