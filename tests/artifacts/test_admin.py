from typing import Any

import pytest
from django.test import Client

from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from tests.artifacts.conftest import PutFile

pytestmark = pytest.mark.django_db


@pytest.fixture
def synced(make_run: Any, put_file: PutFile) -> Any:
    run = make_run()
    put_file(run, "config.json", b"{}")
    put_file(run, "checkpoints/10/commit_success.txt", b"ok")
    put_file(run, "checkpoints/10/model_params/d/0a", b"x" * 2048)
    artifacts_sync(run_id=run.pk)
    return run


def test_the_run_page_lists_its_artifacts_read_only_with_download_links(
    admin_client: Client, synced: Any
) -> None:
    response = admin_client.get(f"/admin/runs/run/{synced.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    weights = Artifact.objects.get(run=synced, name="checkpoints/10/model_params/d/0a")
    assert "checkpoints/10/model_params/d/0a" in page
    assert "2.0\xa0KB" in page
    assert f"/api/tunix/runs/{synced.pk}/artifacts/{weights.pk}/download" in page
    assert 'name="artifacts-0-name"' not in page  # shown, not editable
    assert "artifacts-TOTAL_FORMS" in page


def test_the_artifact_list_filters_checkpoint_files(admin_client: Client, synced: Any) -> None:
    everything = admin_client.get("/admin/artifacts/artifact/")
    assert everything.status_code == 200
    assert "config.json" in everything.content.decode()

    steps_only = admin_client.get("/admin/artifacts/artifact/?step__isempty=0")
    page = steps_only.content.decode()
    assert "checkpoints/10/commit_success.txt" in page
    assert "config.json" not in page


def test_artifacts_cannot_be_added_or_edited_by_hand(admin_client: Client, synced: Any) -> None:
    artifact = Artifact.objects.filter(run=synced).first()
    assert artifact is not None
    assert admin_client.get("/admin/artifacts/artifact/add/").status_code == 403
    response = admin_client.post(
        f"/admin/artifacts/artifact/{artifact.pk}/change/", {"name": "../../etc/passwd"}
    )
    assert response.status_code == 403
    artifact.refresh_from_db()
    assert artifact.name != "../../etc/passwd"
