import re
from typing import Any

import pytest
from django.db.models import ProtectedError
from django.test import Client
from django.utils import timezone

from runs.models import LogChunk, Run, RunMetric, RunStatus, WorkerHeartbeat
from traces.models import Dataset

pytestmark = pytest.mark.django_db


def test_the_run_list_shows_runs_with_their_status_and_duration(
    admin_client: Client, make_run: Any
) -> None:
    make_run(name="visible-run", status=RunStatus.RUNNING, dataset_key="ds-7")
    response = admin_client.get("/admin/runs/run/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "visible-run" in body and "ds-7" in body and "running" in body


def test_runs_can_be_searched_by_id_and_name(admin_client: Client, make_run: Any) -> None:
    wanted = make_run(name="needle")
    other = make_run(name="hay")
    by_name = admin_client.get("/admin/runs/run/?q=needle").content.decode()
    assert str(wanted.pk) in by_name and str(other.pk) not in by_name
    by_id = admin_client.get(f"/admin/runs/run/?q={wanted.pk}").content.decode()
    assert str(wanted.pk) in by_id and str(other.pk) not in by_id


def test_runs_can_be_filtered_by_status_and_recipe(admin_client: Client, make_run: Any) -> None:
    failed = make_run(status=RunStatus.FAILED, recipe="peft")
    pending = make_run()
    body = admin_client.get("/admin/runs/run/?status__exact=failed").content.decode()
    assert str(failed.pk) in body and str(pending.pk) not in body
    body = admin_client.get("/admin/runs/run/?recipe__exact=peft").content.decode()
    assert str(failed.pk) in body and str(pending.pk) not in body


def test_a_run_cannot_be_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get("/admin/runs/run/add/").status_code == 403
    response = admin_client.post(
        "/admin/runs/run/add/",
        {"recipe": "no-such-recipe", "config": '{"max_steps": -5}', "timeout_seconds": 60},
    )
    assert response.status_code == 403
    assert not Run.objects.exists()


def test_every_run_field_is_read_only_and_a_post_changes_nothing(
    admin_client: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.PENDING, name="before", config={"max_steps": 5})
    page = admin_client.get(f"/admin/runs/run/{run.pk}/change/")
    assert page.status_code == 200
    assert not page.context["adminform"].form.fields
    assert "before" in page.content.decode()
    response = admin_client.post(
        f"/admin/runs/run/{run.pk}/change/",
        {"name": "after", "recipe": "other", "config": '{"max_steps": -5}', "max_attempts": 9},
    )
    assert response.status_code == 403
    run.refresh_from_db()
    assert (run.name, run.recipe, run.config, run.max_attempts) == (
        "before",
        "tiny_sft",
        {"max_steps": 5},
        1,
    )


def test_a_run_cannot_be_deleted_from_the_admin(admin_client: Client, make_run: Any) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    assert (
        admin_client.post(f"/admin/runs/run/{run.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    bulk = admin_client.post(
        "/admin/runs/run/",
        {"action": "delete_selected", "_selected_action": [str(run.pk)], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert Run.objects.filter(pk=run.pk).exists()


@pytest.mark.parametrize("model", ["logchunk", "runmetric", "workerheartbeat"])
def test_worker_owned_rows_are_listed_but_never_added_changed_or_deleted(
    admin_client: Client, make_run: Any, model: str
) -> None:
    run = make_run(status=RunStatus.RUNNING, worker_id="w1")
    rows = {
        "logchunk": lambda: LogChunk.objects.create(run=run, seq=1, stream="stdout", chunk="hi\n"),
        "runmetric": lambda: RunMetric.objects.create(run=run, step=1, values={"loss": 1.5}),
        "workerheartbeat": lambda: WorkerHeartbeat.objects.create(
            worker_id="w1", hostname="h", pid=1, started_at=timezone.now(), last_seen=timezone.now()
        ),
    }
    row = rows[model]()
    listing = admin_client.get(f"/admin/runs/{model}/")
    assert listing.status_code == 200
    assert f"/admin/runs/{model}/{row.pk}/change/" in listing.content.decode()
    assert admin_client.get(f"/admin/runs/{model}/add/").status_code == 403
    assert admin_client.get(f"/admin/runs/{model}/{row.pk}/change/").status_code == 200
    assert admin_client.post(f"/admin/runs/{model}/{row.pk}/change/", {}).status_code == 403
    assert (
        admin_client.post(f"/admin/runs/{model}/{row.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert type(row)._default_manager.filter(pk=row.pk).exists()


def test_a_dataset_a_run_names_cannot_be_deleted(admin_client: Client, make_run: Any) -> None:
    make_run(dataset_key="support-v1")
    unused = Dataset.objects.create(
        key="spare-v1", name="spare", version="v1", selection="latest", limit=1, trace_count=0
    )
    used = Dataset.objects.get(key="support-v1")
    refused = admin_client.post(f"/admin/traces/dataset/{used.pk}/delete/", {"post": "yes"})
    assert "Cannot delete dataset" in refused.content.decode()
    assert Dataset.objects.filter(key="support-v1").exists()
    with pytest.raises(ProtectedError):
        Dataset.objects.get(key="support-v1").delete()
    admin_client.post(f"/admin/traces/dataset/{unused.pk}/delete/", {"post": "yes"})
    assert not Dataset.objects.filter(key="spare-v1").exists()


def test_the_workers_page_lists_pools_with_live_workers_and_queue_depth(
    admin_client: Client, make_run: Any
) -> None:
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        worker_id="tpu-1", hostname="h", pid=1, started_at=now, last_seen=now, pools=["tpu"]
    )
    WorkerHeartbeat.objects.create(
        worker_id="old-1",
        hostname="h",
        pid=2,
        started_at=now,
        last_seen=now,
        pools=["tpu"],
        draining=True,
    )
    make_run(pool="tpu")
    make_run(pool="tpu")
    make_run(pool="orphan")
    body = admin_client.get("/admin/runs/workerheartbeat/").content.decode()
    pools = body.split('data-testid="pools"')[1].split("</table>")[0]
    assert re.search(r"<code>tpu</code></th>\s*<td>tpu-1</td>\s*<td>old-1</td>\s*<td>2</td>", pools)
    assert re.search(r"<code>orphan</code></th>\s*<td>none: its runs wait</td>", pools)
