"""`tunixops download`: resume with Range, sha256 checked, never a byte outside `-o`."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from artifacts.services import artifacts_sync
from runs.models import RunStatus
from tests.client.conftest import Cli, env_without_pytest, run_dir
from tests.runs.helpers import wait_for
from tests.sse.conftest import Server
from tunixops_client import Artifact, Client, IntegrityError, UnsafePathError
from tunixops_client.client import safe_target

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def trained(make_run: Any, artifact_root: Path) -> Any:
    """A finished run with two committed checkpoint steps and a plain file, registered."""
    run = make_run(status=RunStatus.COMPLETED, exit_code=0)
    root = run_dir(artifact_root, run)
    for step in (10, 20):
        params = root / "checkpoints" / str(step) / "model_params"
        params.mkdir(parents=True)
        (params / "weights.bin").write_bytes(os.urandom(300_000 + step))
        (root / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").write_text("{}")
    (root / "metrics.jsonl").write_text('{"step": 1}\n')
    artifacts_sync(run_id=run.pk)
    return run


def files_under(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): sha(p.read_bytes())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_one_artifact_a_step_or_all_land_under_the_output_directory_verified(
    cli: Cli, trained: Any, artifact_root: Path, tmp_path: Path, remote: Client
) -> None:
    source = files_under(artifact_root / str(trained.pk))
    weights = next(a for a in remote.artifacts.list(str(trained.pk)) if a.name.endswith("s.bin"))

    one = cli("download", str(trained.pk), "--artifact", str(weights.id), "-o", str(tmp_path / "a"))
    assert one.code == 0, one.err
    assert files_under(tmp_path / "a") == {weights.name: source[weights.name]}
    assert "1 file(s)" in one.err and "sha256 verified" in one.err

    step = cli("download", str(trained.pk), "--step", "20", "-o", str(tmp_path / "s"))
    assert step.code == 0
    assert files_under(tmp_path / "s") == {
        k: v for k, v in source.items() if k.startswith("checkpoints/20/")
    }

    every = cli("download", str(trained.pk), "--all", "-o", str(tmp_path / "all"), "--json")
    assert files_under(tmp_path / "all") == source
    assert {e["skipped"] for e in every.json_lines()} == {False}
    again = cli("download", str(trained.pk), "--all", "-o", str(tmp_path / "all"))
    assert again.out.count("(already there)") == len(source)


def test_a_step_that_does_not_exist_names_the_steps_there_are(cli: Cli, trained: Any) -> None:
    result = cli("download", str(trained.pk), "--step", "15")
    assert result.code == 3
    assert "has no checkpoint step 15 (checkpoint steps: 10, 20)" in result.err


def test_an_interrupted_download_resumes_from_its_part_file_with_a_range_request(
    remote: Client, make_run: Any, artifact_root: Path, tmp_path: Path
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    data = os.urandom(6 * 1024 * 1024 + 123)
    (run_dir(artifact_root, run) / "big.bin").write_bytes(data)
    artifacts_sync(run_id=run.pk)
    (artifact,) = remote.artifacts.list(str(run.pk))

    class Stop(Exception):
        pass

    def stop_after_two_mib(done: int, total: int) -> None:
        if done >= 2 * 1024 * 1024:
            raise Stop

    with pytest.raises(Stop):
        remote.artifacts.download(str(run.pk), artifact, tmp_path, progress=stop_after_two_mib)
    part = tmp_path / "big.bin.part"
    kept = part.stat().st_size
    assert 2 * 1024 * 1024 <= kept < len(data)
    assert not (tmp_path / "big.bin").exists(), "an unverified file never takes the name"

    seen: list[int] = []
    result = remote.artifacts.download(
        str(run.pk), artifact, tmp_path, progress=lambda done, total: seen.append(done)
    )
    assert result.resumed_from == kept and not result.skipped
    assert seen[0] > kept, "counting starts after the bytes already there"
    assert (tmp_path / "big.bin").read_bytes() == data
    assert not part.exists()


@pytest.mark.slow
def test_a_download_killed_mid_transfer_resumes_when_run_again(
    server: Server, token: str, make_run: Any, artifact_root: Path, tmp_path: Path, cli: Cli
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    data = os.urandom(64 * 1024 * 1024)
    (run_dir(artifact_root, run) / "weights.bin").write_bytes(data)
    artifacts_sync(run_id=run.pk)
    out = tmp_path / "out"
    # The command itself, slowed to about 20 MB/s as on a real network, so that it is still
    # downloading when it is killed.
    driver = (
        "import sys, time\n"
        "from tunixops_client import terminal\n"
        "terminal.Bar.__call__ = lambda self, done, total: time.sleep(0.05)\n"
        "from tunixops_client.cli import main\n"
        "sys.exit(main())\n"
    )
    env = {**env_without_pytest(), "TUNIXOPS_URL": server.url, "TUNIXOPS_TOKEN": token}
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, "download", str(run.pk), "--all", "-o", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    part = out / "weights.bin.part"
    wait_for(lambda: part.exists() and part.stat().st_size >= 4 * 1024 * 1024, timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    kept = part.stat().st_size
    assert kept < len(data), "the download must be cut before its end"

    started = time.monotonic()
    result = cli("download", str(run.pk), "--all", "-o", str(out))
    assert result.code == 0, result.err
    assert "(resumed at" in result.out
    assert hashlib.sha256((out / "weights.bin").read_bytes()).hexdigest() == sha(data)
    assert not part.exists()
    assert time.monotonic() - started < 30


def test_a_part_file_with_wrong_bytes_fails_the_sha256_and_is_removed(
    remote: Client, trained: Any, tmp_path: Path
) -> None:
    weights = next(a for a in remote.artifacts.list(str(trained.pk)) if a.name.endswith(".bin"))
    target = tmp_path / weights.name
    target.parent.mkdir(parents=True)
    Path(f"{target}.part").write_bytes(b"\xff" * 1000)
    with pytest.raises(IntegrityError, match="sha256"):
        remote.artifacts.download(str(trained.pk), weights, tmp_path)
    assert not Path(f"{target}.part").exists() and not target.exists()
    # Run again, it starts over and succeeds.
    assert remote.artifacts.download(str(trained.pk), weights, tmp_path).resumed_from == 0
    assert hashlib.sha256(target.read_bytes()).hexdigest() == weights.sha256


def test_a_part_file_longer_than_the_artifact_starts_over(
    remote: Client, trained: Any, tmp_path: Path
) -> None:
    meta = next(a for a in remote.artifacts.list(str(trained.pk)) if a.name == "metrics.jsonl")
    Path(tmp_path / "metrics.jsonl.part").write_bytes(b"x" * 5000)
    remote.artifacts.download(str(trained.pk), meta, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_symlink_inside_the_output_directory_is_never_written_through(
    cli: Cli, trained: Any, tmp_path: Path
) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "checkpoints").symlink_to(elsewhere)
    result = cli("download", str(trained.pk), "--step", "10", "-o", str(out))
    assert result.code == 3
    assert "is not a plain directory" in result.err
    assert list(elsewhere.iterdir()) == []
    (out / "metrics.jsonl").symlink_to(elsewhere / "stolen")
    result = cli("download", str(trained.pk), "--all", "-o", str(out))
    assert result.code == 3 and not (elsewhere / "stolen").exists()


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", "C:/x", "a\\..\\..\\b", "a\x00b", ""],
)
def test_names_that_would_leave_the_output_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_target(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_a_plain_nested_name_lands_inside(tmp_path: Path) -> None:
    assert safe_target(tmp_path / "o", "a/b/c.bin") == (tmp_path / "o" / "a" / "b" / "c.bin")


def test_an_artifact_id_alone_is_looked_up(remote: Client, trained: Any, tmp_path: Path) -> None:
    first = remote.artifacts.list(str(trained.pk))[0]
    result = remote.artifacts.download(str(trained.pk), first.id, tmp_path)
    assert isinstance(result.artifact, Artifact) and result.artifact.id == first.id
    assert remote.artifacts.checkpoints(str(trained.pk))[0]["step"] == 10


def test_the_artifact_list_shows_sizes_and_steps(cli: Cli, trained: Any) -> None:
    result = cli("artifacts", str(trained.pk))
    assert "checkpoints/20/model_params/weights.bin" in result.out
    assert "checkpoint steps: 10, 20" in result.err
    listed = cli("artifacts", str(trained.pk), "--json").json_lines()[0]
    assert {a["step"] for a in listed} == {10, 20, None}


def test_on_a_terminal_a_progress_bar_shows_and_off_it_nothing_but_the_paths(
    cli: Cli, trained: Any, tmp_path: Path
) -> None:
    shown = cli("download", str(trained.pk), "--step", "10", "-o", str(tmp_path / "t"), tty=True)
    assert shown.code == 0
    assert "] 100.0%" in shown.err and "\r\x1b[K" in shown.err
    plain = cli("download", str(trained.pk), "--step", "10", "-o", str(tmp_path / "p"))
    assert "\r" not in plain.err and "%" not in plain.err
    assert plain.out.splitlines()[0].startswith(str(tmp_path / "p" / "checkpoints" / "10"))


def test_an_output_path_that_is_a_file_is_an_error_not_a_traceback(
    cli: Cli, trained: Any, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("download", str(trained.pk), "--all", "-o", str(tmp_path / "file"))
    assert result.code == 3
    assert result.err.startswith("tunixops: [Errno 17] File exists")
