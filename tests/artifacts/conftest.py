import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

from runs.models import Run
from tests.artifacts.servers import Daphne
from tests.conftest import database_url

PutFile = Callable[..., Path]


@pytest.fixture
def put_file(artifact_root: Path) -> PutFile:
    """Write a real file under a run's directory: `put_file(run, "a/b.bin", b"data")`, or a
    sparse file of `size` bytes that costs no disk."""

    def put(run: Run, name: str, data: bytes | None = None, *, size: int | None = None) -> Path:
        from django.conf import settings

        path = Path(settings.TUNIX_ARTIFACT_ROOT) / str(run.pk) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            with path.open("wb") as handle:
                handle.truncate(size)
        else:
            path.write_bytes(data if data is not None else os.urandom(1000))
        return path

    return put


@pytest.fixture
def token(alice: Any) -> str:
    return str(Token.objects.get_or_create(user=alice)[0].key)


def daphne_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=database_url(),
        SECRET_KEY="test-only",
        DEBUG="false",
        TUNIX_ARTIFACT_ROOT=str(root),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def live_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live-artifacts")


@pytest.fixture(scope="module")
def daphne(
    django_db_setup: Any, live_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daphne]:
    """A real daphne serving tunixops.asgi against the test database, for the whole module."""
    server = Daphne(env=daphne_env(live_root), workdir=tmp_path_factory.mktemp("daphne"))
    with server:
        yield server


@pytest.fixture
def on_live_root(settings: Any, live_root: Path) -> Path:
    """Point this test's process at the files the module's daphne serves."""
    settings.TUNIX_ARTIFACT_ROOT = live_root
    return live_root
