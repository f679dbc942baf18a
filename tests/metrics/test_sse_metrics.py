"""`metric` events on a run's live stream and the open-streams gauge, over a real daphne."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rest_framework.authtoken.models import Token

from runs.models import LogChunk, RunMetric, RunStatus
from runs.services import run_enqueue
from tests.metrics.conftest import parse, value
from tests.runs.helpers import wait_for
from tests.sse.conftest import Server, daphne
from tests.sse.sseclient import SseEvent, auth, parse_events, read_all, stream_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with daphne(tmp_path_factory.mktemp("daphne")) as running:
        yield running


@pytest.fixture
def token(alice: Any) -> str:
    return str(Token.objects.create(user=alice).key)


def streams_open(server: Server) -> float | None:
    return value(
        parse(httpx.get(f"{server.url}/metrics", timeout=5).text), "tunix_sse_streams_open"
    )


def test_a_finished_runs_stream_sends_metrics_after_since_step_before_its_status(
    server: Server, token: str, make_run: Any
) -> None:
    run = make_run(RunStatus.COMPLETED)
    LogChunk.objects.create(run=run, seq=1, stream="stdout", chunk="trained\n")
    RunMetric.objects.bulk_create(
        RunMetric(run=run, step=s, values={"loss": 1.0 / s}) for s in range(1, 6)
    )
    with httpx.Client(timeout=10) as client:
        events = read_all(
            client, stream_url(server.url, run.pk), headers=auth(token), params={"since_step": 2}
        )
        plain = read_all(client, stream_url(server.url, run.pk), headers=auth(token))
    assert [e.event for e in events] == ["log", "metric", "metric", "metric", "status"]
    metrics = [e for e in events if e.event == "metric"]
    assert [m.json() for m in metrics] == [
        {"step": s, "values": {"loss": pytest.approx(1.0 / s)}} for s in (3, 4, 5)
    ]
    # No id: a metric never moves the client's Last-Event-ID away from the log position.
    assert all(m.id == events[0].id for m in metrics)
    # Without since_step, only steps recorded after connecting: none, for a finished run.
    assert [e.event for e in plain] == ["log", "status"]


def test_a_live_stream_carries_each_new_step_and_counts_as_open(
    server: Server, token: str, alice: Any, spawn_worker: Any, metric_recipes: Path
) -> None:
    run = run_enqueue(
        recipe="metric_child", created_by=alice, config={"steps": 6, "pause": 0.2, "split": True}
    )
    url = stream_url(server.url, run.pk)
    received: list[SseEvent] = []
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", url, headers=auth(token)) as response,
    ):
        events = parse_events(response.iter_lines())
        received.append(next(events))
        assert streams_open(server) == 1
        spawn_worker("--once", "--poll-interval", "0.05", TUNIX_RECIPES_FILE=str(metric_recipes))
        received.extend(events)
    wait_for(lambda: streams_open(server) == 0, timeout=10)
    metrics = [e.json() for e in received if e.event == "metric"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert metrics[1]["values"]["loss"] == 2.0 and metrics[1]["values"]["learning_rate"] == 0.001
    assert received[-1].event == "status" and received[-1].json()["status"] == "completed"
    # Each step's event follows the log event that carried its line.
    order = [e for e in received if e.event in ("log", "metric")]
    first_metric = next(i for i, e in enumerate(order) if e.event == "metric")
    assert any('"step": 1, ' in e.json()["chunk"] for e in order[:first_metric] if e.event == "log")


def test_metrics_read_from_event_files_reach_an_open_stream_between_log_lines(
    server: Server, token: str, make_run: Any
) -> None:
    from runs.live import notify
    from runs.services import run_metrics_merge_tensorboard
    from runs.state_machine import transition

    run = make_run(RunStatus.RUNNING)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", stream_url(server.url, run.pk), headers=auth(token)) as response,
    ):
        events = parse_events(response.iter_lines())
        assert next(events).event == "status"
        # A chatty child: log lines keep coming, none of them a metric line.
        LogChunk.objects.create(run=run, seq=1, stream="stderr", chunk="I1202 absl noise\n")
        notify.logs_appended(run.pk, 1)
        assert next(events).event == "log"
        run_metrics_merge_tensorboard(run_id=run.pk, steps={0: {"rewards/mean": 0.5}})
        metric = next(events)
        assert metric.event == "metric"
        assert metric.json() == {"step": 0, "values": {"rewards/mean": 0.5}}
        transition(run.pk, RunStatus.COMPLETED)
        rest = list(events)
    assert [e.event for e in rest] == ["status"]
