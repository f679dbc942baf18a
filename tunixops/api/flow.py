"""ASGI flow control under daphne: wait for a slow client instead of buffering without limit.

Daphne's `send` hands each body chunk straight to Twisted's `transport.write` and returns at once,
so an application that streams faster than its client reads moves everything into the transport's
user-space buffer: the web process grows by the response's size. Twisted has the mechanism to push
back, a streaming producer registered on the request: the transport calls `pauseProducing()` when
its buffer passes 64 KiB and `resumeProducing()` once it has drained.

`Flow` is that producer, one per streamed response, and the only place that knows daphne's
request object. It is used by the live-log stream (runs/live/stream.py), which also drops a client
that stops reading, and by `with_backpressure`, which wraps every other streamed response
(artifact downloads, step zips, dataset exports). It finds daphne's request as the first argument
of the `send` partial daphne 4.x passes (`functools.partial(server.handle_reply, protocol)`); under
any other server, or if that shape changes, it never waits.
"""

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from twisted.web import http as twisted_http

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def twisted_request(send: Send) -> twisted_http.Request | None:
    args = getattr(send, "args", ())
    request = args[0] if args else None
    return request if isinstance(request, twisted_http.Request) else None


class Flow:
    """A Twisted push producer whose only product is permission to write more.

    Twisted calls it from the reactor, which daphne runs on the asyncio loop, so the event is
    always touched from the loop's thread. Without daphne's request it is always writable.
    """

    def __init__(self, send: Send) -> None:
        self._request = twisted_request(send)
        self._writable = asyncio.Event()
        self._writable.set()
        self.stopped = False
        self._registered = False

    def attach(self) -> None:
        """Register as the request's producer (once; not if another producer holds it)."""
        request = self._request
        if self._registered or request is None or request.producer is not None:
            return
        # A pipelined earlier response may have left the transport over its limit already.
        if getattr(request.channel, "_waitingForTransport", False):
            self._writable.clear()
        request.registerProducer(self, True)  # type: ignore[no-untyped-call]
        self._registered = True

    # IPushProducer, called by Twisted
    def pauseProducing(self) -> None:
        self._writable.clear()

    def resumeProducing(self) -> None:
        self._writable.set()

    def stopProducing(self) -> None:
        # The connection is gone; daphne drops further sends.
        self.stopped = True
        self._writable.set()

    @property
    def writable_now(self) -> bool:
        """Whether a write now would go out without waiting for the client."""
        return self._writable.is_set()

    async def writable(self, timeout: float | None = None) -> bool:
        """Wait until the client's socket can take more; False if `timeout` passed first."""
        if self._writable.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._writable.wait()
        except TimeoutError:
            return False
        return True

    def write_chunk(self, data: bytes) -> bool:
        """Send one body chunk of this chunked response straight to the socket; False when that is
        not possible (the caller then sends it through ASGI as usual).

        For a broadcast to thousands of streams: Twisted would buffer the bytes, register the
        socket with the event loop and send at the next turn, two epoll_ctl calls per stream and
        most of the cost of a fan-out. When nothing is buffered for the connection, one `send()`
        does the same; what the socket does not take goes to Twisted's buffer, in order.
        """
        request = self._request
        if (
            request is None
            or not data
            or not request.startedWriting
            or not request.chunked
            or request.finished
            or request._disconnected
        ):
            return False
        transport: Any = request.channel.transport if request.channel is not None else None
        sock = getattr(transport, "socket", None)
        if (
            sock is None
            or getattr(transport, "TLS", False)
            or not transport.connected
            or transport.disconnecting
            or len(transport.dataBuffer) > transport.offset
            or transport._tempDataLen
        ):
            return False
        framed = b"%x\r\n%b\r\n" % (len(data), data)
        try:
            sent = sock.send(framed)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Twisted finds out about the broken connection through its own write.
            return False
        request.sentLength += len(data)
        if sent < len(framed):
            transport.write(framed[sent:])
        return True

    def release(self) -> None:
        request = self._request
        self._registered = False
        # After the connection is lost Twisted has already dropped the channel and the producer.
        if (
            request is not None
            and getattr(request, "channel", None) is not None
            and request.producer is self
        ):
            request.unregisterProducer()  # type: ignore[no-untyped-call]

    def abort(self) -> None:
        """Drop the connection without flushing what is buffered for it."""
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()


def with_backpressure(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI application so its streamed HTTP responses wait for the client to keep up."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        flow = Flow(send)

        async def paced(message: Message) -> None:
            if message.get("type") != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                flow.release()
                await send(message)
            else:
                flow.attach()
                await send(message)
                if not flow.stopped:
                    await flow.writable()

        try:
            await app(scope, receive, paced)
        finally:
            flow.release()

    return application
