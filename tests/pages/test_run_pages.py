"""The server-rendered run pages through Django's test client: what each page shows and does."""

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from artifacts.models import Artifact
from runs import views
from runs.models import Run, RunStatus
from runs.templatetags.run_pages import duration
from traces.models import Dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def html(response: Any) -> str:
    return str(response.content.decode())


def field_errors(body: str, name: str) -> str:
    """The text of the error list rendered next to field `name`."""
    match = re.search(rf'data-testid="error-{re.escape(name)}">(.*?)</ul>', body, re.S)
    assert match, f"no errors shown for {name}"
    return re.sub(r"<[^>]+>", " ", match[1])


# -- access ----------------------------------------------------------------------------------------


def test_every_page_sends_an_anonymous_visitor_to_the_login_page(make_run: Any) -> None:
    run = make_run()
    client = Client()
    for url in (
        "/runs/",
        "/runs/new/",
        f"/runs/{run.pk}/",
        f"/runs/{run.pk}/cancel/",
        f"/runs/{run.pk}/panels/overview/",
        f"/runs/{run.pk}/panels/artifacts/",
    ):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(f"/accounts/login/?next={url}"), url
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING


def test_logging_in_leads_to_the_run_list(alice: Any) -> None:
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert 'data-testid="login-submit"' in html(page)
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    assert 'data-testid="login-error"' in html(wrong)
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-password-1"}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/runs/"
    assert "alice" in html(response)


def test_the_site_root_leads_to_the_run_list(signed_in: Client) -> None:
    response = signed_in.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/runs/"


def test_logging_out_takes_a_post_and_ends_the_session(signed_in: Client) -> None:
    response = signed_in.post("/accounts/logout/")
    assert response.status_code == 200
    assert "Logged out" in html(response)
    assert signed_in.get("/runs/").status_code == 302


# -- list ------------------------------------------------------------------------------------------


def test_the_list_shows_status_recipe_dataset_created_and_duration(
    signed_in: Client, make_run: Any
) -> None:
    started = timezone.now() - timedelta(seconds=95)
    run = make_run(
        status=RunStatus.COMPLETED,
        name="nightly sft",
        dataset_key="support-v3",
        started_at=started,
        finished_at=started + timedelta(seconds=65),
    )
    body = html(signed_in.get("/runs/"))
    row = re.search(rf'<tr data-run-id="{run.pk}">(.*?)</tr>', body, re.S)
    assert row is not None
    assert f'href="/runs/{run.pk}/"' in row[1]
    assert "nightly sft" in row[1]
    assert 'class="badge status-completed"' in row[1]
    assert "tiny_sft" in row[1] and "support-v3" in row[1]
    assert run.created_at.strftime("%Y-%m-%d %H:%M") in row[1]
    assert "1 min 05 s" in row[1]


def test_the_list_filters_by_status_and_by_recipe(signed_in: Client, make_run: Any) -> None:
    failed = make_run(status=RunStatus.FAILED, recipe="peft")
    pending = make_run()
    by_status = html(signed_in.get("/runs/?status=failed"))
    assert str(failed.pk) in by_status and str(pending.pk) not in by_status
    by_recipe = html(signed_in.get("/runs/?recipe=tiny_sft"))
    assert str(pending.pk) in by_recipe and str(failed.pk) not in by_recipe
    neither = html(signed_in.get("/runs/?status=failed&recipe=tiny_sft"))
    assert "No runs match these filters" in neither


def test_an_unknown_filter_value_lists_every_run(signed_in: Client, make_run: Any) -> None:
    run = make_run()
    response = signed_in.get("/runs/?status=exploded&page=zzz")
    assert response.status_code == 200
    assert str(run.pk) in html(response)


def test_the_list_is_paginated_and_page_links_keep_the_filters(
    signed_in: Client, make_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "RUNS_PER_PAGE", 2)
    runs = [make_run(status=RunStatus.FAILED) for _ in range(3)]
    make_run(status=RunStatus.COMPLETED)
    first = html(signed_in.get("/runs/?status=failed"))
    assert "Page 1 of 2" in first
    assert 'href="?status=failed&amp;page=2"' in first
    second = html(signed_in.get("/runs/?status=failed&page=2"))
    # Newest first: the oldest failed run is alone on the second page.
    assert str(runs[0].pk) in second and str(runs[2].pk) not in second


