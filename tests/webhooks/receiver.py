"""A real HTTP receiver for webhook tests: a threaded server on 127.0.0.1 that records each POST.

It can answer late (`delay`), with another status (`status`), and be stopped and started again
on the same port, as a receiver that goes down for a while does.
"""

import json
import threading
import time
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.artifacts.servers import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: Message
    body: bytes
    at: float

    @property
    def delivery_id(self) -> str:
        return str(self.headers["X-TunixOps-Delivery"])

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, *, port: int | None = None, delay: float = 0.0, status: int = 200) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.status = status
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, self.headers, body, time.monotonic())
                    )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def ids(self) -> list[str]:
        return [r.delivery_id for r in self.snapshot()]
