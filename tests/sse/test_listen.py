"""PostgreSQL delivery: one LISTEN connection per web process, and what happens when it drops."""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from runs.live.hub import LISTEN_APPLICATION_NAME
from runs.models import RunStatus
from tests.runs.helpers import wait_for
from tests.sse.conftest import Server, append, daphne
from tests.sse.sseclient import SseEvent, auth, parse_events, stream_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def listen_backends() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            [connection.settings_dict["NAME"], LISTEN_APPLICATION_NAME],
        )
        return [row[0] for row in cursor.fetchall()]


def next_log(events: Iterator[SseEvent]) -> SseEvent:
    return next(e for e in events if e.event == "log")


def test_notifications_deliver_without_waiting_for_the_poll(
    tmp_path: Path, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    with (
        daphne(tmp_path, TUNIX_SSE_POLL_SECONDS="60") as slow_poll,
        httpx.Client(timeout=10) as client,
        client.stream("GET", stream_url(slow_poll.url, run.pk), headers=auth(token)) as response,
    ):
        events = parse_events(response.iter_lines())
        next(events)
        wait_for(listen_backends)
        for i in range(1, 6):
            started = time.monotonic()
            append(run.pk, f"line {i}\n")
            assert next_log(events).seq == i
            assert time.monotonic() - started < 1.0


def test_one_listen_connection_serves_every_stream_of_a_process(
    server: Server, token: str, make_run: Any
) -> None:
    runs = [make_run(status=RunStatus.RUNNING) for _ in range(3)]
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=10))
        streams = []
        for run in runs * 2:
            response = stack.enter_context(
                client.stream("GET", stream_url(server.url, run.pk), headers=auth(token))
            )
            events = parse_events(response.iter_lines())
            next(events)
            streams.append((run, events))
        assert len(wait_for(listen_backends)) == 1
        for run in runs:
            append(run.pk, "hello\n")
        for _, events in streams:
            assert next_log(events).json()["chunk"] == "hello\n"


def test_streams_keep_flowing_when_postgresql_drops_the_listen_connection(
    server: Server, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response,
    ):
        events = parse_events(response.iter_lines())
        next(events)
        (old,) = wait_for(listen_backends)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [old])
        # Meanwhile the poll carries the lines.
        append(run.pk, "during\n")
        assert next_log(events).json()["chunk"] == "during\n"
        (new,) = wait_for(lambda: [pid for pid in listen_backends() if pid != old])
        append(run.pk, "after\n")
        assert next_log(events).json()["chunk"] == "after\n"
    assert new != old