def test_an_empty_list_says_so_and_offers_a_new_run(signed_in: Client) -> None:
    body = html(signed_in.get("/runs/"))
    assert "No runs" in body
    assert 'href="/runs/new/"' in body


# -- new run ---------------------------------------------------------------------------------------


def test_the_form_offers_every_recipe_and_the_default_recipes_fields_with_bounds(
    signed_in: Client, child_recipes: Any
) -> None:
    body = html(signed_in.get("/runs/new/"))
    options = re.findall(r'<option value="([^"]+)"', body)
    assert {"tiny_sft", "peft", "child", "missing_program"} <= set(options)
    assert re.search(r'<option value="tiny_sft"\s+selected>', body)
    max_steps = re.search(r'<input[^>]*name="config.max_steps"[^>]*>', body)
    assert max_steps is not None
    for attr in ('type="number"', 'min="1"', 'max="1000000"', 'value="50"', 'step="1"'):
        assert attr in max_steps[0]
    lr = re.search(r'<input[^>]*name="config.learning_rate"[^>]*>', body)
    assert lr is not None and 'step="any"' in lr[0] and 'max="1"' in lr[0]
    assert "Training steps. 1 to 1000000, default 50" in body
    assert 'name="recipe" value="tiny_sft"' in body


def test_choosing_another_recipe_shows_that_recipes_fields(signed_in: Client) -> None:
    body = html(signed_in.get("/runs/new/?recipe=peft"))
    assert 'name="config.training_config.max_steps"' in body
    assert 'name="config.max_steps"' not in body
    assert re.search(r'<option value="peft"\s+selected>', body)


def test_an_unknown_recipe_in_the_address_shows_the_default_with_a_warning(
    signed_in: Client,
) -> None:
    response = signed_in.get("/runs/new/?recipe=nope")
    assert response.status_code == 200
    body = html(response)
    assert "There is no recipe &#x27;nope&#x27;" in body
    assert 'name="config.max_steps"' in body


def make_dataset(key: str) -> Dataset:
    name, version = key.rsplit("-", 1)
    return Dataset.objects.create(
        key=key, name=name, version=version, selection="latest", limit=10, trace_count=0
    )


def test_the_form_suggests_the_known_datasets(signed_in: Client) -> None:
    make_dataset("support-v1")
    make_dataset("billing-v4")
    body = html(signed_in.get("/runs/new/"))
    assert 'list="dataset-keys"' in body
    assert '<option value="support-v1">' in body and '<option value="billing-v4">' in body


def test_an_unknown_dataset_is_refused_next_to_its_field(signed_in: Client) -> None:
    response = signed_in.post("/runs/new/", {"recipe": "tiny_sft", "dataset_key": "nope-v9"})
    assert response.status_code == 400
    assert "unknown dataset" in field_errors(html(response), "dataset_key")
    assert Run.objects.count() == 0


def test_a_valid_form_enqueues_the_run_and_opens_its_page(signed_in: Client, alice: Any) -> None:
    make_dataset("support-v1")
    response = signed_in.post(
        "/runs/new/",
        {
            "recipe": "tiny_sft",
            "name": "from the form",
            "model_id": "",
            "dataset_key": "support-v1",
            "config.max_steps": "12",
            "config.learning_rate": "0.01",
            "config.batch_size": "",
        },
    )
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.pk}/"
    assert run.status == RunStatus.PENDING
    assert run.created_by == alice
    assert (run.name, run.dataset_id, run.model_id) == (
        "from the form",
        "support-v1",
        "tiny-qwen3-random",
    )
    assert run.config["max_steps"] == 12 and run.config["learning_rate"] == 0.01
    # Left empty: the recipe's default.
    assert run.config["batch_size"] == 8
    page = signed_in.get(response["Location"])
    assert "is queued" in html(page)


