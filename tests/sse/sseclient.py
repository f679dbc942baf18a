"""A small Server-Sent Events client over httpx, for the tests and the bench scripts."""

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None
    received: float = field(default=0.0, compare=False)

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def seq(self) -> int:
        return int(self.json()["seq"])


def parse_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events as a browser's EventSource sees them, including its last-event-id rule."""
    name, last_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(name, "\n".join(data), last_id, time.time())
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
        elif key == "id":
            last_id = value


def stream_url(base: str, run_id: Any) -> str:
    return f"{base}/api/tunix/runs/{run_id}/logs"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def read_all(
    client: httpx.Client, url: str, *, headers: dict[str, str], params: dict[str, Any] | None = None
) -> list[SseEvent]:
    """Every event of a stream that ends by itself (a finished run)."""
    with client.stream("GET", url, headers=headers, params=params) as response:
        assert response.status_code == 200, response.read()
        return list(parse_events(response.iter_lines()))
