"""GET /api/tunix/runs/{id}/logs against a real daphne server with a real SSE client."""

import contextlib
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from runs.models import RunStatus
from runs.state_machine import transition
from tests.sse.conftest import Server, append, daphne
from tests.sse.sseclient import SseEvent, auth, parse_events, read_all, stream_url

pytestmark = pytest.mark.django_db(transaction=True)


def logs_of(events: list[SseEvent]) -> list[int]:
    return [e.seq for e in events if e.event == "log"]


def next_of(events: Iterator[SseEvent], kind: str) -> SseEvent:
    return next(e for e in events if e.event == kind)


def without_heartbeats(events: list[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.event != "heartbeat"]


def test_lines_arrive_while_they_are_being_written(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    with client.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response:
        events = parse_events(response.iter_lines())
        assert next(events).json()["status"] == "running"
        for i in range(1, 6):
            append(run.pk, f"line {i}\n")
            event = next_of(events, "log")
            assert event.id == f"run-{run.pk}:{i}"
            assert event.json()["seq"] == i
            assert event.json()["stream"] == "stdout"
            assert event.json()["chunk"] == f"line {i}\n"
            assert event.json()["created_at"]
        transition(run.pk, RunStatus.COMPLETED, exit_code=0)
        rest = without_heartbeats(list(events))
    assert [e.event for e in rest] == ["status"]
    final = rest[0].json()
    assert final["status"] == "completed" and final["exit_code"] == 0 and final["finished_at"]


def test_it_starts_at_the_first_chunk_without_a_resume_point(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    append(run.pk, *(f"{i}\n" for i in range(1, 8)))
    events = read_all(client, stream_url(server.url, run.pk), headers=auth(token))
    assert logs_of(events) == [1, 2, 3, 4, 5, 6, 7]


def test_since_seq_starts_right_after_that_seq(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    append(run.pk, *(f"{i}\n" for i in range(1, 8)))
    url = stream_url(server.url, run.pk)
    assert logs_of(read_all(client, url, headers=auth(token), params={"since_seq": 4})) == [
        5,
        6,
        7,
    ]
    assert logs_of(read_all(client, url, headers=auth(token), params={"since_seq": 7})) == []


@pytest.mark.parametrize(
    ("last_event_id", "since_seq", "expected"),
    [
        ("run-{run}:4", None, [5, 6]),
        ("run-{run}:4", 1, [5, 6]),  # a browser's reconnect wins over the URL's since_seq
        ("3", None, [4, 5, 6]),  # a bare seq
        ("error", None, [1, 2, 3, 4, 5, 6]),  # the library's error id must not end the stream
        ("error", 2, [3, 4, 5, 6]),
        ("not an id", None, [1, 2, 3, 4, 5, 6]),
        ("run-{run}:x", None, [1, 2, 3, 4, 5, 6]),
        ("run-{other}:4", None, [1, 2, 3, 4, 5, 6]),  # another run's id
        ("99999999999999999999", None, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_a_last_event_id_resumes_and_a_malformed_one_never_ends_the_stream(
    server: Server,
    client: httpx.Client,
    token: str,
    make_run: Any,
    last_event_id: str,
    since_seq: int | None,
    expected: list[int],
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    append(run.pk, *(f"{i}\n" for i in range(1, 7)))
    header = last_event_id.format(run=run.pk, other=uuid.uuid4())
    params = {} if since_seq is None else {"since_seq": since_seq}
    events = read_all(
        client,
        stream_url(server.url, run.pk),
        headers={**auth(token), "Last-Event-ID": header},
        params=params,
    )
    assert logs_of(events) == expected
    assert all(e.id != "error" for e in events)
    assert events[-1].event == "status"


def test_the_lasteventid_parameter_resumes_like_the_header(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    append(run.pk, "a\n", "b\n", "c\n")
    params = {"lastEventId": f"run-{run.pk}:2"}
    events = read_all(client, stream_url(server.url, run.pk), headers=auth(token), params=params)
    assert logs_of(events) == [3]


def test_reconnecting_with_last_event_id_mid_run_is_gapless_and_duplicate_free(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    total = 400

    def write() -> None:
        try:
            written = 0
            while written < total:
                size = random.randint(1, 7)
                texts = [f"line {written + i}\n" for i in range(1, size + 1)][: total - written]
                written = append(run.pk, *texts)
                time.sleep(random.uniform(0, 0.01))
            transition(run.pk, RunStatus.COMPLETED, exit_code=0)
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[int] = []
    last_id: str | None = None
    connections = 0
    finished = False
    while not finished:
        connections += 1
        headers = auth(token) | ({"Last-Event-ID": last_id} if last_id else {})
        take = random.randint(5, 60)
        with client.stream("GET", stream_url(server.url, run.pk), headers=headers) as response:
            for event in parse_events(response.iter_lines()):
                if event.event == "log":
                    seen.append(event.seq)
                    last_id = event.id
                    take -= 1
                    if take == 0:
                        break  # drop the connection mid-stream, as a flaky network would
                elif event.event == "status" and event.json()["status"] == "completed":
                    finished = True
    writer.join(30)
    assert seen == list(range(1, total + 1))
    assert connections > 3


def test_twenty_concurrent_readers_each_see_every_seq_once_in_order(
    server: Server, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    readers = 20
    connected = threading.Barrier(readers + 1, timeout=30)
    results: dict[int, list[SseEvent]] = {}

    def read(index: int) -> None:
        with (
            httpx.Client(timeout=30) as http,
            http.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response,
        ):
            events = parse_events(response.iter_lines())
            first = next(events)
            connected.wait()
            results[index] = [first, *events]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for thread in threads:
        thread.start()
    connected.wait()
    total = 0
    for _ in range(60):
        total = append(run.pk, *(f"{total + i}\n" for i in range(1, random.randint(1, 9))))
        time.sleep(random.uniform(0, 0.005))
    transition(run.pk, RunStatus.COMPLETED, exit_code=0)
    for thread in threads:
        thread.join(30)
    assert len(results) == readers
    for events in results.values():
        assert logs_of(events) == list(range(1, total + 1))
        assert events[-1].json()["status"] == "completed"


def test_it_closes_after_the_terminal_status_once_every_chunk_is_sent(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.FAILED, exit_code=3, status_reason="exit code 3")
    append(run.pk, "one\n", "two\n", stream="stderr")
    events = without_heartbeats(
        read_all(client, stream_url(server.url, run.pk), headers=auth(token))
    )
    # A finished run has no status before its logs: a terminal status is always the last event.
    assert [e.event for e in events] == ["log", "log", "status"]
    assert events[-1].json() == {
        "status": "failed",
        "status_reason": "exit code 3",
        "exit_code": 3,
        "finished_at": None,
    }


def test_it_sends_every_status_change_as_it_happens(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.PENDING)
    with client.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response:
        events = parse_events(response.iter_lines())
        assert next_of(events, "status").json()["status"] == "pending"
        transition(run.pk, RunStatus.RUNNING)
        assert next_of(events, "status").json()["status"] == "running"
        transition(run.pk, RunStatus.CANCEL_REQUESTED, reason="by alice")
        changed = next_of(events, "status").json()
        assert (changed["status"], changed["status_reason"]) == ("cancel_requested", "by alice")
        append(run.pk, "[tunixops] terminating\n", stream="stderr")
        transition(run.pk, RunStatus.CANCELLED)
        rest = without_heartbeats(list(events))
    assert [e.event for e in rest] == ["log", "status"]
    assert rest[-1].json()["status"] == "cancelled"


def test_an_idle_stream_sends_heartbeats(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    started = time.monotonic()
    with client.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response:
        events = parse_events(response.iter_lines())
        next_of(events, "status")
        beats = [next_of(events, "heartbeat") for _ in range(3)]
    # TUNIX_SSE_HEARTBEAT_SECONDS is 0.5 for this server.
    assert time.monotonic() - started < 5
    assert all(b.json()["time"] and b.id is None for b in beats)


def test_it_answers_with_event_stream_headers(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    headers = {**auth(token), "Accept": "text/event-stream"}
    with client.stream("GET", stream_url(server.url, run.pk), headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-length" not in response.headers


@pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_or_malformed_run_is_404_before_any_stream(
    server: Server, client: httpx.Client, token: str, run_id: str
) -> None:
    headers = {**auth(token), "Accept": "text/event-stream"}
    response = client.get(stream_url(server.url, run_id), headers=headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_it_answers_401_without_credentials(
    server: Server, client: httpx.Client, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    response = client.get(stream_url(server.url, run.pk), headers={"Accept": "text/event-stream"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    bad = client.get(stream_url(server.url, run.pk), headers=auth("0" * 40))
    assert bad.status_code == 401


@pytest.mark.parametrize("since_seq", ["-1", "x", "2147483648"])
def test_a_bad_since_seq_is_a_400(
    server: Server, client: httpx.Client, token: str, make_run: Any, since_seq: str
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    response = client.get(
        stream_url(server.url, run.pk), headers=auth(token), params={"since_seq": since_seq}
    )
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["since_seq"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_client_that_stops_reading_does_not_grow_server_memory(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    block = ("y" * 1023 + "\n") * 64
    for _ in range(8):
        append(run.pk, *([block] * 64))  # 32 MiB of log in all
    before = rss_kib(server.pid)
    host, port = server.url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    try:
        stalled.sendall(
            f"GET /api/tunix/runs/{run.pk}/logs HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Token {token}\r\n\r\n".encode()
        )
        time.sleep(3)
        grown = rss_kib(server.pid) - before
        # Without backpressure the whole log would sit in Twisted's write buffer.
        assert grown < 10 * 1024, f"daphne grew by {grown} KiB"
        # The server still serves everyone else meanwhile.
        assert client.get(f"{server.url}/healthz").status_code == 200
    finally:
        stalled.close()
    events = read_all(client, stream_url(server.url, run.pk), headers=auth(token))
    assert logs_of(events) == list(range(1, 513))


def test_a_snapshot_then_a_stream_from_its_last_seq_misses_nothing(
    server: Server, client: httpx.Client, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    append(run.pk, "a\nb\n", "c\n")
    snapshot = client.get(
        f"{server.url}/api/tunix/runs/{run.pk}/logs/snapshot", headers=auth(token)
    ).json()
    assert [line["text"] for line in snapshot["lines"]] == ["a", "b", "c"]
    append(run.pk, "d\n")
    transition(run.pk, RunStatus.COMPLETED, exit_code=0)
    events = read_all(
        client,
        stream_url(server.url, run.pk),
        headers=auth(token),
        params={"since_seq": snapshot["last_seq"]},
    )
    assert [e.json()["chunk"] for e in events if e.event == "log"] == ["d\n"]


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads")


def test_open_streams_hold_no_thread_each(server: Server, token: str, make_run: Any) -> None:
    run = make_run(status=RunStatus.RUNNING)
    host, port = server.url.removeprefix("http://").split(":")
    request = (
        f"GET /api/tunix/runs/{run.pk}/logs HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Token {token}\r\n\r\n"
    ).encode()
    sockets: list[socket.socket] = []

    def open_one() -> None:
        sock = socket.create_connection((host, int(port)), timeout=10)
        sockets.append(sock)
        sock.sendall(request)
        received = b""
        while b"event: status" not in received:
            received += sock.recv(65536)

    try:
        open_one()
        before = threads_of(server.pid)
        for _ in range(40):
            open_one()
        # The read pool (TUNIX_SSE_DB_THREADS) may still be filling up; nothing else grows.
        assert threads_of(server.pid) - before <= 2
    finally:
        for sock in sockets:
            sock.close()


def open_streams(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    (value,) = re.findall(r"^tunix_sse_streams_open (\S+)$", metrics, re.MULTILINE)
    return float(value)


def test_a_client_that_stops_reading_for_too_long_is_dropped(
    tmp_path: Path, token: str, make_run: Any
) -> None:
    run = make_run(status=RunStatus.COMPLETED)
    block = ("z" * 1023 + "\n") * 64
    for _ in range(2):
        append(run.pk, *([block] * 64))  # 8 MiB, far more than the socket buffers take
    with daphne(tmp_path, TUNIX_SSE_STALL_SECONDS="1") as stalling:
        host, port = stalling.url.removeprefix("http://").split(":")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        try:
            stalled.sendall(
                f"GET /api/tunix/runs/{run.pk}/logs HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Token {token}\r\n\r\n".encode()
            )
            deadline = time.monotonic() + 10
            # First the stream must be open (the gauge starts at 0 before the request is read).
            while open_streams(stalling.url) != 1:
                assert time.monotonic() < deadline, "the stream never opened"
                time.sleep(0.05)
            while open_streams(stalling.url) != 0:
                assert time.monotonic() < deadline, "the stalled stream was never dropped"
                time.sleep(0.2)
            # The connection is gone too, not left holding what the client never read.
            stalled.settimeout(5)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := stalled.recv(65536):
                    received += len(chunk)
            assert received < 8 * 1024 * 1024
        finally:
            stalled.close()
