"""A real worker runs a real child while a real SSE client watches over daphne."""

import re
from typing import Any

import httpx
import pytest

from tests.runs.helpers import enqueue_child
from tests.sse.conftest import Server
from tests.sse.sseclient import auth, parse_events, stream_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]

STAMPED = re.compile(r"line (\d+) t=([0-9.]+)")


def test_a_childs_lines_reach_the_client_while_it_runs(
    server: Server, client: httpx.Client, token: str, alice: Any, spawn_worker: Any
) -> None:
    run = enqueue_child(alice, lines=40, rate=20, stamp=True)
    statuses: list[str] = []
    received: list[tuple[int, float, float]] = []
    with client.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response:
        events = parse_events(response.iter_lines())
        first = next(events)
        statuses.append(first.json()["status"])
        spawn_worker("--once", "--poll-interval", "0.1")
        for event in events:
            if event.event == "status":
                statuses.append(event.json()["status"])
            elif event.event == "log" and event.json()["stream"] == "stdout":
                for number, stamp in STAMPED.findall(event.json()["chunk"]):
                    received.append((int(number), float(stamp), event.received))
    assert statuses == ["pending", "running", "completed"]
    assert [number for number, _, _ in received] == list(range(1, 41))
    # The child takes two seconds to print them; the first lines arrive long before it is done.
    assert received[0][2] < received[-1][1]
    latencies = sorted(at - stamp for _, stamp, at in received)
    assert latencies[len(latencies) // 2] < 0.5, latencies
