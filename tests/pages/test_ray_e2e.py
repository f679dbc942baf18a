"""The page of a Ray run in a real browser: started from the form, streamed live from its Ray
job on a real local head, and showing where it ran."""

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.pages.test_e2e import log_lines, start_from_the_form
from tests.ray.conftest import RayHead, ray_head  # noqa: F401 (the module's Ray head)
from tests.runs.helpers import WorkerThread

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def on_ray(ray_head: RayHead, settings: Any) -> RayHead:  # noqa: F811
    """Set before the page's server is forked, so that it links to the head's dashboard."""
    settings.RAY_ADDRESS = ray_head.address
    settings.TUNIX_RAY_DASHBOARD_URL = ray_head.address
    return ray_head


def test_a_ray_run_streams_live_and_links_to_its_ray_job(
    on_ray: RayHead, signed_in_page: Page, screenshots: Path
) -> None:
    page = signed_in_page
    with WorkerThread():
        run = start_from_the_form(page, "ray_child", lines="40", rate="10", stderr_lines="1")
        status = page.get_by_test_id("run-status")
        page.get_by_test_id("tab-logs").click()
        logs = page.get_by_test_id("live-logs")
        expect(logs).to_contain_text("line 3", timeout=60_000)
        expect(status).to_have_attribute("data-status", "running")
        expect(status).to_have_attribute("data-status", "completed", timeout=60_000)
    assert log_lines(page, "stdout") == [f"line {i}" for i in range(1, 41)]
    assert log_lines(page, "stderr")[-1] == "err 1"
    page.get_by_test_id("tab-overview").click()
    expect(page.get_by_test_id("executor")).to_contain_text("ray")
    submission = f"tunixops-{run.pk}-1"
    expect(page.get_by_test_id("ray-submission-id")).to_have_text(submission)
    expect(page.get_by_test_id("ray-dashboard")).to_have_attribute(
        "href", f"{on_ray.address}/#/jobs/{submission}"
    )
    page.screenshot(path=screenshots / "ray-run.png", full_page=True)
