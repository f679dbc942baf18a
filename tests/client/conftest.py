"""A real daphne (sharing the test database and artifact directory) and the `tunixops` command
run in-process against it; workers are real `tunix_worker` processes (spawn_worker)."""

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

from runs.models import Run
from tests.conftest import CHILD_RECIPES
from tests.metrics.conftest import METRIC_RECIPES
from tests.sse.conftest import Server, daphne
from tunixops_client import Client
from tunixops_client.cli import main
from tunixops_client.terminal import Console

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-artifacts")


@pytest.fixture
def artifact_root(settings: Any, shared_root: Path) -> Path:
    """The module's server reads artifacts here, so workers and tests write here too."""
    settings.TUNIX_ARTIFACT_ROOT = shared_root
    return shared_root


@pytest.fixture(scope="module")
def recipes_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test children's recipes plus `metric_child` (tests/metrics), for server and workers."""
    path = tmp_path_factory.mktemp("recipes") / "recipes.toml"
    path.write_text(CHILD_RECIPES.read_text() + "\n" + METRIC_RECIPES.read_text())
    return path


@pytest.fixture
def child_recipes(settings: Any, recipes_file: Path) -> Path:
    settings.TUNIX_RECIPES_FILE = str(recipes_file)
    return recipes_file


@pytest.fixture(scope="module")
def server(
    django_db_setup: Any,
    tmp_path_factory: pytest.TempPathFactory,
    shared_root: Path,
    recipes_file: Path,
) -> Iterator[Server]:
    with daphne(
        tmp_path_factory.mktemp("daphne"),
        TUNIX_ARTIFACT_ROOT=str(shared_root),
        TUNIX_RECIPES_FILE=str(recipes_file),
    ) as running:
        yield running


@pytest.fixture
def token(alice: Any) -> str:
    return str(Token.objects.get_or_create(user=alice)[0].key)


@pytest.fixture
def remote(server: Server, token: str) -> Iterator[Client]:
    with Client(server.url, token, reconnect_for=60) as client:
        yield client


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read or write the real user's config; no server or token from the environment."""
    path = tmp_path / "config" / "tunixops" / "config.json"
    monkeypatch.setenv("TUNIXOPS_CONFIG", str(path))
    monkeypatch.delenv("TUNIXOPS_URL", raising=False)
    monkeypatch.delenv("TUNIXOPS_TOKEN", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return path


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[Any]:
        import json

        return [json.loads(line) for line in self.out.splitlines() if line]


Cli = Callable[..., Result]


@pytest.fixture
def cli(server: Server, token: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`cli("status", run_id)`: the command's exit status and what it printed."""
    monkeypatch.setenv("TUNIXOPS_URL", server.url)
    monkeypatch.setenv("TUNIXOPS_TOKEN", token)

    def run(*argv: str, tty: bool = False) -> Result:
        out, err = (Tty(), Tty()) if tty else (io.StringIO(), io.StringIO())
        code = main(list(argv), console=Console(out=out, err=err))
        return Result(code, out.getvalue(), err.getvalue())

    return run


def expected_lines(n: int) -> str:
    return "".join(f"line {i}\n" for i in range(1, n + 1))


def run_dir(root: Path, run: Run) -> Path:
    path = root / str(run.pk)
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_without_pytest() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
