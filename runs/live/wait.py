"""`mode=sync`: wait for a run to end on the event loop, holding no thread and no connection.

The view enqueues the run and answers 202 with the run as it is (the handshake); this
continuation then waits for the same wake-ups the live log uses (the hub's LISTEN connection, or
its poll), and answers with `render`'s status and body once the run is terminal or the time is up.
If the client leaves meanwhile, the wait ends at once.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import ClassVar

from runs.live.handoff import Continuation, until_disconnect, without_length
from runs.live.hub import get_hub
from runs.live.limits import Ticket
from tunixops.api.flow import Message, Receive, Send

log = logging.getLogger(__name__)


class SyncWait(Continuation):
    handshake_status: ClassVar[int] = 202

    def __init__(
        self,
        run_id: uuid.UUID,
        timeout: float,
        render: Callable[[uuid.UUID], tuple[int, bytes]],
        ticket: Ticket | None = None,
    ) -> None:
        self.run_id = run_id
        self.timeout = timeout
        # Reads the run and answers (status, JSON body); runs on the hub's reader threads.
        self.render = render
        self.ticket = ticket

    async def respond(self, held: list[Message], receive: Receive, send: Send) -> None:
        hub = get_hub()
        waiting = asyncio.create_task(hub.wait_terminal(self.run_id, self.timeout))
        leaving = asyncio.create_task(until_disconnect(receive))
        try:
            await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, leaving):
                task.cancel()
            await asyncio.wait({waiting, leaving})
        if not leaving.cancelled():
            return
        failure = None if waiting.cancelled() else waiting.exception()
        if failure is not None:
            log.warning("run %s: a sync wait stopped early: %s", self.run_id, failure)
        try:
            status, body = await hub.run_db(self.render, self.run_id)
        except Exception:
            # The handshake is a documented answer too: the run as it was when enqueued.
            log.exception("run %s: reading the run after a sync wait failed", self.run_id)
            for message in held:
                await send(message)
            return
        headers = [*without_length(held[0]), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
