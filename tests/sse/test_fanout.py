"""Broadcast fan-out: the streams of one run share one reader and get the very same bytes."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runs.models import RunStatus
from runs.state_machine import transition
from tests.sse.conftest import append, daphne
from tests.sse.rawclient import OpenStream, client_loop
from tests.sse.sseclient import parse_events

pytestmark = pytest.mark.django_db(transaction=True)

WAVE = 250


def test_five_hundred_subscribers_of_one_run_receive_identical_byte_streams(
    tmp_path: Path, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    append(run.pk, "before 1\n", "before 2\n")
    # No heartbeats (they carry the time), one user may open them all, and a busy machine makes
    # no handshake wait for a pooled connection long enough to be refused (a test of its own).
    with (
        daphne(
            tmp_path,
            TUNIX_SSE_MAX_STREAMS_PER_USER="1000",
            TUNIX_SSE_HEARTBEAT_SECONDS="600",
            TUNIX_DB_POOL_TIMEOUT="60",
        ) as server,
        client_loop() as clients,
    ):
        host, port = server.url.removeprefix("http://").split(":")
        path = f"/api/tunix/runs/{run.pk}/logs"

        async def open_wave() -> list[OpenStream]:
            opened: list[OpenStream] = []
            for _ in range(0, WAVE, 50):
                batch = [OpenStream().start(host, int(port), path, token) for _ in range(50)]
                await asyncio.wait_for(asyncio.gather(*(s.headed.wait() for s in batch)), 60)
                opened += batch
            return opened

        async def until_closed(streams: list[OpenStream]) -> None:
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams if s.task)), 60)

        streams: list[OpenStream] = []
        # The second wave starts behind the shared reader: it catches up on its own, then joins
        # it while lines keep coming.
        for wave in range(2):
            streams += clients.run(open_wave())
            for batch in range(5):
                append(run.pk, *(f"wave {wave} batch {batch} line {i}\n" for i in range(3)))
                clients.run(asyncio.sleep(0.05))
        transition(run.pk, RunStatus.COMPLETED, exit_code=0)
        clients.run(until_closed(streams))
    assert [s.status for s in streams] == [200] * 2 * WAVE
    first = streams[0].body
    assert all(s.body == first for s in streams)
    events = list(parse_events(first.decode().splitlines()))
    assert [e.event for e in events] == ["status"] + ["log"] * 32 + ["status"]
    assert [e.seq for e in events[1:-1]] == list(range(1, 33))
    assert events[-1].json()["status"] == RunStatus.COMPLETED
