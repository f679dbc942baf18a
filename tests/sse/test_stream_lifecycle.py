"""What an open stream holds, driven in-process through the ASGI interface."""

import asyncio
from typing import Any

import pytest

from runs.live.hub import close_pool, get_hub
from runs.live.stream import StreamStart, stream_response
from runs.models import RunStatus
from tests.sse.conftest import append

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_client_that_disconnects_frees_its_stream_at_once(make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    append(run.pk, "hello\n")
    sent: list[dict[str, Any]] = []

    async def scenario() -> tuple[int, int]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        first_log = asyncio.Event()

        async def send(message: Any) -> None:
            sent.append(message)
            if b"event: log" in message.get("body", b""):
                first_log.set()

        serving = asyncio.create_task(stream_response(StreamStart(run.pk, 0), [], inbox.get, send))
        await asyncio.wait_for(first_log.wait(), 10)
        open_before = get_hub().open_streams
        await inbox.put({"type": "http.disconnect"})
        # No waiting for a next event or heartbeat (15 s by default): it ends now.
        await asyncio.wait_for(serving, 1)
        return open_before, get_hub().open_streams

    try:
        open_before, open_after = asyncio.run(scenario())
    finally:
        close_pool()
    assert (open_before, open_after) == (1, 0)
    # Nothing is written to a connection that is gone.
    assert sent[-1].get("more_body") is True
