"""Django answers the handshake, then the event loop alone carries on: streams and waits.

`Handoff` wraps Django's ASGI app on the routes that may take long (a run's live log, a
`mode=sync` enqueue). The DRF view does what any request does (authentication, 404, validation,
quotas, JSON errors) and, when all is well, leaves a `Continuation` in the ASGI scope through
`hand_off()` and answers with the continuation's `handshake_status`. Django then finishes the
request, which releases its thread and returns its database connection to the pool, and only
then does the continuation run, from the event loop, with the handshake's response held back.
"""

from collections.abc import Mapping
from typing import ClassVar

from django.http import HttpRequest

from runs.live.limits import Ticket
from tunixops.api.flow import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "tunixops.handoff"


class Continuation:
    """What runs once Django has answered `handshake_status`; it owns a quota `ticket`."""

    handshake_status: ClassVar[int] = 200
    ticket: Ticket | None = None

    async def respond(self, held: list[Message], receive: Receive, send: Send) -> None:
        """Answer the client; `held` is the handshake's response (start, then body messages)."""
        raise NotImplementedError

    def release(self) -> None:
        if self.ticket is not None:
            self.ticket.release()


class _Slot:
    continuation: Continuation | None = None


def hand_off(request: HttpRequest, continuation: Continuation) -> bool:
    """Ask `Handoff` to continue after this response; False when not served through it."""
    scope = getattr(request, "scope", None)
    slot = scope.get(SCOPE_KEY) if isinstance(scope, Mapping) else None
    if not isinstance(slot, _Slot):
        return False
    slot.continuation = continuation
    return True


def without_length(start: Message) -> list[tuple[bytes, bytes]]:
    """The handshake's headers minus its Content-Length, for an answer with another body."""
    return [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Handoff:
    """ASGI wrapper: Django answers the handshake, then the continuation answers the client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot = _Slot()
        held: list[Message] = []

        async def hold_handshake(message: Message) -> None:
            going_on = slot.continuation
            starting = (
                going_on is not None
                and message["type"] == "http.response.start"
                and message["status"] == going_on.handshake_status
            )
            if going_on is not None and (held or starting):
                held.append(message)
            else:
                await send(message)

        try:
            await self.app({**scope, SCOPE_KEY: slot}, receive, hold_handshake)
            if slot.continuation is not None and held:
                await slot.continuation.respond(held, receive, send)
        finally:
            if slot.continuation is not None:
                slot.continuation.release()
