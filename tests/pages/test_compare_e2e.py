"""The compare page in Chromium with three real runs from a real worker: two finished, one still
training, picked with the run list's checkboxes."""

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from runs.models import Run, RunStatus
from runs.services import run_enqueue
from tests.conftest import CHILD_RECIPES
from tests.runs.helpers import WorkerThread, status_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

METRIC_RECIPES = Path(__file__).parent.parent / "metrics" / "recipes.toml"
FINISHED_STEPS = 20


@pytest.fixture
def metric_recipes(settings: Any, tmp_path: Path, child_recipes: Path) -> Path:
    """The test children's recipes plus `metric_child`; set before the server forks."""
    path = tmp_path / "recipes.toml"
    path.write_text(CHILD_RECIPES.read_text() + "\n" + METRIC_RECIPES.read_text())
    settings.TUNIX_RECIPES_FILE = str(path)
    return path


def metric_run(user: Any, name: str, **config: Any) -> Run:
    return run_enqueue(recipe="metric_child", created_by=user, name=name, config=config)


def test_three_runs_compare_side_by_side_and_the_live_one_keeps_drawing(
    metric_recipes: Path, signed_in_page: Page, console: str, alice: Any, screenshots: Path
) -> None:
    page = signed_in_page
    with WorkerThread(concurrency=3):
        low = metric_run(alice, "low", steps=FINISHED_STEPS, scale=1.0)
        high = metric_run(alice, "high", steps=FINISHED_STEPS, scale=2.0)
        wait_for(lambda: {status_of(low), status_of(high)} == {RunStatus.COMPLETED}, 60)
        # A step every 0.3 s: still training for the whole test.
        live = metric_run(alice, "live", steps=400, scale=3.0, pause=0.3)
        wait_for(lambda: live.metrics.count() >= 2, 60)

        page.goto(f"{console}/runs/")
        for run in (low, high, live):
            page.locator(f'tr[data-run-id="{run.pk}"]').get_by_test_id("compare-pick").check()
        page.get_by_test_id("compare-selected").click()
        # In the list's order: newest first.
        wanted = ",".join(str(run.pk) for run in (live, high, low))
        expect(page).to_have_url(re.compile(rf"/runs/compare/\?ids={wanted}$"))

        loss = page.locator('[data-testid="compare-chart"][data-metric="loss"]')
        series = loss.get_by_test_id("compare-series")
        expect(series).to_have_count(3)
        for run, count in ((low, FINISHED_STEPS), (high, FINISHED_STEPS)):
            line = loss.locator(f'[data-testid="compare-series"][data-run-id="{run.pk}"]')
            expect(line).to_have_attribute("data-count", str(count))
        live_line = loss.locator(f'[data-testid="compare-series"][data-run-id="{live.pk}"]')
        expect(live_line).not_to_have_attribute("data-count", "0")
        first = int(live_line.get_attribute("data-count") or 0)
        # Live: the line grows while the page stays open.
        expect(live_line).not_to_have_attribute("data-count", str(first), timeout=15_000)
        assert int(live_line.get_attribute("data-count") or 0) > first
        expect(page.get_by_test_id("compare-state")).to_contain_text("1 of 3 runs still going")

        # Every run has its own colour, and the legend names each one.
        strokes = series.evaluate_all("lines => lines.map(line => getComputedStyle(line).stroke)")
        assert len(set(strokes)) == 3
        legend = page.get_by_test_id("compare-legend")
        for name in ("low", "high", "live"):
            expect(legend).to_contain_text(name)
        expect(legend.locator(f'li[data-run-id="{live.pk}"] .badge')).to_have_text("running")
        # Steps line up: both finished runs end at the same x, left of the live run's latest.
        ends = {
            run.pk: loss.locator(f'[data-run-id="{run.pk}"]').evaluate(
                "line => Number(line.getAttribute('points').split(' ').pop().split(',')[0])"
            )
            for run in (low, high)
        }
        assert ends[low.pk] == ends[high.pk]

        diff = page.get_by_test_id("config-diff")
        expect(diff.locator('tr[data-key="config.scale"]')).to_contain_text("2.0")
        expect(diff.locator('tr[data-key="config.steps"]')).to_contain_text("400")
        expect(diff.locator('tr[data-key="config.pause"]')).to_be_visible()
        expect(diff.locator('tr[data-key="recipe"]')).to_have_count(0)
        best = page.get_by_test_id("final-metrics").locator('tr[data-metric="loss"] td.best')
        expect(best).to_have_count(1)
        expect(best).to_have_attribute("data-run-id", str(low.pk))
        for chart in ("perplexity", "learning_rate"):
            expect(
                page.locator(
                    f'[data-testid="compare-chart"][data-metric="{chart}"]'
                ).get_by_test_id("compare-series")
            ).to_have_count(3)
        page.screenshot(path=screenshots / "compare-live.png", full_page=True)
