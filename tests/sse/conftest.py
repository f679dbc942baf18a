"""A real daphne server for the live-log tests, sharing the test database."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import transaction
from django.db.models import Max
from rest_framework.authtoken.models import Token

from runs import notify
from runs.models import LogChunk
from tests.conftest import REPO, database_url


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def daphne(log_dir: Path, **env: str) -> Iterator[Server]:
    """`daphne tunixops.asgi:application` on a free loopback port; stopped on exit."""
    port = free_port()
    log = log_dir / f"daphne-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    environ.update(
        DATABASE_URL=database_url(),
        SECRET_KEY="test-only",
        TUNIX_SSE_HEARTBEAT_SECONDS="0.5",
        TUNIX_SSE_POLL_SECONDS="0.1",
        PYTHONUNBUFFERED="1",
    )
    environ.update(env)
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "tunixops.asgi:application"],
            cwd=REPO,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(url=url, pid=proc.pid, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


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
