from typing import Any

import pytest
from django.test import Client

from runs.models import RunStatus

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


def test_worker_owned_fields_are_read_only(admin_client: Client, make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING, worker_id="w1")
    response = admin_client.get(f"/admin/runs/run/{run.pk}/change/")
    assert response.status_code == 200
    form = response.context["adminform"].form
    for field in ("status", "exit_code", "worker_id", "heartbeat_at", "stdout_tail", "attempt"):
        assert field not in form.fields
    assert "name" in form.fields and "priority" in form.fields


def test_log_chunks_are_listed_read_only(admin_client: Client, make_run: Any) -> None:
    from runs.models import LogChunk

    run = make_run()
    LogChunk.objects.create(run=run, seq=1, stream="stdout", chunk="hello\n")
    assert admin_client.get("/admin/runs/logchunk/").status_code == 200
    assert admin_client.get("/admin/runs/logchunk/add/").status_code == 403
