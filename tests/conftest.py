import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs.models import Run, RunStatus


@pytest.fixture(autouse=True)
def artifact_root(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.TUNIX_ARTIFACT_ROOT = root
    return root


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="alice", password="alice-password-1")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="bob", password="bob-password-1")


@pytest.fixture
def api(alice: Any) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=alice)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def make_run(alice: Any) -> Any:
    def make(status: str = RunStatus.PENDING, **fields: Any) -> Run:
        fields.setdefault("recipe", "tiny_sft")
        fields.setdefault("timeout_seconds", 600)
        fields.setdefault("config", {"max_steps": 5})
        fields.setdefault("created_by", alice)
        return Run.objects.create(status=status, **fields)

    return make


def needs_postgres() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)"
    )


CHILD_RECIPES = Path(__file__).parent / "children" / "recipes.toml"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def child_recipes(settings: Any) -> Path:
    settings.TUNIX_RECIPES_FILE = str(CHILD_RECIPES)
    return CHILD_RECIPES


def database_url() -> str:
    """The URL of the database the tests run against, for processes the tests start."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def process_env(artifact_root: Path, child_recipes: Path) -> dict[str, str]:
    """Environment for a worker or server process sharing this test's database and files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=database_url(),
        SECRET_KEY="test-only",
        TUNIX_ARTIFACT_ROOT=str(artifact_root),
        TUNIX_RECIPES_FILE=str(child_recipes),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def spawn_worker(process_env: dict[str, str]) -> Iterator[Any]:
    """Start real `manage.py tunix_worker` processes; all are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "tunix_worker", *args],
            env={**process_env, **env},
            cwd=REPO,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
