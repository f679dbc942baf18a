"""The run pages in a real browser: Chromium against daphne, with a real worker running real
children (and one real Tunix run). Every wait is on a condition the page shows."""

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from artifacts.models import Artifact
from runs.models import Run, RunStatus
from tests.pages.conftest import log_in
from tests.runs.helpers import WorkerThread, enqueue_child

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUN_URL = re.compile(r"/runs/([0-9a-f-]{36})/$")


def run_of(page: Page) -> Run:
    match = RUN_URL.search(page.url)
    assert match, page.url
    return Run.objects.get(pk=match[1])


def start_from_the_form(
    page: Page, recipe: str, screenshots: Path | None = None, **config: str
) -> Run:
    page.get_by_test_id("new-run").click()
    # The recipe list switches on `change` only once the page's module has run (it first hides
    # the no-JavaScript button): a choice made before that is lost, as seen on a busy CI host.
    page.wait_for_load_state("load")
    expect(page.locator("[data-recipe-switch]")).to_be_hidden()
    page.get_by_label("Recipe", exact=True).select_option(recipe)
    expect(page.get_by_test_id("config-fields")).to_contain_text(f"{recipe} settings")
    for key, value in config.items():
        page.locator(f'[name="config.{key}"]').fill(value)
    if screenshots:
        page.screenshot(path=screenshots / f"new-run-{recipe}.png", full_page=True)
    page.get_by_test_id("start-run").click()
    expect(page).to_have_url(RUN_URL)
    expect(page.get_by_test_id("messages")).to_contain_text("is queued")
    return run_of(page)


def log_lines(page: Page, stream: str) -> list[str]:
    kind = "out" if stream == "stdout" else "err"
    return page.get_by_test_id("live-logs").locator(f".line.{kind}").all_inner_texts()


@pytest.mark.slow
def test_a_run_started_from_the_form_streams_its_log_live_to_the_end(
    signed_in_page: Page, screenshots: Path
) -> None:
    page = signed_in_page
    with WorkerThread():
        run = start_from_the_form(
            page, "child", lines="60", rate="10", stderr_lines="2", screenshots=screenshots
        )
        status = page.get_by_test_id("run-status")
        page.get_by_test_id("tab-logs").click()
        logs = page.get_by_test_id("live-logs")
        expect(logs).to_contain_text("line 3")
        # Seen while the run is still going: the log is live, not a page load's snapshot.
        expect(status).to_have_attribute("data-status", "running")
        expect(page.get_by_test_id("stream-state")).to_have_attribute("data-state", "live")
        # Reconnecting mid-run resumes after the last line shown: nothing missing or doubled.
        page.get_by_test_id("reconnect").click()
        expect(logs).to_contain_text("line 20")
        page.get_by_test_id("reconnect").click()
        expect(status).to_have_attribute("data-status", "completed", timeout=60_000)
        expect(status).to_have_text("completed")
    expect(page.get_by_test_id("stream-state")).to_have_attribute("data-state", "closed")
    expect(page.get_by_test_id("reconnect")).to_be_hidden()
    assert log_lines(page, "stdout") == [f"line {i}" for i in range(1, 61)]
    assert log_lines(page, "stderr") == ["err 1", "err 2"]
    # The overview was re-rendered at the end.
    page.get_by_test_id("tab-overview").click()
    expect(page.get_by_test_id("exit-code")).to_have_text("0")
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.created_by is not None
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Runs").click()
    expect(page.locator(f'tr[data-run-id="{run.pk}"]')).to_contain_text("completed")
    page.screenshot(path=screenshots / "run-list.png", full_page=True)


def at_bottom(page: Page) -> bool:
    return bool(
        page.get_by_test_id("live-logs").evaluate(
            "box => box.scrollHeight - box.scrollTop - box.clientHeight < 24"
        )
    )


