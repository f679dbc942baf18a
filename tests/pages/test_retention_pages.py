"""Pinning, disk usage and pruning as the pages and the admin show them."""

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from artifacts.services import artifacts_sync
from runs.models import LogChunk, Run, RunStatus
from runs.services import run_dir
from tests.metrics.conftest import parse, value

pytestmark = pytest.mark.django_db


def signed_in(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def with_files(run: Run, size: int) -> Run:
    directory = run_dir(run.pk)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights.bin").write_bytes(b"w" * size)
    artifacts_sync(run_id=run.pk)
    run.refresh_from_db()
    return run


def test_the_owner_pins_and_unpins_from_the_run_page(
    client: Client, alice: Any, make_run: Any
) -> None:
    run = make_run(RunStatus.COMPLETED)
    page = signed_in(client, alice).get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="pin-run"' in page and 'data-testid="pinned"' not in page
    response = client.post(f"/runs/{run.pk}/pin/", {"pinned": "1"}, follow=True)
    html = response.content.decode()
    assert "Pinned: retention keeps" in html
    assert 'data-testid="unpin-run"' in html and 'data-testid="pinned"' in html
    assert "pinned by alice" in html
    run.refresh_from_db()
    assert run.pinned and run.pinned_by == alice
    client.post(f"/runs/{run.pk}/pin/", {"pinned": "0"})
    run.refresh_from_db()
    assert not run.pinned and run.pinned_by is None


def test_another_user_sees_no_pin_button_and_cannot_pin(
    client: Client, bob: Any, make_run: Any
) -> None:
    run = make_run(RunStatus.COMPLETED)
    page = signed_in(client, bob).get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="pin-run"' not in page
    html = client.post(f"/runs/{run.pk}/pin/", {"pinned": "1"}, follow=True).content.decode()
    assert "Only its owner or an operator" in html
    run.refresh_from_db()
    assert not run.pinned


def test_an_operator_pins_anyones_run_from_its_page(
    client: Client, operator: Any, make_run: Any
) -> None:
    run = make_run(RunStatus.COMPLETED)
    assert (
        'data-testid="pin-run"'
        in signed_in(client, operator).get(f"/runs/{run.pk}/").content.decode()
    )
    client.post(f"/runs/{run.pk}/pin/", {"pinned": "1"})
    run.refresh_from_db()
    assert run.pinned and run.pinned_by == operator


def test_the_run_page_says_when_the_log_and_checkpoints_were_pruned(
    client: Client, alice: Any, make_run: Any
) -> None:
    run = make_run(
        RunStatus.COMPLETED,
        finished_at=timezone.now() - timedelta(days=9),
        stdout_tail="the last stdout line\n",
        stderr_tail="a warning at the end\n",
    )
    LogChunk.objects.create(run=run, seq=1, stream="stdout", chunk="first line\n")
    before = signed_in(client, alice).get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="log-pruned"' not in before
    assert "not pinned: pruned once old enough" in before
    call_command("tunix_prune", "--older-than", "7", "--logs", "--artifacts=all", stdout=StringIO())
    html = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'data-testid="log-pruned"' in html and "the last stdout line" in html
    assert "a warning at the end" in html
    assert 'data-testid="log-pruned-fact"' in html
    artifacts = client.get(f"/runs/{run.pk}/panels/artifacts/").content.decode()
    assert 'data-testid="artifacts-pruned"' not in artifacts  # it had no files to prune


def test_the_artifacts_panel_says_the_last_checkpoint_was_kept(
    client: Client, alice: Any, make_run: Any
) -> None:
    run = make_run(RunStatus.COMPLETED, finished_at=timezone.now() - timedelta(days=9))
    for step in (5, 10):
        step_dir = run_dir(run.pk) / str(step)
        step_dir.mkdir(parents=True)
        (step_dir / "commit_success.txt").write_text("ok")
    artifacts_sync(run_id=run.pk)
    call_command("tunix_prune", "--older-than", "7", stdout=StringIO())
    html = signed_in(client, alice).get(f"/runs/{run.pk}/panels/artifacts/").content.decode()
    assert 'data-testid="artifacts-pruned"' in html and "the last committed step is kept" in html
    assert 'data-step="10"' in html and 'data-step="5"' not in html


def test_the_run_list_shows_disk_usage_and_sorts_by_it(
    client: Client, alice: Any, make_run: Any
) -> None:
    with_files(make_run(RunStatus.COMPLETED, name="mid"), 2048)
    with_files(make_run(RunStatus.COMPLETED, name="top"), 9000)
    make_run(RunStatus.PENDING, name="empty", pinned=True)
    signed_in(client, alice)
    html = client.get("/runs/?sort=-artifact_bytes").content.decode()
    assert html.index(">top<") < html.index(">mid<") < html.index(">empty<")
    assert 'aria-sort="descending"' in html and "8.8\xa0KB" in html
    # The header link turns the order around and keeps the filters.
    filtered = client.get("/runs/?status=completed&sort=-artifact_bytes").content.decode()
    assert 'href="?status=completed&amp;sort=artifact_bytes" data-testid="sort-disk"' in filtered
    assert ">empty<" not in filtered
    ascending = client.get("/runs/?sort=artifact_bytes").content.decode()
    assert ascending.index(">empty<") < ascending.index(">mid<") < ascending.index(">top<")
    assert "pinned" in ascending


def test_the_storage_page_is_for_operators(
    client: Client, alice: Any, operator: Any, make_run: Any
) -> None:
    with_files(make_run(RunStatus.COMPLETED, created_by=alice), 3000)
    refused = signed_in(client, alice).get("/storage/")
    assert refused.status_code == 403
    assert "Only operators" in refused.content.decode()
    assert 'href="/storage/"' not in client.get("/runs/").content.decode()
    page = signed_in(Client(), operator)
    html = page.get("/storage/").content.decode()
    assert 'data-testid="total-bytes" data-bytes="3000"' in html
    assert '<tr data-user="alice">' in html
    # PostgreSQL says how big the log table is on disk; SQLite has no such figure.
    assert ('data-testid="table-sizes"' in html) == (connection.vendor == "postgresql")
    assert 'href="/storage/"' in page.get("/runs/").content.decode()
    call_command("tunix_prune", "--older-than", "30", stdout=StringIO())
    assert "by command" in page.get("/storage/").content.decode()


def test_the_admin_sorts_by_disk_and_pins_through_the_service(
    client: Client, operator: Any, make_run: Any
) -> None:
    small = with_files(make_run(RunStatus.COMPLETED, name="small-run"), 10)
    big = with_files(make_run(RunStatus.COMPLETED, name="big-run"), 10_000)
    admin = signed_in(client, operator)
    operator.is_superuser = True
    operator.save()
    # The admin's `o` counts the changelist's columns from 0, its action checkbox included.
    columns = list(admin.get("/admin/runs/run/").context["cl"].list_display)
    index = columns.index("disk_display")
    html = admin.get(f"/admin/runs/run/?o=-{index}").content.decode()
    assert html.index("big-run") < html.index("small-run")
    html = admin.get(f"/admin/runs/run/?o={index}").content.decode()
    assert html.index("small-run") < html.index("big-run")
    response = admin.post(
        "/admin/runs/run/",
        {"action": "pin_selected", "_selected_action": [str(small.pk), str(big.pk)]},
        follow=True,
    )
    assert "Pinned 2 run(s)." in response.content.decode()
    assert Run.objects.filter(pinned=True).count() == 2


def test_a_staff_user_without_the_permission_is_refused_pinning_in_the_admin(
    client: Client, django_user_model: Any, make_run: Any, make_user: Any
) -> None:
    from django.contrib.auth.models import Permission

    run = make_run(RunStatus.COMPLETED)
    # Only "view run": the action is not even offered (it declares its permission).
    staff = django_user_model.objects.create_user("stan", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_run"))
    signed_in(client, staff)
    assert "pin_selected" not in client.get("/admin/runs/run/").content.decode()
    client.post("/admin/runs/run/", {"action": "pin_selected", "_selected_action": [str(run.pk)]})
    run.refresh_from_db()
    assert not run.pinned

    # A staff submitter is offered it for their own runs; someone else's is refused by name.
    submitter = make_user("sam", roles=["submitters"], is_staff=True, perms=["runs.view_run"])
    signed_in(client, submitter)
    response = client.post(
        "/admin/runs/run/",
        {"action": "pin_selected", "_selected_action": [str(run.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert f"Not pinned (neither yours nor may you manage any run): {run.pk}" in (
        response.content.decode()
    )
    run.refresh_from_db()
    assert not run.pinned


def test_metrics_export_the_artifact_bytes(anon: APIClient, make_run: Any) -> None:
    with_files(make_run(RunStatus.COMPLETED), 1234)
    with_files(make_run(RunStatus.RUNNING), 766)
    samples = parse(anon.get("/metrics").content.decode())
    assert value(samples, "tunix_artifact_bytes") == 2000
