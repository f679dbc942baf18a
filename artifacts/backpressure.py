"""ASGI middleware that makes a streamed response wait for a slow client under daphne.

Daphne's `send` hands each body chunk straight to Twisted's `transport.write` and returns at once,
so an application that streams a large file moves it all into the transport's user-space buffer
as fast as it can read it: the web process grows by the file's size whenever the client is slower
than the disk. Twisted has the mechanism to push back, a streaming producer registered on the
request: the transport calls `pauseProducing()` when its buffer passes 64 KiB and
`resumeProducing()` once it has drained. This middleware registers such a producer for each
streamed response and, after every body chunk, waits until the transport is writable again, so at
most one chunk plus Twisted's buffer is held per connection, whatever the file size or the
client's speed.

It finds daphne's request object as the first argument of the `send` partial that daphne 4.x
passes (`functools.partial(server.handle_reply, protocol)`); under any other server, or if that
shape changes, it passes messages through untouched.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TwistedRequest(Protocol):
    """What this module uses of `twisted.web.http.Request`."""

    producer: object | None

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


class DrainWaiter:
    """A Twisted push producer (IPushProducer) whose only product is permission to write more.

    Twisted calls it from the reactor, which daphne runs on the asyncio loop, so the event is
    always touched from the loop's thread.
    """

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.stopped = False

    def pauseProducing(self) -> None:
        self._writable.clear()

    def resumeProducing(self) -> None:
        self._writable.set()

    def stopProducing(self) -> None:
        # The connection is gone; daphne drops further sends and Django cancels the response.
        self.stopped = True
        self._writable.set()

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    async def wait(self) -> None:
        await self._writable.wait()


def twisted_request(send: Send) -> _TwistedRequest | None:
    args = getattr(send, "args", ())
    request = args[0] if args else None
    if callable(getattr(request, "registerProducer", None)) and hasattr(request, "producer"):
        return request
    return None


class _ResponseSender:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._request = twisted_request(send)
        self._waiter: DrainWaiter | None = None

    def _attach(self) -> None:
        request = self._request
        if request is None or request.producer is not None:
            return
        waiter = DrainWaiter()
        # A pipelined earlier response may have left the transport over its limit already.
        channel = getattr(request, "channel", None)
        if getattr(channel, "_waitingForTransport", False):
            waiter.pauseProducing()
        request.registerProducer(waiter, True)
        self._waiter = waiter

    def detach(self) -> None:
        waiter, self._waiter = self._waiter, None
        request = self._request
        # After the connection is lost Twisted has already dropped the channel and the producer.
        if waiter is None or request is None or getattr(request, "channel", None) is None:
            return
        if request.producer is waiter:
            request.unregisterProducer()

    async def __call__(self, message: Message) -> None:
        if message.get("type") != "http.response.body":
            await self._send(message)
            return
        if not message.get("more_body", False):
            self.detach()
            await self._send(message)
            return
        if self._waiter is None:
            self._attach()
        await self._send(message)
        if self._waiter is not None and not self._waiter.stopped:
            await self._waiter.wait()


def with_backpressure(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI application so its HTTP responses wait for the client to keep up."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        sender = _ResponseSender(send)
        try:
            await app(scope, receive, sender)
        finally:
            sender.detach()

    return application
