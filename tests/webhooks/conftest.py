"""Fixtures for the webhook tests: operators, hooks, runs that live, and delivery processes."""

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from runs.models import Run, RunStatus
from runs.services import run_enqueue
from runs.state_machine import transition
from tests.conftest import REPO
from tests.metrics.conftest import metric_recipes  # noqa: F401  (a fixture, shared)
from webhooks import services
from webhooks.models import Event, Webhook

WEBHOOK_PERMS = ("view_webhook", "add_webhook", "change_webhook", "delete_webhook")
ALL_EVENTS = [e.value for e in Event]
RUN_EVENTS = [e.value for e in Event if e.value.startswith("run.")]

# Fast retries and short leases, so the tests see backoff and reclaim within seconds.
FAST = {
    "TUNIX_WEBHOOKS_ALLOW_PRIVATE": "true",
    "TUNIX_WEBHOOKS_POLL_SECONDS": "0.05",
    "TUNIX_WEBHOOKS_BACKOFF_SECONDS": "0.2",
    "TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS": "1",
    "TUNIX_WEBHOOKS_TIMEOUT_SECONDS": "2",
    "TUNIX_WEBHOOKS_LEASE_SECONDS": "4",
}


@pytest.fixture(autouse=True)
def receivers_on_loopback(settings: Any, child_recipes: Path) -> None:
    """The tests' receivers listen on 127.0.0.1, which the address guard refuses by default;
    their runs use the test child recipe."""
    settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user(username="olga", password="olga-password-1")
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="webhooks", codename__in=WEBHOOK_PERMS)
    )
    return django_user_model.objects.get(pk=user.pk)  # a fresh permission cache


@pytest.fixture
def make_hook(operator: Any) -> Callable[..., Webhook]:
    def make(url: str, **fields: Any) -> Webhook:
        fields.setdefault("name", "hook")
        fields.setdefault("events", RUN_EVENTS)
        return services.webhook_create(created_by=operator, url=url, **fields)

    return make


def live_run(
    user: Any = None, *, end: RunStatus = RunStatus.COMPLETED, exit_code: int = 0, **fields: Any
) -> Run:
    """A run enqueued, started and ended through the real services and state machine."""
    run = run_enqueue(recipe="child", created_by=user, **fields)
    transition(run.pk, RunStatus.RUNNING, attempt=1)
    if end == RunStatus.CANCELLED:
        transition(run.pk, RunStatus.CANCEL_REQUESTED)
    reason = "" if end == RunStatus.COMPLETED else f"it {end}"
    transition(run.pk, end, reason=reason, exit_code=exit_code)
    return Run.objects.get(pk=run.pk)


@pytest.fixture
def spawn_deliverer(process_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start real `manage.py tunix_webhooks` processes (fast settings); killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"deliverer-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "tunix_webhooks", *args],
            env={**process_env, **FAST, **env},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