def test_a_value_out_of_bounds_is_refused_next_to_its_field(signed_in: Client) -> None:
    response = signed_in.post(
        "/runs/new/",
        {"recipe": "tiny_sft", "config.max_steps": "0", "config.learning_rate": "5"},
    )
    assert response.status_code == 400
    body = html(response)
    assert 'data-testid="form-errors"' in body
    assert "must be &gt;= 1" in field_errors(body, "config.max_steps")
    assert "must be &lt;= 1" in field_errors(body, "config.learning_rate")
    # The values typed are kept for correction.
    assert re.search(r'name="config.max_steps"[^>]*value="0"', body)
    assert Run.objects.count() == 0


def test_a_value_of_the_wrong_type_is_refused_next_to_its_field(signed_in: Client) -> None:
    response = signed_in.post(
        "/runs/new/", {"recipe": "tiny_sft", "config.max_steps": "ten", "config.seed": "1.5"}
    )
    assert response.status_code == 400
    body = html(response)
    assert "whole number" in field_errors(body, "config.max_steps")
    assert "whole number" in field_errors(body, "config.seed")
    assert Run.objects.count() == 0


def test_a_posted_unknown_recipe_is_refused(signed_in: Client) -> None:
    response = signed_in.post("/runs/new/", {"recipe": "rm -rf", "config.max_steps": "3"})
    assert response.status_code == 400
    assert "Recipe: Select a valid choice" in html(response)
    assert Run.objects.count() == 0


def test_settings_left_empty_are_left_to_the_recipe(signed_in: Client, child_recipes: Any) -> None:
    response = signed_in.post(
        "/runs/new/",
        {"recipe": "child", "config.lines": "3", "config.rate": "", "config.partial": ""},
    )
    assert response.status_code == 302
    # `lines` given; `rate`, `partial` and the unticked boxes without a default are not sent.
    assert Run.objects.get().config == {"lines": 3}


CHOICE_RECIPES = """
[recipes.pick]
argv = ["{python}", "-c", "pass"]

[recipes.pick.config.mode]
type = "str"
choices = ["fast", "slow"]

[recipes.pick.config.level]
type = "int"
choices = [1, 2, 4]
default = 2

[recipes.pick.config.warmup]
type = "int"
min = 0

[recipes.pick.config.cap]
type = "float"
max = 2.5
"""


@pytest.fixture
def choice_recipes(settings: Any, tmp_path: Any) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text(CHOICE_RECIPES)
    settings.TUNIX_RECIPES_FILE = str(path)


def test_choices_and_one_sided_bounds_are_offered(signed_in: Client, choice_recipes: None) -> None:
    body = html(signed_in.get("/runs/new/?recipe=pick"))
    mode = re.search(r'<select name="config.mode".*?</select>', body, re.S)
    assert mode is not None
    assert re.findall(r'<option value="([^"]*)"', mode[0]) == ["", "fast", "slow"]
    level = re.search(r'<select name="config.level".*?</select>', body, re.S)
    assert level is not None and re.search(r'<option value="2"\s+selected>', level[0])
    assert "at least 0" in body and "at most 2.5" in body
    assert re.search(r'<input[^>]*name="config.warmup"[^>]*min="0"', body)


def test_a_choice_is_sent_in_its_declared_type(signed_in: Client, choice_recipes: None) -> None:
    response = signed_in.post(
        "/runs/new/", {"recipe": "pick", "config.mode": "slow", "config.level": "4"}
    )
    assert response.status_code == 302
    assert Run.objects.get().config == {"mode": "slow", "level": 4}
    refused = signed_in.post("/runs/new/", {"recipe": "pick", "config.mode": "turbo"})
    assert refused.status_code == 400
    assert "Select a valid choice" in field_errors(html(refused), "config.mode")


def test_a_ticked_box_is_sent_as_true(signed_in: Client, child_recipes: Any) -> None:
    response = signed_in.post(
        "/runs/new/", {"recipe": "child", "config.lines": "1", "config.stamp": "on"}
    )
    assert response.status_code == 302
    assert Run.objects.get().config == {"lines": 1, "stamp": True}


# -- detail ----------------------------------------------------------------------------------------


