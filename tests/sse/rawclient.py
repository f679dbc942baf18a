"""Many HTTP/1.1 connections from one asyncio loop: for tests that open hundreds of streams."""

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class RawResponse:
    status: int
    head: bytes
    body: bytes


def dechunk(data: bytes) -> bytes:
    """The body of a `Transfer-Encoding: chunked` response (complete or cut short)."""
    out = bytearray()
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    token: str,
    *,
    body: bytes = b"",
    timeout: float = 30.0,
) -> RawResponse:
    """One request on its own connection (`Connection: close`), read to the end."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Token {token}\r\n"
            f"Connection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    return parse(data)


def parse(data: bytes) -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    chunked = b"transfer-encoding: chunked" in head.lower()
    return RawResponse(status, head, dechunk(rest) if chunked else rest)


class OpenStream:
    """A live-log stream kept open: its status is known once the head arrived."""

    def __init__(self) -> None:
        self.status = 0
        self.data = b""
        self.headed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, host: str, port: int, path: str, token: str) -> None:
        reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Token {token}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
        )
        try:
            while chunk := await reader.read(65536):
                self.data += chunk
                if not self.status and b"\r\n\r\n" in self.data:
                    self.status = parse(self.data).status
                    self.headed.set()
        finally:
            if not self.status and self.data:
                self.status = parse(self.data).status
            self.headed.set()
            self.writer.close()

    def start(self, host: str, port: int, path: str, token: str) -> "OpenStream":
        self.task = asyncio.create_task(self.run(host, port, path, token))
        return self

    @property
    def body(self) -> bytes:
        return parse(self.data).body

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


class ClientLoop:
    """An event loop on a thread of its own for the clients, so that the test's own thread keeps
    Django's database connection (which may not cross threads) and writes as the worker would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def client_loop() -> Iterator[ClientLoop]:
    loop = ClientLoop()
    try:
        yield loop
    finally:
        loop.close()
