"""Downloads over real HTTP from daphne serving tunixops.asgi, against the test database."""

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import Run
from tests.artifacts.conftest import PutFile
from tests.artifacts.servers import Daphne, open_stream, raw_request, read_slowly

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
UNWIRED = (
    "; is the Django route in tunixops/asgi.py wrapped in tunixops.api.flow.with_backpressure?"
)


@pytest.fixture
def run(make_run: Any, on_live_root: Path) -> Run:
    made: Run = make_run()
    return made


def download_url(daphne: Daphne, artifact: Artifact) -> str:
    return f"{daphne.base_url}/api/tunix/runs/{artifact.run_id}/artifacts/{artifact.pk}/download"


def fetch(url: str, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(
        url, headers={"Authorization": f"Token {token}", **(headers or {})}, timeout=60
    )


def test_every_download_has_the_registrys_sha256(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    put_file(run, "config.json", b'{"max_steps": 5}')
    put_file(run, "dataset.jsonl", b"")
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/0a", os.urandom(9 * MIB + 3))
    put_file(run, "tb/events.out.tfevents.1", os.urandom(70_000))
    artifacts_sync(run_id=run.pk)

    artifacts = list(Artifact.objects.filter(run=run))
    assert len(artifacts) == 5
    for artifact in artifacts:
        response = fetch(download_url(daphne, artifact), token)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == artifact.sha256
        assert response.headers["etag"] == f'"{artifact.sha256}"'
        assert response.headers["content-length"] == str(artifact.size_bytes)


def test_a_range_resumed_download_is_byte_identical(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    data = os.urandom(24 * MIB + 11)
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/0a", data)
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run, name="checkpoints/10/model_params/d/0a")
    target = download_url(daphne, artifact).removeprefix(daphne.base_url)

    # The first attempt breaks off partway through, as a dropped connection would.
    sock, head = open_stream(daphne.port, target, {"Authorization": f"Token {token}"})
    with sock:
        assert head.status == 200
        partial = bytearray(head.body)
        while len(partial) < 7 * MIB:
            partial += sock.recv(MIB)
    etag = head.headers["etag"]

    resumed = fetch(
        download_url(daphne, artifact),
        token,
        {"Range": f"bytes={len(partial)}-", "If-Range": etag},
    )

    assert resumed.status_code == 206
    assert resumed.headers["content-range"] == f"bytes {len(partial)}-{len(data) - 1}/{len(data)}"
    whole = bytes(partial) + resumed.content
    assert whole == data
    assert hashlib.sha256(whole).hexdigest() == artifact.sha256


def test_an_unsatisfiable_range_is_416_over_http(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    put_file(run, "config.json", b"{}")
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run)
    response = fetch(download_url(daphne, artifact), token, {"Range": "bytes=2-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */2"


def test_a_slow_client_keeps_the_web_process_memory_bounded(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    put_file(run, "config.json", b"{}")
    # Sparse: 256 MiB of zeros that cost no disk, read back as fast as memory.
    put_file(run, "checkpoints/10/model_params/d/big", size=256 * MIB)
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    artifacts_sync(run_id=run.pk)
    big = Artifact.objects.get(run=run, name="checkpoints/10/model_params/d/big")
    small = Artifact.objects.get(run=run, name="config.json")
    auth = {"Authorization": f"Token {token}"}
    # Warm up: the first request imports and builds what every later one reuses.
    assert fetch(download_url(daphne, small), token).status_code == 200
    daphne.reset_peak_rss()
    before = daphne.rss_kib()

    target = download_url(daphne, big).removeprefix(daphne.base_url)
    sock, head = open_stream(daphne.port, target, auth)
    with sock:
        assert head.status == 200
        got = read_slowly(sock, rate=4_000_000, seconds=4.0)
        growth_mib = (daphne.peak_rss_kib() - before) / 1024

    assert got > 5_000_000, "the client read too little for the check to mean anything"
    # Without backpressure daphne would hold most of the 256 MiB by now.
    assert growth_mib < 24, f"daphne grew by {growth_mib:.0f} MiB for one slow client" + UNWIRED


def test_a_client_that_leaves_midway_leaves_no_open_file_behind(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    put_file(run, "big.bin", size=64 * MIB)
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run)
    fd_dir = Path(f"/proc/{daphne.pid}/fd")

    def open_files() -> int:
        return sum(1 for fd in fd_dir.iterdir() if "big.bin" in _readlink(fd))

    target = download_url(daphne, artifact).removeprefix(daphne.base_url)
    sock, _ = open_stream(daphne.port, target, {"Authorization": f"Token {token}"})
    read_slowly(sock, rate=20 * MIB, seconds=0.5)
    assert open_files() == 1, "the file was read to the end already" + UNWIRED
    sock.close()
    deadline = time.monotonic() + 10
    while open_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_files() == 0


def _readlink(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""


def test_downloads_and_syncs_run_side_by_side(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    data = os.urandom(16 * MIB)
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/0a", data)
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run, name="checkpoints/10/model_params/d/0a")
    stop = threading.Event()
    errors: list[BaseException] = []

    def train_and_sync() -> None:
        from django.db import connection

        step = 20
        try:
            while not stop.is_set():
                put_file(run, f"checkpoints/{step}/commit_success.txt", b"ok")
                put_file(run, f"checkpoints/{step}/model_params/d/0a", os.urandom(MIB))
                artifacts_sync(run_id=run.pk)
                step += 10
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    syncer = threading.Thread(target=train_and_sync)
    syncer.start()
    try:
        for _ in range(3):
            response = fetch(download_url(daphne, artifact), token)
            assert response.status_code == 200
            assert hashlib.sha256(response.content).hexdigest() == artifact.sha256
    finally:
        stop.set()
        syncer.join(30)
    assert errors == []
    assert Artifact.objects.filter(run=run).values("step").distinct().count() > 1


def test_the_step_zip_streams_with_bounded_memory(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    for item in ("a", "b", "c"):
        put_file(run, f"checkpoints/10/model_params/d/{item}", size=96 * MIB)
    artifacts_sync(run_id=run.pk)
    assert raw_request(daphne.port, b"/healthz").status == 200
    daphne.reset_peak_rss()
    before = daphne.rss_kib()

    target = f"/api/tunix/runs/{run.pk}/checkpoints/10/download"
    sock, head = open_stream(daphne.port, target, {"Authorization": f"Token {token}"})
    with sock:
        assert head.status == 200
        assert head.headers["content-type"] == "application/zip"
        got = read_slowly(sock, rate=4_000_000, seconds=3.0)
        growth_mib = (daphne.peak_rss_kib() - before) / 1024

    assert got > 4_000_000
    assert growth_mib < 24, (
        f"daphne grew by {growth_mib:.0f} MiB zipping for a slow client" + UNWIRED
    )


def test_a_file_rewritten_with_the_same_size_and_old_mtime_is_refused_until_rehashed(
    daphne: Daphne, run: Run, put_file: PutFile, token: str
) -> None:
    path = put_file(run, "checkpoints/weights.bin", b"A" * 4096)
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run)
    old_etag = f'"{artifact.sha256}"'
    first = fetch(download_url(daphne, artifact), token)
    assert first.status_code == 200 and first.headers["etag"] == old_etag

    # Other bytes, the same size, the old modification time set back: only inode/ctime differ.
    before = path.stat()
    path.write_bytes(b"B" * 4096)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    stale = fetch(download_url(daphne, artifact), token)
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "artifact_changed"
    assert b"B" * 64 not in stale.content and old_etag not in stale.headers.get("etag", "")
    # A cached copy is not confirmed either: no 304 for the old tag.
    assert (
        fetch(download_url(daphne, artifact), token, {"If-None-Match": old_etag}).status_code == 409
    )

    artifacts_sync(run_id=run.pk)
    artifact.refresh_from_db()
    fresh = fetch(download_url(daphne, artifact), token, {"If-None-Match": old_etag})
    assert fresh.status_code == 200
    assert fresh.content == b"B" * 4096
    assert fresh.headers["etag"] == f'"{hashlib.sha256(b"B" * 4096).hexdigest()}"' != old_etag


def test_a_hard_link_is_never_listed_nor_served(
    daphne: Daphne, run: Run, put_file: PutFile, token: str, live_root: Path
) -> None:
    # A file the child could not read by name but the web process can (here: another run's).
    other = live_root / "other-run" / "secret.bin"
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(b"not yours " * 100)
    put_file(run, "plain.txt", b"mine")
    os.link(other, live_root / str(run.pk) / "stolen.bin")
    artifacts_sync(run_id=run.pk)
    listing = httpx.get(
        f"{daphne.base_url}/api/tunix/runs/{run.pk}/artifacts",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    ).json()
    assert [a["name"] for a in listing["results"]] == ["plain.txt"]

    # Registered as a plain file, then swapped for a hard link under the same name: not served.
    path = put_file(run, "weights.bin", b"W" * 1000)
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run, name="weights.bin")
    path.unlink()
    os.link(other, path)
    response = fetch(download_url(daphne, artifact), token)
    assert response.status_code == 404
    assert b"not yours" not in response.content