def test_the_run_page_has_the_status_badge_tabs_log_chart_and_its_settings(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING, config={"max_steps": 12, "learning_rate": 0.01})
    response = signed_in.get(f"/runs/{run.pk}/")
    assert response.status_code == 200
    body = html(response)
    assert re.search(r'data-status="running" data-testid="run-status">running<', body)
    for testid in (
        "tab-overview",
        "tab-logs",
        "tab-artifacts",
        "live-logs",
        "loss-chart",
        "progress",
        "reconnect",
        "cancel-run",
        "confirm-cancel",
        "artifacts-panel",
        "overview",
    ):
        assert f'data-testid="{testid}"' in body, testid
    config = re.search(r'<script id="run-page-config" type="application/json">(.*?)</script>', body)
    assert config is not None
    assert json.loads(config[1]) == {
        "runId": str(run.pk),
        "status": "running",
        "apiBase": "/api/tunix",
        "maxSteps": 12,
        "panels": {
            "overview": f"/runs/{run.pk}/panels/overview/",
            "artifacts": f"/runs/{run.pk}/panels/artifacts/",
        },
    }
    assert '<script type="module" src="/static/runs/runpage.mjs">' in body
    assert "AdamW learning rate." in body


def test_a_finished_run_offers_run_again_and_no_cancel(signed_in: Client, make_run: Any) -> None:
    body = html(signed_in.get(f"/runs/{make_run(status=RunStatus.FAILED).pk}/"))
    assert 'data-testid="requeue"' in body
    assert 'data-testid="cancel-run"' not in body


