"""What one process holds whatever the load: per-user stream and sync-wait caps, sync waits
that hold no connection, and a saturated database pool answering 503 instead of 500."""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from rest_framework.authtoken.models import Token

from runs.models import Run, RunStatus
from runs.state_machine import transition
from tests.conftest import database_url
from tests.runs.helpers import wait_for
from tests.sse.conftest import daphne
from tests.sse.rawclient import OpenStream, client_loop, request
from tests.sse.sseclient import auth

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def test_past_the_per_user_cap_a_stream_is_a_429_and_closing_one_frees_its_place(
    tmp_path: Path, token: str, bob: Any, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    path = f"/api/tunix/runs/{run.pk}/logs"
    with (
        daphne(tmp_path, TUNIX_SSE_MAX_STREAMS_PER_USER="2") as server,
        client_loop() as clients,
        httpx.Client(timeout=10) as client,
    ):
        host, port = server.url.removeprefix("http://").split(":")

        async def open_two() -> list[OpenStream]:
            streams = [OpenStream().start(host, int(port), path, token) for _ in range(2)]
            await asyncio.wait_for(asyncio.gather(*(s.headed.wait() for s in streams)), 30)
            return streams

        streams = clients.run(open_two())
        assert [s.status for s in streams] == [200, 200]
        refused = client.get(server.url + path, headers=auth(token))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert int(refused.headers["Retry-After"]) > 0
        # Another user has places of their own.
        others = str(Token.objects.create(user=bob).key)
        with client.stream("GET", server.url + path, headers=auth(others)) as response:
            assert response.status_code == 200
        streams[0].close()

        def opens() -> bool:
            with client.stream("GET", server.url + path, headers=auth(token)) as response:
                return response.status_code == 200

        wait_for(opens, timeout=10)


def pooled_connections(*, waiting_for_a_lock: bool = False) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
    if waiting_for_a_lock:
        query += " AND wait_event_type = 'Lock'"
    with connection.cursor() as cursor:
        cursor.execute(query, [connection.settings_dict["NAME"], "tunixops-web"])
        return int(cursor.fetchone()[0])


def test_sync_waits_hold_no_connection_and_answer_when_their_run_ends(
    tmp_path: Path, token: str
) -> None:
    enqueue = "/api/tunix/run?mode=sync&wait_seconds=60"
    body = json.dumps({"recipe": "tiny_sft", "config": {"max_steps": 5}}).encode()
    # Ten waits on a pool of three connections (one kept by the log reader): each wait that held
    # a connection would leave the others none.
    with (
        daphne(
            tmp_path,
            TUNIX_SYNC_WAITS_PER_USER="10",
            TUNIX_DB_POOL_MAX="3",
            TUNIX_SSE_DB_THREADS="1",
            TUNIX_DB_POOL_TIMEOUT="1",
        ) as server,
        client_loop() as clients,
    ):
        host, port = server.url.removeprefix("http://").split(":")

        async def enqueue_one() -> Any:
            return await request(host, int(port), "POST", enqueue, token, body=body, timeout=90)

        waits = [asyncio.run_coroutine_threadsafe(enqueue_one(), clients.loop) for _ in range(10)]
        wait_for(lambda: Run.objects.count() == 10, timeout=30)
        # Every wait is on the event loop now: one more is refused, and enqueues nothing.
        time.sleep(0.5)
        refused = clients.run(enqueue_one())
        assert refused.status == 429
        assert json.loads(refused.body)["error"]["code"] == "too_many_sync_waits"
        assert Run.objects.count() == 10
        assert pooled_connections() <= 3
        for run in Run.objects.all():
            transition(run.pk, RunStatus.CANCELLED)
        answers = [w.result(30) for w in waits]
    assert [a.status for a in answers] == [200] * 10
    assert {json.loads(a.body)["status"] for a in answers} == {RunStatus.CANCELLED}


def test_a_saturated_pool_answers_503_with_retry_after_never_500(
    tmp_path: Path, token: str
) -> None:
    session = SessionStore()
    session["seen"] = True
    session.create()
    with daphne(
        tmp_path,
        TUNIX_DB_POOL_MAX="2",
        TUNIX_DB_POOL_MIN="1",
        TUNIX_SSE_DB_THREADS="1",
        TUNIX_DB_POOL_TIMEOUT="0.5",
    ) as server:
        runs = f"{server.url}/api/tunix/runs"
        with (
            psycopg.connect(database_url()) as locker,
            ThreadPoolExecutor(max_workers=2) as pool,
            httpx.Client(timeout=30) as client,
        ):
            # Token checks wait behind this lock, each holding one of the two pooled connections.
            locker.execute("LOCK TABLE authtoken_token IN ACCESS EXCLUSIVE MODE")
            try:
                blocked = [pool.submit(client.get, runs, headers=auth(token)) for _ in range(2)]
                wait_for(lambda: pooled_connections(waiting_for_a_lock=True) == 2)
                busy = client.get(runs, headers=auth(token))
                page = client.get(
                    f"{server.url}/runs/", headers={"Cookie": f"sessionid={session.session_key}"}
                )
            finally:
                locker.rollback()
            assert [b.result(30).status_code for b in blocked] == [200, 200]
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "database_busy"
    assert int(busy.headers["Retry-After"]) > 0
    assert page.status_code == 503
    assert page.headers["Content-Type"].startswith("text/html")
    assert "busy" in page.text
    assert int(page.headers["Retry-After"]) > 0