@pytest.mark.slow
def test_a_long_run_is_cancelled_from_its_page(signed_in_page: Page) -> None:
    page = signed_in_page
    with WorkerThread():
        run = start_from_the_form(page, "child", lines="100000", rate="20")
        status = page.get_by_test_id("run-status")
        page.get_by_test_id("tab-logs").click()
        logs = page.get_by_test_id("live-logs")
        expect(logs).to_contain_text("line 60")
        expect(status).to_have_attribute("data-status", "running")
        # The log follows its end until the reader scrolls up, then stays put.
        assert at_bottom(page)
        logs.evaluate("box => { box.scrollTop = 0; }")
        expect(page.get_by_test_id("jump-latest")).to_be_visible()
        shown = logs.locator(".line").count()
        expect(logs).to_contain_text(f"line {shown + 20}")
        assert logs.evaluate("box => box.scrollTop") == 0
        page.get_by_test_id("jump-latest").click()
        expect(page.get_by_test_id("jump-latest")).to_be_hidden()
        assert at_bottom(page)
        dialog = page.get_by_test_id("cancel-dialog")
        # Changing one's mind leaves the run alone.
        page.get_by_test_id("cancel-run").click()
        expect(dialog).to_be_visible()
        page.get_by_test_id("keep-run").click()
        expect(dialog).to_be_hidden()
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING
        page.get_by_test_id("cancel-run").click()
        page.get_by_test_id("confirm-cancel").click()
        expect(page.get_by_test_id("messages")).to_contain_text("Cancel requested")
        expect(status).to_have_attribute("data-status", "cancelled", timeout=30_000)
        expect(page.get_by_test_id("cancel-run")).to_be_hidden()
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "by alice: from the run page" in run.status_reason


@pytest.mark.slow
def test_the_status_still_updates_by_polling_when_the_stream_is_unavailable(
    signed_in_page: Page, console: str, alice: Any
) -> None:
    page = signed_in_page

    def refuse(route: Route) -> None:
        route.abort()

    # The stream only: the snapshot (`/logs/snapshot`) and the status endpoint still answer.
    page.route(re.compile(r"/api/tunix/runs/[^/]+/logs\?"), refuse)
    # Long enough for a poll (every 3 s) to see it running.
    run = enqueue_child(alice, lines=1, sleep=8)
    page.goto(f"{console}/runs/{run.pk}/#logs")
    state = page.get_by_test_id("stream-state")
    expect(state).to_have_attribute("data-state", re.compile("reconnecting|unavailable"))
    expect(page.get_by_test_id("reconnect")).to_be_visible()
    with WorkerThread():
        status = page.get_by_test_id("run-status")
        expect(status).to_have_attribute("data-status", "running", timeout=30_000)
        expect(status).to_have_attribute("data-status", "completed", timeout=30_000)
    expect(state).to_have_attribute("data-state", "closed", timeout=30_000)


