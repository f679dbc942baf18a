"""A real daphne server for the live-log tests, sharing the test database."""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import transaction
from django.db.models import Max
from rest_framework.authtoken.models import Token

from runs.live import notify
from runs.models import LogChunk
from tests.artifacts.servers import Daphne
from tests.conftest import database_url


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


@contextlib.contextmanager
def daphne(log_dir: Path, **env: str) -> Iterator[Server]:
    """`daphne tunixops.asgi:application` on a free loopback port; stopped on exit."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    environ.update(
        DATABASE_URL=database_url(),
        SECRET_KEY="test-only",
        TUNIX_SSE_HEARTBEAT_SECONDS="0.5",
        TUNIX_SSE_POLL_SECONDS="0.1",
        PYTHONUNBUFFERED="1",
    )
    environ.update(env)
    with Daphne(env=environ, workdir=log_dir) as server:
        yield Server(url=server.base_url, pid=server.pid, log=server.log)


@pytest.fixture(scope="module")
def server(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with daphne(tmp_path_factory.mktemp("daphne")) as running:
        yield running


@pytest.fixture
def token(alice: Any) -> str:
    return str(Token.objects.create(user=alice).key)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        yield http


def append(run_id: Any, *texts: str, stream: str = "stdout") -> int:
    """Add chunks exactly as the worker's log sink does: one transaction, then NOTIFY."""
    with transaction.atomic():
        last = LogChunk.objects.filter(run_id=run_id).aggregate(m=Max("seq"))["m"] or 0
        LogChunk.objects.bulk_create(
            LogChunk(run_id=run_id, seq=last + i, stream=stream, chunk=text)
            for i, text in enumerate(texts, 1)
        )
        new_last = last + len(texts)
        transaction.on_commit(lambda: notify.logs_appended(run_id, new_last))
    return new_last
