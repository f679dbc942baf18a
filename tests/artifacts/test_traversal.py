"""Attempts to read outside a run's own directory, over raw HTTP against daphne: each one is a
404 that leaks no byte of the target and names no filesystem path.

Poisoned registry rows carry the size and mtime of the file they aim at, so only the path checks
stand between them and the bytes.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import Run
from tests.artifacts.conftest import PutFile
from tests.artifacts.servers import Daphne, raw_request

pytestmark = pytest.mark.django_db(transaction=True)

SECRETS = (b"OUTSIDE-SECRET-7f3a", b"OTHER-RUN-SECRET-91c2", b"ETC-PASSWD-root:x:0:0")


@dataclass
class World:
    run: Run
    other: Run
    root: Path
    outside: Path
    other_config: Path
    ids: dict[str, int]
    other_artifact: Artifact


def poison(run: Run, name: str, aim: Path | None, step: int | None = None) -> int:
    """A registry row for `name` that looks valid for the file at `aim`."""
    st = aim.stat() if aim is not None and aim.exists() else None
    row = Artifact.objects.create(
        run=run,
        name=name,
        size_bytes=st.st_size if st else 0,
        mtime_ns=st.st_mtime_ns if st else 0,
        sha256="0" * 64,
        step=step,
    )
    return row.pk


@pytest.fixture
def world(make_run: Any, put_file: PutFile, on_live_root: Path) -> World:
    root = on_live_root
    run, other = make_run(), make_run()
    put_file(run, "config.json", b"{}")
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/0a", b"weights")
    other_config = put_file(other, "config.json", SECRETS[1])
    put_file(other, "checkpoints/20/commit_success.txt", SECRETS[1])
    artifacts_sync(run_id=run.pk)
    artifacts_sync(run_id=other.pk)

    outside = root.parent / f"outside-{run.pk}"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRETS[0])
    (outside / "dir" / "secret.txt").write_bytes(SECRETS[0])
    (outside / "config.json").write_bytes(SECRETS[0])
    fake_passwd = outside / "passwd"
    fake_passwd.write_bytes(SECRETS[2])

    run_dir = root / str(run.pk)
    (run_dir / "leak.txt").symlink_to(outside / "secret.txt")
    (run_dir / "peer.json").symlink_to(other_config)
    (run_dir / "linkdir").symlink_to(outside / "dir", target_is_directory=True)
    (run_dir / "inside.json").symlink_to(run_dir / "config.json")
    os.mkfifo(run_dir / "pipe")

    # A third run whose whole directory is a symlink to somewhere else.
    hijacked = make_run()
    (root / str(hijacked.pk)).symlink_to(outside, target_is_directory=True)

    b = str(other.pk)
    ids = {
        "dotdot to another run": poison(run, f"../{b}/config.json", other_config),
        "absolute path of another run's file": poison(run, str(other_config), other_config),
        "absolute path outside the root": poison(run, str(outside / "secret.txt"), outside),
        "absolute /etc/passwd": poison(run, "/etc/passwd", Path("/etc/passwd")),
        "dotdot inside a name": poison(run, f"checkpoints/../../{b}/config.json", other_config),
        "dotdot to the parent of the root": poison(
            run, f"../../{outside.name}/secret.txt", outside / "secret.txt"
        ),
        "literal percent-encoded dotdot": poison(run, f"%2e%2e/{b}/config.json", other_config),
        "backslash dotdot": poison(run, f"..\\{b}\\config.json", other_config),
        "symlink to a file outside": poison(run, "leak.txt", outside / "secret.txt"),
        "symlink to another run's file": poison(run, "peer.json", other_config),
        "symlinked directory outside": poison(
            run, "linkdir/secret.txt", outside / "dir/secret.txt"
        ),
        "symlink inside the run": poison(run, "inside.json", run_dir / "config.json"),
        "fifo": poison(run, "pipe", None),
        "a directory": poison(run, "checkpoints", None),
        "trailing slash": poison(run, "config.json/", run_dir / "config.json"),
        "empty name": poison(run, "", None),
        "dot": poison(run, ".", None),
        "step zip through dotdot": poison(
            run,
            f"../{b}/checkpoints/20/commit_success.txt",
            root / b / "checkpoints/20/commit_success.txt",
            step=99,
        ),
        "run dir that is a symlink": poison(hijacked, "config.json", outside / "config.json"),
        "fake passwd via dotdot": poison(run, f"../../{outside.name}/passwd", fake_passwd),
    }
    return World(
        run=run,
        other=other,
        root=root,
        outside=outside,
        other_config=other_config,
        ids=ids,
        other_artifact=Artifact.objects.get(run=other, name="config.json"),
    )


def by_row(case: str) -> Callable[[World], str]:
    def target(w: World) -> str:
        run = w.run
        if case == "run dir that is a symlink":
            run = Run.objects.exclude(pk__in=[w.run.pk, w.other.pk]).get()
        if case == "step zip through dotdot":
            return f"/api/tunix/runs/{run.pk}/checkpoints/99/download"
        return f"/api/tunix/runs/{run.pk}/artifacts/{w.ids[case]}/download"

    return target


def by_url(path: str) -> Callable[[World], str]:
    def target(w: World) -> str:
        a = w.run.pk
        return path.format(
            a=a,
            b=w.other.pk,
            bid=w.other_artifact.pk,
            base=f"/api/tunix/runs/{a}",
        )

    return target


CASES: dict[str, Callable[[World], str]] = {
    case: by_row(case)
    for case in (
        "dotdot to another run",
        "absolute path of another run's file",
        "absolute path outside the root",
        "absolute /etc/passwd",
        "dotdot inside a name",
        "dotdot to the parent of the root",
        "literal percent-encoded dotdot",
        "backslash dotdot",
        "symlink to a file outside",
        "symlink to another run's file",
        "symlinked directory outside",
        "symlink inside the run",
        "fifo",
        "a directory",
        "trailing slash",
        "empty name",
        "dot",
        "step zip through dotdot",
        "run dir that is a symlink",
        "fake passwd via dotdot",
    )
} | {
    "another run's artifact id": by_url("{base}/artifacts/{bid}/download"),
    "another run's step": by_url("{base}/checkpoints/20/download"),
    "unknown artifact id": by_url("{base}/artifacts/999999999/download"),
    "non-numeric artifact id": by_url("{base}/artifacts/abc/download"),
    "signed artifact id": by_url("{base}/artifacts/+{bid}/download"),
    "negative artifact id": by_url("{base}/artifacts/-1/download"),
    "encoded slash traversal": by_url("{base}/artifacts/..%2F..%2F{b}%2Fconfig.json/download"),
    "encoded dotdot": by_url("{base}/artifacts/%2e%2e/download"),
    "double-encoded dotdot": by_url("{base}/artifacts/%252e%252e%252fconfig.json/download"),
    "overlong utf-8 dots": by_url("{base}/artifacts/%c0%ae%c0%ae%c0%af/download"),
    "nul after the id": by_url("{base}/artifacts/{bid}%00/download"),
    "raw dotdot segments": by_url("{base}/artifacts/../../{b}/artifacts/{bid}/download"),
    "dotdot in the run id": by_url("/api/tunix/runs/..%2F{b}/artifacts/{bid}/download"),
    "encoded traversal as a step": by_url("{base}/checkpoints/10%2F..%2F..%2F{b}/download"),
    "dotdot as a step": by_url("{base}/checkpoints/../download"),
}


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", list(CASES))
def test_it_refuses_with_404_and_leaks_nothing(
    case: str, world: World, daphne: Daphne, token: str
) -> None:
    target = CASES[case](world).encode("latin-1")
    response = raw_request(daphne.port, target, {"Authorization": f"Token {token}"})

    assert response.status == 404, (case, response.status, response.body[:300])
    for secret in SECRETS:
        assert secret not in response.body
    text = response.body.decode("utf-8", "replace")
    for path in (str(world.root), str(world.outside), "/tmp/", "/etc/"):
        assert path not in text
    assert not {"x-accel-redirect", "x-sendfile"} & set(response.headers)


def test_a_nul_byte_in_the_request_line_is_refused(
    world: World, daphne: Daphne, token: str
) -> None:
    target = f"/api/tunix/runs/{world.run.pk}/artifacts/1\x00/download".encode()
    response = raw_request(daphne.port, target, {"Authorization": f"Token {token}"})
    assert response.status in (400, 404)
    assert all(secret not in response.body for secret in SECRETS)


def test_the_legitimate_files_still_download(world: World, daphne: Daphne, token: str) -> None:
    artifact = Artifact.objects.get(run=world.run, name="checkpoints/10/model_params/d/0a")
    target = f"/api/tunix/runs/{world.run.pk}/artifacts/{artifact.pk}/download"
    response = raw_request(daphne.port, target.encode(), {"Authorization": f"Token {token}"})
    assert (response.status, response.body) == (200, b"weights")


ROW_CASES = [case for case, target in CASES.items() if target.__qualname__.startswith("by_row")]


@pytest.mark.parametrize("case", ROW_CASES)
def test_poisoned_rows_are_refused_on_any_database(case: str, world: World, api: Any) -> None:
    """The same registry attacks through Django's test client, so SQLite runs check them too."""
    response = api.get(CASES[case](world))
    assert response.status_code == 404, case
    content = b"".join(response) if response.streaming else response.content
    assert all(secret not in content for secret in SECRETS)
    assert str(world.root).encode() not in content
