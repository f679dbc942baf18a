"""Fixtures for the metrics tests: recipes that print metric lines, workers with a metrics port."""

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.artifacts.servers import free_port
from tests.conftest import CHILD_RECIPES
from tests.runs.helpers import wait_for

METRIC_RECIPES = Path(__file__).with_name("recipes.toml")


@pytest.fixture
def metric_recipes(settings: Any, tmp_path: Path) -> Path:
    """The test children's recipes plus `metric_child`, for this process and its workers."""
    path = tmp_path / "recipes.toml"
    path.write_text(CHILD_RECIPES.read_text() + "\n" + METRIC_RECIPES.read_text())
    settings.TUNIX_RECIPES_FILE = str(path)
    return path


Samples = list[Sample]


def parse(text: str) -> Samples:
    """Every sample of a scrape, through prometheus_client's own parser."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample with this name and these labels (others ignored), or None."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


@dataclass(frozen=True)
class MetricsWorker:
    proc: subprocess.Popen[bytes]
    url: str
    worker_id: str


@pytest.fixture
def metrics_worker(
    spawn_worker: Any, metric_recipes: Path
) -> Iterator[Callable[..., MetricsWorker]]:
    """Start a real worker process serving its metrics on a free port; wait until it answers."""

    def start(*args: str, **env: str) -> MetricsWorker:
        port = free_port()
        worker_id = f"metrics-test-{port}"
        proc = spawn_worker(
            "--metrics-port",
            str(port),
            "--metrics-addr",
            "127.0.0.1",
            "--worker-id",
            worker_id,
            "--poll-interval",
            "0.05",
            *args,
            TUNIX_RECIPES_FILE=str(metric_recipes),
            **env,
        )
        url = f"http://127.0.0.1:{port}/metrics"

        def answers() -> bool:
            assert proc.poll() is None, "the worker exited"
            try:
                httpx.get(url, timeout=1)
            except httpx.TransportError:
                return False
            return True

        wait_for(answers, timeout=30, interval=0.1)
        return MetricsWorker(proc=proc, url=url, worker_id=worker_id)

    yield start