@pytest.mark.tunix
@pytest.mark.slow
def test_a_tiny_sft_run_draws_its_loss_and_offers_its_checkpoints(
    signed_in_page: Page, screenshots: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    page = signed_in_page
    with WorkerThread():
        run = start_from_the_form(page, "tiny_sft", max_steps="12", save_every_steps="5")
        status = page.get_by_test_id("run-status")
        expect(page.get_by_test_id("loss-line")).not_to_have_attribute(
            "data-count", "0", timeout=180_000
        )
        expect(status).to_have_attribute("data-status", "completed", timeout=180_000)
    expect(page.get_by_test_id("loss-line")).to_have_attribute("data-count", "12")
    expect(page.get_by_test_id("progress")).to_have_attribute("value", "12")
    expect(page.get_by_test_id("progress-text")).to_have_text("step 12 of 12 (100%)")
    expect(page.get_by_test_id("loss-summary")).to_contain_text("at step 12.")
    page.screenshot(path=screenshots / "finished-run-overview.png", full_page=True)

    page.get_by_test_id("tab-logs").click()
    expect(page.get_by_test_id("live-logs")).to_contain_text("step 12 loss")
    expect(page.get_by_test_id("stream-state")).to_have_attribute("data-state", "closed")
    page.screenshot(path=screenshots / "finished-run-logs.png", full_page=True)

    page.get_by_test_id("tab-artifacts").click()
    expect(page).to_have_url(re.compile("#artifacts$"))
    panel = page.get_by_test_id("artifacts-panel")
    expect(panel.get_by_test_id("checkpoint-table")).to_contain_text("12")
    page.screenshot(path=screenshots / "finished-run-artifacts.png", full_page=True)

    registered = Artifact.objects.filter(run=run, step__isnull=True).order_by("name").first()
    assert registered is not None
    row = panel.locator(f'tr[data-artifact="{registered.name}"]')
    with page.expect_download() as download:
        row.get_by_test_id("artifact-download").click()
    got = Path(download.value.path()).read_bytes()
    assert hashlib.sha256(got).hexdigest() == registered.sha256
    assert len(got) == registered.size_bytes

    step_row = panel.locator('[data-testid="checkpoint-table"] tr[data-step="12"]')
    with page.expect_download() as step_download:
        step_row.get_by_test_id("checkpoint-download").click()
    zipped = tmp_path / "step-12.zip"
    step_download.value.save_as(zipped)
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
    expected = Artifact.objects.filter(run=run, step=12).count()
    assert len(names) >= expected > 0


@pytest.mark.tunix
@pytest.mark.slow
def test_a_grpo_run_draws_its_event_file_series_and_any_can_be_picked(
    signed_in_page: Page, screenshots: Path, settings: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    settings.TUNIX_MODEL_CACHE = tmp_path / "models"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    page = signed_in_page
    line = page.get_by_test_id("loss-line")
    picker = page.get_by_test_id("series-picker")
    with WorkerThread():
        run = start_from_the_form(page, "grpo")
        expect(line).not_to_have_attribute("data-count", "0", timeout=180_000)
        expect(page.get_by_test_id("run-status")).to_have_attribute(
            "data-status", "completed", timeout=180_000
        )
    # GRPO logs no plain `loss`: the actor's loss is the default, every other series is offered.
    expect(line).to_have_attribute("data-series", "actor/loss")
    expect(picker).to_have_value("actor/loss")
    options = picker.locator("option").all_inner_texts()
    assert {"actor/kl", "rewards/mean", "completions/mean_length"} <= set(options)
    expect(page.get_by_test_id("progress-text")).to_have_text("step 6 of 6 (100%)")
    picker.select_option("actor/kl")
    expect(line).to_have_attribute("data-series", "actor/kl")
    expect(page.get_by_test_id("chart-title")).to_have_text("actor/kl by step")
    kl_steps = [m.step for m in run.metrics.all() if m.merged.get("actor/kl") is not None]
    expect(line).to_have_attribute("data-count", str(len(kl_steps)))
    expect(page.get_by_test_id("loss-summary")).to_contain_text(f"at step {max(kl_steps)}.")
    picker.select_option("rewards/mean")
    # GRPO logs its first rewards at step 0, which the page must not take for "no step yet".
    expect(page.get_by_test_id("loss-summary")).to_have_text(
        re.compile(r"^rewards/mean \S+ at step 0, \S+ at step 5\.$")
    )
    page.screenshot(path=screenshots / "grpo-run-series.png", full_page=True)


def test_the_admin_console_and_its_actions_work_under_the_csp(
    page: Page, console: str, operator: Any, make_run: Any, csp_violations: list[str]
) -> None:
    pending = make_run(name="to-cancel")
    done = make_run(name="finished", status=RunStatus.COMPLETED)
    log_in(page, console, "olga", "/admin/runs/run/")
    expect(page.locator("#result_list")).to_contain_text("to-cancel")
    # The admin's own scripts (actions.js) run: "select all" ticks every row.
    page.locator("#action-toggle").check()
    expect(page.locator("input.action-select:checked")).to_have_count(2)
    page.locator("#action-toggle").uncheck()
    page.locator(f'input.action-select[value="{pending.pk}"]').check()
    page.locator("select[name=action]").select_option("cancel_selected")
    page.locator("button[name=index]").click()
    expect(page.locator("ul.messagelist")).to_contain_text("Cancelled or asked to cancel 1")
    pending.refresh_from_db()
    done.refresh_from_db()
    assert (pending.status, done.status) == (RunStatus.CANCELLED, RunStatus.COMPLETED)
    page.goto(f"{console}/admin/runs/run/{done.pk}/change/")
    expect(page.locator("#content")).to_contain_text("finished")
    page.get_by_role("link", name="run page").click()
    expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "completed")
