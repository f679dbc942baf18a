"""The artifact API through Django's test client. Streaming, memory and proxies are tested
against real daphne and nginx in the other modules."""

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import Run
from tests.artifacts.conftest import PutFile

pytestmark = [
    pytest.mark.django_db,
    # The WSGI test client reads the async body through async_to_sync and says so.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous"),
]

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset recognisable


def body(response: Any) -> bytes:
    return b"".join(response) if response.streaming else bytes(response.content)


@pytest.fixture
def run(make_run: Any) -> Run:
    made: Run = make_run()
    return made


@pytest.fixture
def weights(run: Run, put_file: PutFile) -> Artifact:
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/abc", DATA)
    put_file(run, "config.json", b"{}")
    artifacts_sync(run_id=run.pk)
    return Artifact.objects.get(run=run, name="checkpoints/10/model_params/d/abc")


def url(artifact: Artifact) -> str:
    return f"/api/tunix/runs/{artifact.run_id}/artifacts/{artifact.pk}/download"


def test_the_list_shows_ids_names_sizes_and_hashes_and_no_path(
    api: APIClient, run: Run, weights: Artifact, artifact_root: Path
) -> None:
    response = api.get(f"/api/tunix/runs/{run.pk}/artifacts")
    assert response.status_code == 200
    page = response.json()
    assert (page["count"], page["next"], page["previous"]) == (3, None, None)
    listing = page["results"]
    assert [a["name"] for a in listing] == [
        "checkpoints/10/commit_success.txt",
        "checkpoints/10/model_params/d/abc",
        "config.json",
    ]
    assert listing[1] == {
        "id": weights.pk,
        "name": "checkpoints/10/model_params/d/abc",
        "size_bytes": len(DATA),
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "created_at": listing[1]["created_at"],
        "step": 10,
    }
    assert listing[2]["step"] is None
    assert str(artifact_root) not in response.content.decode()


def test_the_list_comes_in_pages_that_together_hold_every_file_once(
    api: APIClient, make_run: Any, put_file: PutFile
) -> None:
    run = make_run()
    for n in range(230):
        put_file(run, f"shards/{n:04d}.bin", b"x")
    artifacts_sync(run_id=run.pk)
    names: list[str] = []
    url: str | None = f"/api/tunix/runs/{run.pk}/artifacts?page_size=100"
    pages = 0
    while url:
        page = api.get(url).json()
        assert page["count"] == 230 and len(page["results"]) <= 100
        names += [a["name"] for a in page["results"]]
        url, pages = page["next"], pages + 1
    assert pages == 3
    assert names == [f"shards/{n:04d}.bin" for n in range(230)]
    default = api.get(f"/api/tunix/runs/{run.pk}/artifacts").json()
    assert len(default["results"]) == 50
    assert api.get(f"/api/tunix/runs/{run.pk}/artifacts?page=99").status_code == 404
    assert (
        len(api.get(f"/api/tunix/runs/{run.pk}/artifacts?page_size=5000").json()["results"]) == 100
    )


def test_listing_an_unknown_or_malformed_run_is_404(api: APIClient) -> None:
    for run_id in ("5f0b8a4e-0000-4000-8000-000000000000", "not-a-uuid"):
        response = api.get(f"/api/tunix/runs/{run_id}/artifacts")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_anonymous_clients_get_nothing(anon: APIClient, weights: Artifact) -> None:
    assert anon.get(f"/api/tunix/runs/{weights.run_id}/artifacts").status_code == 401
    response = anon.get(url(weights))
    assert response.status_code == 401
    assert DATA[:64] not in body(response)


def test_checkpoints_list_committed_steps_with_size_and_file_count(
    api: APIClient, run: Run, put_file: PutFile
) -> None:
    for step in (20, 10):
        put_file(run, f"checkpoints/{step}/_CHECKPOINT_METADATA", b"{}")
        put_file(run, f"checkpoints/{step}/model_params/d/x", b"x" * step)
    put_file(run, "checkpoints/30.orbax-checkpoint-tmp/_CHECKPOINT_METADATA", b"{}")
    artifacts_sync(run_id=run.pk)

    response = api.get(f"/api/tunix/runs/{run.pk}/checkpoints")

    assert response.status_code == 200
    steps = [(c["step"], c["size_bytes"], c["file_count"]) for c in response.json()]
    assert steps == [(10, 12, 2), (20, 22, 2)]
    assert all(c["created_at"] for c in response.json())


