"""Minimal ASGI apps that stream a large body, for daphne in tests/artifacts/test_backpressure.py.

`plain` shows what daphne does on its own; `wrapped` is the same app behind
`tunixops.api.flow.with_backpressure`. Both reuse one chunk object, so any growth of the
server process is bytes queued for the client.
"""

from typing import Any

from tunixops.api.flow import Message, Receive, Scope, Send, with_backpressure

BODY_BYTES = 256 * 1024 * 1024
CHUNK = b"t" * (256 * 1024)


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await receive()
    size = BODY_BYTES
    for name, value in scope["headers"]:
        if name == b"x-body-bytes":
            size = int(value)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % size)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    sent = 0
    while sent < size:
        part = CHUNK[: size - sent]
        message: Message = {"type": "http.response.body", "body": part, "more_body": True}
        await send(message)
        sent += len(part)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


plain: Any = stream
wrapped: Any = with_backpressure(stream)
