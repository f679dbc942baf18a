"""The operator console: the Django admin's run list, its actions and the log chunk list."""

from typing import Any

import pytest
from django.test import Client

from runs.admin import CappedCountPaginator, LogChunkAdmin
from runs.models import LogChunk, Run, RunStatus

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/runs/run/"


def act(client: Client, action: str, *runs: Run) -> Any:
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(r.pk) for r in runs]},
        follow=True,
    )


def test_the_run_list_shows_a_coloured_status_worker_attempt_and_links(
    admin_client: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING, worker_id="gpu-7:1234", attempt=2, max_attempts=3)
    body = admin_client.get(CHANGELIST).content.decode()
    assert '<span class="tunix-status tunix-status-running">running</span>' in body
    assert "/static/runs/admin.css" in body
    assert "gpu-7:1234" in body
    assert "2 of 3" in body
    assert f'<a href="/runs/{run.pk}/">run page</a>' in body
    assert f'<a href="/runs/{run.pk}/#logs">live log</a>' in body


def test_the_change_page_links_to_the_run_page_live_log_and_its_chunks(
    admin_client: Client, make_run: Any
) -> None:
    run = make_run()
    body = admin_client.get(f"{CHANGELIST}{run.pk}/change/").content.decode()
    assert f'href="/runs/{run.pk}/#logs"' in body
    assert f'href="/admin/runs/logchunk/?run__id__exact={run.pk}"' in body


def test_runs_can_be_searched_by_worker_and_filtered_by_creator(
    admin_client: Client, make_run: Any, bob: Any
) -> None:
    on_gpu = make_run(worker_id="gpu-host-9:1")
    by_bob = make_run(created_by=bob)
    body = admin_client.get(f"{CHANGELIST}?q=gpu-host-9").content.decode()
    assert str(on_gpu.pk) in body and str(by_bob.pk) not in body
    body = admin_client.get(f"{CHANGELIST}?created_by__id__exact={bob.pk}").content.decode()
    assert str(by_bob.pk) in body and str(on_gpu.pk) not in body


def test_requeue_copies_finished_runs_and_refuses_active_ones(
    admin_client: Client, make_run: Any, admin_user: Any
) -> None:
    failed = make_run(status=RunStatus.FAILED, name="flaky", config={"max_steps": 4})
    running = make_run(status=RunStatus.RUNNING)
    response = act(admin_client, "requeue_selected", failed, running)
    copy = Run.objects.get(requeued_from=failed)
    assert copy.status == RunStatus.PENDING
    assert copy.name == "flaky" and copy.config["max_steps"] == 4
    assert copy.created_by == admin_user
    body = response.content.decode()
    assert f'Requeued as new runs: <a href="/admin/runs/run/{copy.pk}/change/">' in body
    assert f"Not requeued: {running.pk} is running" in body
    assert not Run.objects.filter(requeued_from=running).exists()
    assert Run.objects.count() == 3


def test_requeue_reports_a_run_whose_recipe_is_gone(admin_client: Client, make_run: Any) -> None:
    retired = make_run(status=RunStatus.COMPLETED, recipe="retired")
    body = act(admin_client, "requeue_selected", retired).content.decode()
    assert f"Not requeued: {retired.pk}: recipe: unknown recipe" in body
    assert Run.objects.count() == 1


def test_cancel_stops_active_runs_and_reports_finished_ones(
    admin_client: Client, make_run: Any
) -> None:
    pending = make_run()
    running = make_run(status=RunStatus.RUNNING)
    done = make_run(status=RunStatus.COMPLETED)
    body = act(admin_client, "cancel_selected", pending, running, done).content.decode()
    assert Run.objects.get(pk=pending.pk).status == RunStatus.CANCELLED
    assert Run.objects.get(pk=running.pk).status == RunStatus.CANCEL_REQUESTED
    assert Run.objects.get(pk=done.pk).status == RunStatus.COMPLETED
    assert f"{done.pk} is completed" in body


def test_the_log_chunk_list_counts_no_further_than_its_cap(
    admin_client: Client, make_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CappedCountPaginator, "CAP", 5)
    monkeypatch.setattr(LogChunkAdmin, "list_per_page", 2)
    run = make_run()
    other = make_run()
    LogChunk.objects.bulk_create(
        [LogChunk(run=run, seq=i, stream="stdout", chunk=f"line {i}\n") for i in range(1, 9)]
        + [LogChunk(run=other, seq=1, stream="stderr", chunk="other\n")]
    )
    response = admin_client.get("/admin/runs/logchunk/")
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert changelist.result_count == 5
    assert changelist.paginator.num_pages == 3
    one_run = admin_client.get(f"/admin/runs/logchunk/?run__id__exact={other.pk}")
    assert one_run.context["cl"].result_count == 1
    assert "other" in one_run.content.decode()


def test_a_long_chunk_is_cut_short_in_the_list_but_whole_on_its_page(
    admin_client: Client, make_run: Any
) -> None:
    text = "x" * 299 + "END-OF-PREVIEW" + "y" * 10_000
    chunk = LogChunk.objects.create(run=make_run(), seq=1, stream="stdout", chunk=text)
    listing = admin_client.get("/admin/runs/logchunk/").content.decode()
    assert "x" * 299 + "E…" in listing
    assert "y" * 100 not in listing
    page = admin_client.get(f"/admin/runs/logchunk/{chunk.pk}/change/").content.decode()
    assert "y" * 10_000 in page
    assert 'name="_save"' not in page