def test_a_download_is_an_attachment_with_length_etag_and_ranges(
    api: APIClient, weights: Artifact
) -> None:
    response = api.get(url(weights))
    assert response.status_code == 200
    assert body(response) == DATA
    assert response["Content-Length"] == str(len(DATA))
    assert response["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="abc"'
    assert "Last-Modified" in response


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=100-199", 100, 199),
        ("bytes=10000-", 10000, len(DATA) - 1),
        ("bytes=-40", len(DATA) - 40, len(DATA) - 1),
        ("bytes=10200-99999", 10200, len(DATA) - 1),
        ("bytes=0-0", 0, 0),
        ("BYTES = 5 - 9", 5, 9),
    ],
)
def test_a_range_gets_206_with_exactly_those_bytes(
    api: APIClient, weights: Artifact, header: str, start: int, end: int
) -> None:
    response = api.get(url(weights), HTTP_RANGE=header)
    assert response.status_code == 206
    assert body(response) == DATA[start : end + 1]
    assert response["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response["Content-Length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
def test_an_unsatisfiable_range_is_416(api: APIClient, weights: Artifact, header: str) -> None:
    response = api.get(url(weights), HTTP_RANGE=header)
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(DATA)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize(
    "header", ["bytes=abc", "items=0-5", "bytes=9-5", "bytes=0-5,10-20", "bytes=-", "0-5"]
)
def test_a_range_it_does_not_understand_gets_the_whole_file(
    api: APIClient, weights: Artifact, header: str
) -> None:
    response = api.get(url(weights), HTTP_RANGE=header)
    assert response.status_code == 200
    assert body(response) == DATA


def test_if_range_resumes_only_the_same_file(api: APIClient, weights: Artifact) -> None:
    etag = f'"{weights.sha256}"'
    same = api.get(url(weights), HTTP_RANGE="bytes=5000-", HTTP_IF_RANGE=etag)
    assert same.status_code == 206
    assert body(same) == DATA[5000:]

    stale = api.get(url(weights), HTTP_RANGE="bytes=5000-", HTTP_IF_RANGE='"0000"')
    assert stale.status_code == 200
    assert body(stale) == DATA

    weak = api.get(url(weights), HTTP_RANGE="bytes=5000-", HTTP_IF_RANGE=f"W/{etag}")
    assert weak.status_code == 200


def test_if_range_with_the_last_modified_date_resumes(api: APIClient, weights: Artifact) -> None:
    last_modified = api.get(url(weights))["Last-Modified"]
    response = api.get(url(weights), HTTP_RANGE="bytes=10-", HTTP_IF_RANGE=last_modified)
    assert response.status_code == 206
    stale = api.get(
        url(weights), HTTP_RANGE="bytes=10-", HTTP_IF_RANGE="Mon, 01 Jan 2001 00:00:00 GMT"
    )
    assert stale.status_code == 200


def test_a_matching_if_none_match_is_304(api: APIClient, weights: Artifact) -> None:
    response = api.get(url(weights), HTTP_IF_NONE_MATCH=f'"{weights.sha256}"')
    assert response.status_code == 304
    assert body(response) == b""
    assert api.get(url(weights), HTTP_IF_NONE_MATCH='"other"').status_code == 200


def test_if_modified_since_the_files_date_is_304(api: APIClient, weights: Artifact) -> None:
    last_modified = api.get(url(weights))["Last-Modified"]
    unchanged = api.get(url(weights), HTTP_IF_MODIFIED_SINCE=last_modified)
    assert unchanged.status_code == 304
    assert unchanged["ETag"] == f'"{weights.sha256}"'
    older = api.get(url(weights), HTTP_IF_MODIFIED_SINCE="Mon, 01 Jan 1990 00:00:00 GMT")
    assert older.status_code == 200


def test_if_match_and_if_unmodified_since_refuse_another_version_with_412(
    api: APIClient, weights: Artifact
) -> None:
    assert api.get(url(weights), HTTP_IF_MATCH=f'"{weights.sha256}"').status_code == 200
    for response in (
        api.get(url(weights), HTTP_IF_MATCH='"an-older-sha256"'),
        api.get(url(weights), HTTP_IF_UNMODIFIED_SINCE="Mon, 01 Jan 1990 00:00:00 GMT"),
    ):
        assert response.status_code == 412
        assert response.json()["error"]["code"] == "precondition_failed"


def test_head_sends_the_headers_only(api: APIClient, weights: Artifact) -> None:
    response = api.head(url(weights))
    assert response.status_code == 200
    assert response["Content-Length"] == str(len(DATA))
    assert body(response) == b""


def test_a_client_that_accepts_only_octet_streams_still_gets_the_file(
    api: APIClient, weights: Artifact
) -> None:
    response = api.get(url(weights), HTTP_ACCEPT="application/octet-stream")
    assert response.status_code == 200
    assert body(response) == DATA


def test_a_file_gone_since_it_was_registered_is_404(
    api: APIClient, weights: Artifact, artifact_root: Path
) -> None:
    (artifact_root / str(weights.run_id) / weights.name).unlink()
    response = api.get(url(weights))
    assert response.status_code == 404
    assert str(artifact_root) not in body(response).decode()


def test_a_file_changed_since_it_was_registered_is_409(
    api: APIClient, weights: Artifact, artifact_root: Path
) -> None:
    (artifact_root / str(weights.run_id) / weights.name).write_bytes(b"rewritten")
    response = api.get(url(weights))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "artifact_changed"
    assert b"rewritten" not in body(response)


def test_another_runs_artifact_id_is_404(api: APIClient, weights: Artifact, make_run: Any) -> None:
    other = make_run()
    response = api.get(f"/api/tunix/runs/{other.pk}/artifacts/{weights.pk}/download")
    assert response.status_code == 404
    assert DATA[:64] not in body(response)


def test_with_the_nginx_backend_the_app_hands_over_a_uri_not_a_path(
    api: APIClient, weights: Artifact, settings: Any, artifact_root: Path
) -> None:
    settings.TUNIX_DOWNLOAD_BACKEND = "nginx"
    response = api.get(url(weights), HTTP_RANGE="bytes=0-9")
    assert response.status_code == 200
    assert body(response) == b""
    assert response["X-Accel-Redirect"] == (
        f"/_tunix_artifacts/{weights.run_id}/checkpoints/10/model_params/d/abc"
    )
    assert response["ETag"] == f'"{weights.sha256}"'
    assert all(str(artifact_root) not in value for _, value in response.items())


def test_the_nginx_uri_escapes_names(
    api: APIClient, run: Run, put_file: PutFile, settings: Any
) -> None:
    put_file(run, "odd name?#%.txt", b"x")
    artifacts_sync(run_id=run.pk)
    settings.TUNIX_DOWNLOAD_BACKEND = "nginx"
    artifact = Artifact.objects.get(run=run)
    response = api.get(url(artifact))
    assert response["X-Accel-Redirect"] == f"/_tunix_artifacts/{run.pk}/odd%20name%3F%23%25.txt"


def test_with_the_sendfile_backend_the_proxy_gets_the_checked_path(
    api: APIClient, weights: Artifact, settings: Any, artifact_root: Path
) -> None:
    settings.TUNIX_DOWNLOAD_BACKEND = "sendfile"
    response = api.get(url(weights))
    assert response.status_code == 200
    assert body(response) == b""
    assert response["X-Sendfile"] == str(artifact_root / str(weights.run_id) / weights.name)


def test_proxy_backends_refuse_what_the_app_refuses(
    api: APIClient, weights: Artifact, settings: Any, artifact_root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    path = artifact_root / str(weights.run_id) / weights.name
    path.unlink()
    path.symlink_to(secret)
    for backend in ("nginx", "sendfile"):
        settings.TUNIX_DOWNLOAD_BACKEND = backend
        response = api.get(url(weights))
        assert response.status_code == 404
        assert "X-Accel-Redirect" not in response
        assert "X-Sendfile" not in response


def test_a_step_downloads_as_a_zip_of_its_directory(
    api: APIClient, run: Run, put_file: PutFile
) -> None:
    files = {
        "_CHECKPOINT_METADATA": b'{"step": 20}',
        "commit_success.txt": b"ok",
        "model_params/_METADATA": b"{}",
        "model_params/d/0a": os.urandom(70_000),
        "model_params/d/0b": b"",
    }
    for name, data in files.items():
        put_file(run, f"checkpoints/20/{name}", data)
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    artifacts_sync(run_id=run.pk)

    response = api.get(f"/api/tunix/runs/{run.pk}/checkpoints/20/download")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}-step-20.zip"'
    with zipfile.ZipFile(io.BytesIO(body(response))) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == {
            f"20/{name}": data for name, data in files.items()
        }


@pytest.mark.parametrize("step", ["30", "abc", "-10", "1e1", "10.0", "%2e%2e", "٢٠"])
def test_an_unknown_or_malformed_step_is_404(
    api: APIClient, run: Run, put_file: PutFile, step: str
) -> None:
    put_file(run, "checkpoints/20/commit_success.txt", b"ok")
    artifacts_sync(run_id=run.pk)
    response = api.get(f"/api/tunix/runs/{run.pk}/checkpoints/{step}/download")
    assert response.status_code == 404


def test_another_runs_step_is_404(
    api: APIClient, run: Run, put_file: PutFile, make_run: Any
) -> None:
    put_file(run, "checkpoints/20/commit_success.txt", b"ok")
    artifacts_sync(run_id=run.pk)
    other = make_run()
    assert api.get(f"/api/tunix/runs/{other.pk}/checkpoints/20/download").status_code == 404


def test_a_step_with_a_file_gone_is_404(api: APIClient, run: Run, put_file: PutFile) -> None:
    put_file(run, "checkpoints/20/commit_success.txt", b"ok")
    gone = put_file(run, "checkpoints/20/model_params/d/0a", b"data")
    artifacts_sync(run_id=run.pk)
    gone.unlink()
    assert api.get(f"/api/tunix/runs/{run.pk}/checkpoints/20/download").status_code == 404
