"""Restarts under load: the web server dies under its clients, PostgreSQL restarts mid-run."""

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from runs.models import LogChunk, RunStatus
from tests.runs.helpers import enqueue_child, log_text, status_of, wait_for
from tests.sse.conftest import daphne
from tests.sse.sseclient import SseEvent, auth, parse_events, read_all, stream_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def expected_lines(n: int) -> str:
    return "".join(f"line {i}\n" for i in range(1, n + 1))


def test_clients_resuming_after_a_web_server_crash_see_every_seq_once(
    alice: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    token = Token.objects.create(user=alice).key
    run = enqueue_child(alice, lines=300, rate=100)
    spawn_worker("--poll-interval", "0.1")
    received: list[SseEvent] = []
    with daphne(tmp_path) as first:
        wait_for(lambda: LogChunk.objects.filter(run=run).exists())
        broke = threading.Event()

        def follow() -> None:
            try:
                with (
                    httpx.Client(timeout=10) as client,
                    client.stream(
                        "GET", stream_url(first.url, run.pk), headers=auth(token)
                    ) as response,
                ):
                    for event in parse_events(response.iter_lines()):
                        received.append(event)
            except httpx.HTTPError:
                broke.set()

        reader = threading.Thread(target=follow)
        reader.start()
        wait_for(lambda: sum(e.event == "log" for e in received) >= 5)
        os.kill(first.pid, signal.SIGKILL)
        reader.join(15)
        assert broke.is_set(), "the stream should have been cut by the crash"
    assert status_of(run) == RunStatus.RUNNING, "the crash must happen mid-run"
    last_id = [e.id for e in received if e.event == "log"][-1]
    assert last_id is not None
    with daphne(tmp_path) as second, httpx.Client(timeout=30) as client:
        resumed = read_all(
            client,
            stream_url(second.url, run.pk),
            headers={**auth(token), "Last-Event-ID": last_id},
        )
    logs = [e for e in received + resumed if e.event == "log"]
    seqs = [e.seq for e in logs]
    assert seqs == list(range(1, len(seqs) + 1)), "every seq exactly once, in order"
    assert "".join(e.json()["chunk"] for e in logs if e.json()["stream"] == "stdout") == (
        expected_lines(300)
    )
    assert resumed[-1].event == "status" and resumed[-1].json()["status"] == "completed"


def _restart_postgres() -> None:
    versions = os.listdir("/etc/postgresql")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"],
        check=True,
        timeout=60,
    )


@pytest.mark.postgres
@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None
    or not os.path.isdir("/etc/postgresql")
    or os.geteuid() != 0,
    reason="needs a local PostgreSQL cluster this test may restart (pg_ctlcluster, root)",
)
@pytest.mark.slow
def test_a_postgres_restart_mid_run_loses_no_line(
    alice: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    token = Token.objects.create(user=alice).key
    run = enqueue_child(alice, lines=600, rate=100)
    spawn_worker("--poll-interval", "0.1")
    with daphne(tmp_path) as web:
        wait_for(lambda: "line 50\n" in log_text(run), timeout=20)
        _restart_postgres()
        connection.close()
        wait_for(lambda: status_of(run) == RunStatus.COMPLETED, timeout=90, interval=0.2)
        assert log_text(run, "stdout") == expected_lines(600)
        seqs = list(LogChunk.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1))
        with httpx.Client(timeout=30) as client:
            # The web process reconnects too: the API answers and a full replay is exact.
            status = client.get(f"{web.url}/api/tunix/runs/{run.pk}/status", headers=auth(token))
            assert status.status_code == 200 and status.json()["status"] == "completed"
            events = read_all(client, stream_url(web.url, run.pk), headers=auth(token))
    stdout = "".join(
        e.json()["chunk"] for e in events if e.event == "log" and e.json()["stream"] == "stdout"
    )
    assert stdout == expected_lines(600)
