"""deploy/nginx.conf in front of a real daphne: downloads through nginx, Range included.

Debian's nginx package provides the binary (`scripts/system-deps` installs it).
"""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import Run
from tests.artifacts.conftest import PutFile, daphne_env
from tests.artifacts.servers import NGINX_BIN, Daphne, Nginx, raw_request

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(NGINX_BIN).exists(), reason="nginx is not installed"),
]

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def proxied(
    django_db_setup: Any, live_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    """nginx on a spare loopback port in front of daphne with TUNIX_DOWNLOAD_BACKEND=nginx."""
    env = daphne_env(live_root, TUNIX_DOWNLOAD_BACKEND="nginx")
    with Daphne(env=env, workdir=tmp_path_factory.mktemp("daphne")) as web:
        proxy = Nginx(
            upstream_port=web.port,
            artifact_root=live_root,
            workdir=tmp_path_factory.mktemp("nginx"),
        )
        with proxy:
            yield proxy


@pytest.fixture
def weights(make_run: Any, put_file: PutFile, on_live_root: Path) -> tuple[Artifact, bytes]:
    run: Run = make_run()
    data = os.urandom(12 * MIB + 345)
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/0a", data)
    put_file(run, "config.json", b"{}")
    artifacts_sync(run_id=run.pk)
    return Artifact.objects.get(run=run, name="checkpoints/10/model_params/d/0a"), data


def get(proxy: Nginx, artifact: Artifact, token: str, **headers: str) -> httpx.Response:
    url = f"{proxy.base_url}/api/tunix/runs/{artifact.run_id}/artifacts/{artifact.pk}/download"
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.get(url, headers={"Authorization": f"Token {token}", **headers}, timeout=60)


def test_nginx_sends_the_file_after_the_app_said_yes(
    proxied: Nginx, weights: tuple[Artifact, bytes], token: str
) -> None:
    artifact, data = weights
    response = get(proxied, artifact, token)
    assert response.status_code == 200
    assert response.content == data
    assert hashlib.sha256(response.content).hexdigest() == artifact.sha256
    assert response.headers["etag"] == f'"{artifact.sha256}"'
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-disposition"] == 'attachment; filename="0a"'
    assert response.headers["content-type"] == "application/octet-stream"
    assert "x-accel-redirect" not in response.headers
    assert response.headers["cache-control"] == "private, no-cache"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_nginx_serves_ranges_and_resumes_only_the_same_file(
    proxied: Nginx, weights: tuple[Artifact, bytes], token: str
) -> None:
    artifact, data = weights
    etag = f'"{artifact.sha256}"'
    first = get(proxied, artifact, token, Range="bytes=0-4999999")
    assert first.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-4999999/{len(data)}"

    rest = get(proxied, artifact, token, Range="bytes=5000000-", If_Range=etag)
    assert rest.status_code == 206
    assert first.content + rest.content == data

    stale = get(proxied, artifact, token, Range="bytes=5000000-", If_Range='"0ld"')
    assert stale.status_code == 200
    assert stale.content == data

    past_the_end = get(proxied, artifact, token, Range=f"bytes={len(data)}-")
    assert past_the_end.status_code == 416


def test_the_internal_location_is_not_reachable_from_outside(
    proxied: Nginx, weights: tuple[Artifact, bytes]
) -> None:
    artifact, data = weights
    target = f"/_tunix_artifacts/{artifact.run_id}/{artifact.name}".encode()
    response = raw_request(proxied.port, target)
    assert response.status == 404
    assert data[:64] not in response.body


def test_nothing_is_sent_without_a_token(proxied: Nginx, weights: tuple[Artifact, bytes]) -> None:
    artifact, data = weights
    target = f"/api/tunix/runs/{artifact.run_id}/artifacts/{artifact.pk}/download".encode()
    response = raw_request(proxied.port, target)
    assert response.status == 401
    assert data[:64] not in response.body


def test_a_symlink_swapped_in_after_registration_is_refused(
    proxied: Nginx, weights: tuple[Artifact, bytes], token: str, on_live_root: Path
) -> None:
    artifact, _ = weights
    secret = on_live_root.parent / f"secret-{artifact.run_id}"
    secret.write_bytes(b"S" * artifact.size_bytes)
    path = on_live_root / str(artifact.run_id) / artifact.name
    os.utime(secret, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    path.unlink()
    path.symlink_to(secret)

    response = get(proxied, artifact, token)

    assert response.status_code == 404
    assert b"SSSS" not in response.content


def test_the_step_zip_streams_through_nginx(
    proxied: Nginx, weights: tuple[Artifact, bytes], token: str
) -> None:
    import io
    import zipfile

    artifact, data = weights
    url = f"{proxied.base_url}/api/tunix/runs/{artifact.run_id}/checkpoints/10/download"
    response = httpx.get(url, headers={"Authorization": f"Token {token}"}, timeout=60)
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.read("10/model_params/d/0a") == data


def test_names_with_spaces_and_url_characters_arrive_intact(
    proxied: Nginx, make_run: Any, put_file: PutFile, token: str, on_live_root: Path
) -> None:
    run: Run = make_run()
    put_file(run, "tb/odd name?#%;ü.bin", b"odd bytes")
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run)
    response = get(proxied, artifact, token)
    assert response.status_code == 200
    assert response.content == b"odd bytes"


def test_live_logs_pass_through_nginx_as_they_are_written(
    proxied: Nginx, make_run: Any, token: str
) -> None:
    import json
    import time

    from runs.models import RunStatus
    from tests.sse.conftest import append

    run: Run = make_run(status=RunStatus.RUNNING)
    url = f"{proxied.base_url}/api/tunix/runs/{run.pk}/logs"
    headers = {"Authorization": f"Token {token}", "Accept": "text/event-stream"}
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        for i in range(1, 4):
            written = time.monotonic()
            append(run.pk, f"line {i}\n")
            # A buffering proxy would hold these few bytes until its buffer filled.
            chunks = (
                json.loads(line.removeprefix("data:")).get("chunk")
                for line in lines
                if line.startswith("data:")
            )
            assert next(c for c in chunks if c is not None) == f"line {i}\n"
            assert time.monotonic() - written < 2


def test_nginx_never_sends_a_file_changed_since_it_was_hashed(
    proxied: Nginx, weights: tuple[Artifact, bytes], token: str, on_live_root: Path
) -> None:
    artifact, data = weights
    path = on_live_root / str(artifact.run_id) / artifact.name
    before = path.stat()
    path.write_bytes(bytes(reversed(data)))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    response = get(proxied, artifact, token)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "artifact_changed"
    assert "x-accel-redirect" not in response.headers