def test_the_step_budget_of_a_recipe_with_nested_keys_reaches_the_page(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(recipe="peft", config={"training_config.max_steps": 900})
    assert '"maxSteps": 900' in html(signed_in.get(f"/runs/{run.pk}/"))
    plain = make_run(recipe="child", config={"lines": 3})
    assert '"maxSteps": null' in html(signed_in.get(f"/runs/{plain.pk}/"))


def test_an_unknown_or_malformed_run_is_not_found(signed_in: Client) -> None:
    missing = "/runs/8a7e0f0e-0000-4000-8000-000000000000"
    for url in (f"{missing}/", "/runs/not-a-uuid/", f"{missing}/panels/overview/"):
        assert signed_in.get(url).status_code == 404, url


def test_the_overview_panel_shows_timings_attempt_worker_reason_and_lineage(
    signed_in: Client, make_run: Any
) -> None:
    started = timezone.now() - timedelta(hours=3)
    original = make_run(status=RunStatus.FAILED)
    run = make_run(
        status=RunStatus.TIMEOUT,
        started_at=started,
        finished_at=started + timedelta(hours=2, minutes=7),
        attempt=2,
        max_attempts=3,
        worker_id="gpu-host-1:4242",
        status_reason="timed out after 7620 s",
        exit_code=-15,
        requeued_from=original,
    )
    body = html(signed_in.get(f"/runs/{run.pk}/panels/overview/"))
    assert "2 h 07 min" in body
    assert "2 of 3" in body
    assert "gpu-host-1:4242" in body
    assert "timed out after 7620 s" in body
    assert "-15" in body
    assert f'href="/runs/{original.pk}/"' in body
    back = html(signed_in.get(f"/runs/{original.pk}/panels/overview/"))
    assert f'href="/runs/{run.pk}/"' in back


def test_the_artifacts_panel_lists_files_and_checkpoints_with_sizes_and_links(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    other = make_run(status=RunStatus.COMPLETED)
    files = [
        ("checkpoints/10/state/data.bin", 10, 3 * 1024 * 1024),
        ("checkpoints/10/_CHECKPOINT_METADATA", 10, 1000),
        ("metrics.json", None, 1536),
    ]
    for name, step, size in files:
        Artifact.objects.create(run=run, name=name, size_bytes=size, sha256="ab" * 32, step=step)
    Artifact.objects.create(run=other, name="elsewhere.bin", size_bytes=1, sha256="cd" * 32)
    body = html(signed_in.get(f"/runs/{run.pk}/panels/artifacts/"))
    metrics_file = Artifact.objects.get(name="metrics.json")
    assert f'href="/api/tunix/runs/{run.pk}/artifacts/{metrics_file.pk}/download"' in body
    assert "1.5\xa0KB" in body
    assert "3.0\xa0MB" in body
    assert f'href="/api/tunix/runs/{run.pk}/checkpoints/10/download"' in body
    assert "Download step 10 (.zip)" in body
    assert 'data-sha256="' + "ab" * 32 in body
    assert "elsewhere.bin" not in body
    # Checkpoint files are listed under their step, the others in the files table.
    step_row = re.search(r'<tr data-step="10">(.*?)</tr>', body, re.S)
    assert step_row is not None and "2 files" in step_row[1]
    assert "checkpoints/10/state/data.bin" in step_row[1]
    table = re.search(r'data-testid="artifact-table">(.*?)</table>', body, re.S)
    assert table is not None and "metrics.json" in table[1] and "data.bin" not in table[1]
    assert str(settings_root_marker()) not in body


def settings_root_marker() -> str:
    from django.conf import settings

    return str(settings.TUNIX_ARTIFACT_ROOT)


def test_a_run_with_many_files_lists_the_first_ones_and_says_so(
    signed_in: Client, make_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "ARTIFACTS_SHOWN", 2)
    run = make_run(status=RunStatus.COMPLETED)
    for i in range(3):
        Artifact.objects.create(run=run, name=f"f{i}", size_bytes=1, sha256="0" * 64)
    body = html(signed_in.get(f"/runs/{run.pk}/panels/artifacts/"))
    assert "The first 2 of 3 files" in body
    assert "<code>f2</code>" not in body


def test_a_run_without_files_says_so(signed_in: Client, make_run: Any) -> None:
    body = html(signed_in.get(f"/runs/{make_run(status=RunStatus.RUNNING).pk}/panels/artifacts/"))
    assert "No committed checkpoint yet" in body and "No other files yet" in body


# -- cancel and run again ------------------------------------------------------------------------


def test_cancel_asks_for_confirmation_before_it_does_anything(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    body = html(signed_in.get(f"/runs/{run.pk}/cancel/"))
    assert "Cancel this run?" in body and 'data-testid="confirm-cancel"' in body
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_cancelling_a_pending_run_cancels_it_at_once(
    signed_in: Client, make_run: Any, alice: Any
) -> None:
    run = make_run()
    response = signed_in.post(f"/runs/{run.pk}/cancel/", follow=True)
    assert response.redirect_chain == [(f"/runs/{run.pk}/", 302)]
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.status_reason == "cancelled by alice: from the run page"
    assert "The run is cancelled." in html(response)


def test_cancelling_a_running_run_asks_the_worker_to_stop_it(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    response = signed_in.post(f"/runs/{run.pk}/cancel/", follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCEL_REQUESTED
    assert "Cancel requested" in html(response)


def test_cancelling_a_finished_run_is_refused_with_a_message_on_its_page(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    response = signed_in.post(f"/runs/{run.pk}/cancel/", follow=True)
    assert response.status_code == 200
    body = html(response)
    assert "Not cancelled: the run is already completed." in body
    assert 'role="alert"' in body
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    confirm = html(signed_in.get(f"/runs/{run.pk}/cancel/"))
    assert "Only a pending or running run can be cancelled" in confirm


def test_cancel_refuses_a_post_without_the_csrf_token(alice: Any, make_run: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    run = make_run()
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING


def test_run_again_copies_a_finished_run_and_opens_the_copy(
    signed_in: Client, make_run: Any, alice: Any
) -> None:
    run = make_run(status=RunStatus.FAILED, config={"max_steps": 9})
    response = signed_in.post(f"/runs/{run.pk}/requeue/")
    again = Run.objects.exclude(pk=run.pk).get()
    assert response["Location"] == f"/runs/{again.pk}/"
    assert again.requeued_from == run and again.status == RunStatus.PENDING
    assert again.config["max_steps"] == 9 and again.created_by == alice
    assert signed_in.get(f"/runs/{run.pk}/requeue/").status_code == 405


def test_run_again_is_refused_for_an_active_run_or_a_retired_recipe(
    signed_in: Client, make_run: Any
) -> None:
    active = make_run(status=RunStatus.RUNNING)
    body = html(signed_in.post(f"/runs/{active.pk}/requeue/", follow=True))
    assert "Not requeued: the run is still running." in body
    retired = make_run(status=RunStatus.FAILED, recipe="gone")
    body = html(signed_in.post(f"/runs/{retired.pk}/requeue/", follow=True))
    assert "Not requeued: recipe: unknown recipe" in body
    assert Run.objects.count() == 2


# -- static files and formatting -------------------------------------------------------------------


def test_the_pages_scripts_and_styles_are_served_by_the_app_itself(signed_in: Client) -> None:
    for path, kind in (
        ("/static/runs/runpage.mjs", "text/javascript"),
        ("/static/runs/logview.mjs", "text/javascript"),
        ("/static/runs/console.css", "text/css"),
    ):
        response = Client().get(path)
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith(kind), path


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (4.25, "4.2 s"), (65, "1 min 05 s"), (3599, "59 min 59 s"), (7620, "2 h 07 min")],
)
def test_durations_read_naturally(seconds: float | None, text: str) -> None:
    assert duration(None if seconds is None else timedelta(seconds=seconds)) == text


def test_the_overview_shows_the_runs_devices_and_memory_limit(
    signed_in: Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING, devices=2, device_ids="4,5", memory_limit_mb=512)
    body = html(signed_in.get(f"/runs/{run.pk}/"))
    assert re.search(r'data-testid="devices">2 \(ids 4,5\)<', body)
    assert "512 MiB" in body
    cpu = make_run()
    assert 'data-testid="devices">none (CPU)<' in html(signed_in.get(f"/runs/{cpu.pk}/"))


def _committed_step(run: Any, step: int) -> None:
    from artifacts.services import artifacts_sync
    from runs.services import run_dir

    step_dir = run_dir(run.pk) / "checkpoints" / str(step)
    step_dir.mkdir(parents=True)
    (step_dir / "commit_success.txt").write_text("ok")
    (step_dir / "weights.bin").write_bytes(b"w" * 100)
    artifacts_sync(run_id=run.pk)


def test_a_finished_run_continues_from_the_chosen_step_with_changed_settings(
    signed_in: Client, make_run: Any
) -> None:
    parent = make_run(status=RunStatus.COMPLETED, config={"max_steps": 20, "seed": 3})
    _committed_step(parent, 10)
    _committed_step(parent, 20)
    page = html(signed_in.get(f"/runs/{parent.pk}/continue/"))
    assert '<option value="20" selected>20</option>' in page
    assert 'name="config.max_steps"' in page and 'value="20"' in page
    response = signed_in.post(
        f"/runs/{parent.pk}/continue/", {"step": "10", "config.max_steps": "40", "name": "more"}
    )
    child = Run.objects.get(continued_from=parent)
    assert response.status_code == 302 and response["Location"] == f"/runs/{child.pk}/"
    assert (child.continued_from_step, child.name, child.config["max_steps"]) == (10, "more", 40)
    assert child.config["seed"] == 3
    body = html(signed_in.get(f"/runs/{child.pk}/"))
    assert re.search(r'data-testid="continued-from">step 10 of', body)
    assert str(child.pk) in html(signed_in.get(f"/runs/{parent.pk}/"))


def test_a_run_without_checkpoints_or_not_finished_cannot_be_continued(
    signed_in: Client, make_run: Any
) -> None:
    finished = make_run(status=RunStatus.COMPLETED)
    response = signed_in.get(f"/runs/{finished.pk}/continue/", follow=True)
    assert "it has no committed checkpoint step" in html(response)
    running = make_run(status=RunStatus.RUNNING)
    response = signed_in.get(f"/runs/{running.pk}/continue/", follow=True)
    assert "the run is running" in html(response)
    assert not Run.objects.filter(continued_from__isnull=False).exists()


def test_a_peft_run_forks_into_grpo_from_the_continue_page(
    signed_in: Client, make_run: Any
) -> None:
    parent = make_run(
        status=RunStatus.COMPLETED,
        recipe="peft",
        model_id="tunixops/qwen3-tiny",
        config={"training_config.max_steps": 4},
    )
    _committed_step(parent, 4)
    page = html(signed_in.get(f"/runs/{parent.pk}/continue/"))
    assert f'href="/runs/{parent.pk}/continue/?recipe=grpo"' in page
    fork = html(signed_in.get(f"/runs/{parent.pk}/continue/?recipe=grpo"))
    assert 'name="recipe" value="grpo"' in fork
    assert 'name="config.rl_training_config.max_steps"' in fork
    assert 'name="config.training_config.max_steps"' not in fork
    response = signed_in.post(
        f"/runs/{parent.pk}/continue/",
        {"recipe": "grpo", "step": "4", "config.rl_training_config.max_steps": "2"},
    )
    child = Run.objects.get(continued_from=parent)
    assert response.status_code == 302 and response["Location"] == f"/runs/{child.pk}/"
    assert (child.recipe, child.model_id, child.continued_from_step) == (
        "grpo",
        "tunixops/qwen3-tiny",
        4,
    )
    assert child.config["rl_training_config.max_steps"] == 2


def test_a_fork_into_a_recipe_that_cannot_start_from_the_run_is_refused_on_the_page(
    signed_in: Client, make_run: Any
) -> None:
    parent = make_run(status=RunStatus.COMPLETED, recipe="tiny_sft")
    _committed_step(parent, 4)
    page = html(signed_in.get(f"/runs/{parent.pk}/continue/"))
    assert "fork into" not in page
    for recipe in ("grpo", "no-such-recipe"):
        response = signed_in.post(f"/runs/{parent.pk}/continue/", {"recipe": recipe, "step": "4"})
        assert response.status_code == 400
        assert (
            f"Recipe &#x27;{recipe}&#x27; cannot start from a &#x27;tiny_sft&#x27; checkpoint"
            in (html(response))
        )
    assert not Run.objects.filter(continued_from=parent).exists()


def test_a_bad_setting_when_continuing_is_shown_next_to_its_field(
    signed_in: Client, make_run: Any
) -> None:
    parent = make_run(status=RunStatus.COMPLETED, config={"max_steps": 20})
    _committed_step(parent, 20)
    response = signed_in.post(
        f"/runs/{parent.pk}/continue/", {"step": "20", "config.max_steps": "0"}
    )
    assert response.status_code == 400
    assert "must be &gt;= 1" in html(response)
    assert not Run.objects.filter(continued_from=parent).exists()


def test_a_retried_runs_page_lists_each_attempt_with_its_ending(
    signed_in: Client, make_run: Any
) -> None:
    from runs.models import RunAttempt

    now = timezone.now()
    run = make_run(status=RunStatus.COMPLETED, attempt=2, max_attempts=3)
    RunAttempt.objects.create(
        run=run,
        number=1,
        worker_id="w1",
        started_at=now,
        finished_at=now,
        ending="pending",
        reason="exit code 137; retrying",
        exit_code=137,
    )
    RunAttempt.objects.create(
        run=run,
        number=2,
        worker_id="w2",
        started_at=now,
        finished_at=now,
        ending="completed",
        exit_code=0,
    )
    table = html(signed_in.get(f"/runs/{run.pk}/")).split('data-testid="attempts"')[1]
    assert re.search(r"<th scope=\"row\">1</th>\s*<td>w1</td>", table)
    assert "retried" in table and "exit code 137; retrying" in table and "completed" in table


def test_the_new_run_form_takes_a_pool_and_devices(signed_in: Client) -> None:
    response = signed_in.post(
        "/runs/new/", {"recipe": "tiny_sft", "pool": "gpu-a100", "devices": "2"}
    )
    run = Run.objects.get()
    assert response.status_code == 302
    assert (run.pool, run.devices) == ("gpu-a100", 2)
    bad = signed_in.post("/runs/new/", {"recipe": "tiny_sft", "pool": "no/slashes"})
    assert bad.status_code == 400 and Run.objects.count() == 1
