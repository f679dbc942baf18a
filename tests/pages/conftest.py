"""Browser tests of the run pages: Debian's Chromium driven by Playwright, against daphne.

The server is channels' `ChannelsLiveServerTestCase` (daphne, ASGI, so Server-Sent Events flow;
pytest-django's `live_server` is WSGI and would hang on them), forked from the test process for
each test, so it shares this test's settings (artifact root, recipes file) and database.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess
from django.db import connections
from playwright.sync_api import ConsoleMessage, Page, Playwright, expect

from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-output" / "e2e"
ALLOW_ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: from the first one on, Playwright's loop runs in the main thread
    (see the `playwright` fixture below), and no other test should run beside it. `trylast`,
    because pytest-django's own reordering (database tests first, then transactional ones, then
    the rest) would otherwise run after this and put tests without a database behind them."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (scripts/system-deps installs it)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
        ],
    }


@pytest.fixture(scope="session")
def base_url() -> None:
    """Each test has its own server URL; this also replaces pytest-playwright's fallback
    fixture, a method that pytest 9 warns about."""
    return None


@pytest.fixture(scope="session")
def playwright(playwright: Playwright) -> Iterator[Playwright]:
    """Sync Playwright keeps an asyncio loop running in the main thread as long as it lives, and
    Django refuses ORM calls from a thread with a running loop; the tests' own ORM calls are
    synchronous and safe."""
    os.environ[ALLOW_ASYNC_UNSAFE] = "true"
    yield playwright
    os.environ.pop(ALLOW_ASYNC_UNSAFE, None)


def _in_server_process() -> None:
    # The fork already points Django at the test database (channels' own setup would prefix its
    # name a second time on PostgreSQL); the server itself keeps Django's async-safety checks.
    os.environ.pop(ALLOW_ASYNC_UNSAFE, None)


class ServerProcess(DaphneProcess):  # type: ignore[misc]
    def __init__(
        self,
        host: str,
        get_application: Any,
        kwargs: dict[str, Any] | None = None,
        setup: Any = None,
        teardown: Any = None,
        port: int | None = None,
    ) -> None:
        super().__init__(
            host, get_application, kwargs, setup=_in_server_process, teardown=teardown, port=port
        )


class ConsoleServer(ChannelsLiveServerTestCase):  # type: ignore[misc]
    host = "127.0.0.1"
    # No static handler in front: whitenoise serves the pages' files, as under a bare daphne.
    serve_static = False
    ProtocolServerProcess = ServerProcess


@pytest.fixture
def console(transactional_db: None, artifact_root: Path, child_recipes: Path) -> Iterator[str]:
    """The URL of a daphne serving the whole app for this test."""
    # The server is forked: it must not inherit this process's open database connections.
    connections.close_all()
    ConsoleServer.setUpClass()
    try:
        yield f"http://{ConsoleServer.host}:{ConsoleServer._port}"
    finally:
        ConsoleServer.tearDownClass()
        ConsoleServer.doClassCleanups()


@pytest.fixture
def csp_violations(page: Page) -> Iterator[list[str]]:
    """What Chromium refused under the Content-Security-Policy while the test ran: the test
    fails if the pages needed anything the policy forbids (an inline script or style, an
    outside source)."""
    refused: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", on_console)
    yield refused
    assert not refused, refused


def log_in(page: Page, console: str, username: str, path: str = "/runs/") -> None:
    """Through the login form, checking it is served under the Content-Security-Policy."""
    page.set_default_timeout(20_000)
    response = page.goto(f"{console}{path}")
    assert response is not None
    expect(page).to_have_url(re.compile(r"/login/\?next="))
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"{username}-password-1")
    page.locator("[type=submit]").click()
    expect(page).to_have_url(f"{console}{path}")


@pytest.fixture
def signed_in_page(page: Page, console: str, alice: Any, csp_violations: list[str]) -> Page:
    """A page logged in as alice through the login form, with the CSP on and watched."""
    log_in(page, console, "alice")
    return page


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
