"""Events are outbox rows written in the transaction of the change that causes them: run status
changes through the state machine, training metrics where they are stored."""

import json
import math
from typing import Any

import pytest
from django.db import transaction

from runs.execution.logsink import LogSink
from runs.models import Run, RunStatus
from runs.services import run_enqueue
from runs.state_machine import transition
from tests.webhooks.conftest import RUN_EVENTS, live_run
from webhooks import services
from webhooks.models import DeliveryState, WebhookDelivery

URL = "http://127.0.0.1:9/hook"


def events_of(hook: Any, run: Run | None = None) -> list[str]:
    rows = WebhookDelivery.objects.filter(webhook=hook).order_by("id")
    if run is not None:
        rows = rows.filter(run_id=run.pk)
    return list(rows.values_list("event", flat=True))


def bodies(hook: Any) -> list[Any]:
    rows = WebhookDelivery.objects.filter(webhook=hook).order_by("id")
    return [json.loads(body) for body in rows.values_list("body", flat=True)]


@pytest.mark.django_db
class TestRunEvents:
    def test_a_runs_life_is_queued_started_and_its_end_in_order(
        self, make_hook: Any, alice: Any
    ) -> None:
        hook = make_hook(URL)
        run = live_run(alice, name="smoke")
        assert events_of(hook) == ["run.queued", "run.started", "run.completed"]
        rows = list(WebhookDelivery.objects.filter(webhook=hook).order_by("id"))
        assert all(r.state == DeliveryState.PENDING and r.run_id == run.pk for r in rows)
        done = bodies(hook)[-1]
        assert done["event"] == "run.completed"
        assert done["id"] == str(rows[-1].delivery_id)
        assert done["run"]["id"] == str(run.pk)
        assert done["run"]["name"] == "smoke"
        assert done["run"]["status"] == "completed"
        assert done["run"]["created_by"] == "alice"
        assert done["run"]["pool"] == "default"
        assert done["run"]["url"] == f"/runs/{run.pk}/"
        assert done["run"]["finished_at"].endswith("Z")

    @pytest.mark.parametrize(
        "end", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED]
    )
    def test_each_terminal_status_is_its_own_event(self, make_hook: Any, end: RunStatus) -> None:
        only = make_hook(URL, events=[f"run.{end}"])
        every = make_hook(URL)
        for other in (
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.TIMEOUT,
            RunStatus.CANCELLED,
        ):
            live_run(end=other)
        assert events_of(only) == [f"run.{end}"]
        assert len(events_of(every)) == 12

    def test_a_cancelled_pending_run_and_a_retry_are_events_too(self, make_hook: Any) -> None:
        hook = make_hook(URL)
        pending = run_enqueue(recipe="child", created_by=None)
        transition(pending.pk, RunStatus.CANCELLED, reason="changed my mind")
        retried = run_enqueue(recipe="child", created_by=None, max_attempts=2)
        transition(retried.pk, RunStatus.RUNNING, attempt=1)
        transition(retried.pk, RunStatus.PENDING, reason="worker lost; retrying")
        assert events_of(hook, pending) == ["run.queued", "run.cancelled"]
        assert events_of(hook, retried) == ["run.queued", "run.started", "run.queued"]
        assert bodies(hook)[-1]["run"]["status_reason"] == "worker lost; retrying"

    def test_a_rolled_back_change_leaves_no_event(self, make_hook: Any) -> None:
        hook = make_hook(URL)
        run = run_enqueue(recipe="child", created_by=None)
        with pytest.raises(RuntimeError), transaction.atomic():
            transition(run.pk, RunStatus.RUNNING, attempt=1)
            raise RuntimeError("the worker's claim failed after the transition")
        assert events_of(hook) == ["run.queued"]

    def test_filters_choose_the_runs(self, make_hook: Any, alice: Any, bob: Any) -> None:
        by_user = make_hook(URL, events=["run.queued"], user="alice")
        by_recipe = make_hook(URL, events=["run.queued"], recipe="missing_program")
        by_pool = make_hook(URL, events=["run.queued"], pool="tpu-v5e")
        default_pool = make_hook(URL, events=["run.queued"], pool="default")
        mine = run_enqueue(recipe="child", created_by=alice)
        theirs = run_enqueue(recipe="missing_program", created_by=bob)
        on_tpu = run_enqueue(recipe="child", created_by=bob, pool="tpu-v5e")
        assert WebhookDelivery.objects.get(webhook=by_user).run_id == mine.pk
        assert WebhookDelivery.objects.get(webhook=by_recipe).run_id == theirs.pk
        assert WebhookDelivery.objects.get(webhook=by_pool).run_id == on_tpu.pk
        assert WebhookDelivery.objects.filter(webhook=default_pool).count() == 2
        assert json.loads(WebhookDelivery.objects.get(webhook=by_pool).body)["run"]["pool"] == (
            "tpu-v5e"
        )

    def test_an_inactive_hook_records_nothing(self, make_hook: Any, operator: Any) -> None:
        hook = make_hook(URL, active=False)
        live_run()
        assert events_of(hook) == []
        services.webhook_update(webhook_id=hook.pk, actor=operator, active=True)
        live_run()
        assert len(events_of(hook)) == 3

    def test_a_slack_hook_gets_one_text_line(self, make_hook: Any, settings: Any) -> None:
        settings.TUNIX_PUBLIC_URL = "https://tunix.example.com"
        hook = make_hook(URL, body_format="slack")
        run = live_run(name="nightly", end=RunStatus.FAILED, exit_code=3)
        texts = [body["text"] for body in bodies(hook)]
        assert all(list(body) == ["text"] for body in bodies(hook))
        link = f"<https://tunix.example.com/runs/{run.pk}/|nightly>"
        assert texts[0] == f"TunixOps run {link} [child] queued"
        assert texts[1] == f"TunixOps run {link} [child] started (attempt 1 of 1)"
        assert texts[2].startswith(f"TunixOps run {link} [child] failed after ")
        assert texts[2].endswith("(exit code 3): it failed")


def store_metrics(run: Run, lines: list[str]) -> None:
    """Through the worker's real log sink: metric lines parsed and stored in its transaction."""
    sink = LogSink(run.pk, max_bytes=10**6, flush_interval=0.01)
    sink.start()
    for line in lines:
        sink.write("stdout", line.encode())
    sink.close(timeout=30)


def metric(step: int, loss: float, **extra: float) -> str:
    return "tunixops.metric " + json.dumps({"step": step, "loss": loss, **extra}) + "\n"


@pytest.mark.django_db(transaction=True)
class TestMetricEvents:
    def test_a_threshold_fires_once_at_the_first_step_where_it_holds(self, make_hook: Any) -> None:
        hook = make_hook(URL, events=["metric.threshold"], thresholds=["loss < 0.5", "loss < 0.3"])
        run = live_run()
        store_metrics(run, [metric(1, 0.9), metric(2, 0.45), metric(3, 0.4)])
        store_metrics(run, [metric(4, 0.6), metric(5, 0.2), metric(6, 0.1)])
        # A resumed attempt reporting the same steps again crosses nothing new.
        store_metrics(run, [metric(2, 0.45), metric(5, 0.2)])
        found = [b["metric"] for b in bodies(hook)]
        assert found == [
            {"step": 2, "name": "loss", "value": 0.45, "condition": "loss < 0.5"},
            {"step": 5, "name": "loss", "value": 0.2, "condition": "loss < 0.3"},
        ]
        assert events_of(hook) == ["metric.threshold", "metric.threshold"]

    def test_a_non_finite_metric_fires_once(self, make_hook: Any) -> None:
        hook = make_hook(
            URL, events=["metric.nonfinite", "metric.threshold"], thresholds=["loss > 5"]
        )
        run = live_run()
        store_metrics(run, [metric(1, 1.0), metric(2, 1.0, grad_norm=math.nan)])
        store_metrics(run, [metric(3, math.inf), metric(4, math.nan, grad_norm=math.nan)])
        assert [b["metric"] for b in bodies(hook)] == [{"step": 2, "names": ["grad_norm"]}]
        assert events_of(hook) == ["metric.nonfinite"]

    def test_each_hook_and_run_fires_on_its_own(self, make_hook: Any) -> None:
        first = make_hook(URL, events=["metric.nonfinite"])
        second = make_hook(URL, events=["metric.nonfinite"])
        runs = [live_run(), live_run()]
        for run in runs:
            store_metrics(run, [metric(7, math.nan)])
        for hook in (first, second):
            assert sorted(events_of(hook)) == ["metric.nonfinite"] * 2
        assert WebhookDelivery.objects.count() == 4

    def test_metric_events_follow_the_runs_filters(self, make_hook: Any, bob: Any) -> None:
        hook = make_hook(URL, events=["metric.nonfinite"], user="olga")
        store_metrics(live_run(bob), [metric(1, math.nan)])
        assert events_of(hook) == []

    def test_no_hook_wants_metrics_then_nothing_is_recorded(self, make_hook: Any) -> None:
        make_hook(URL, events=RUN_EVENTS)
        run = live_run()
        store_metrics(run, [metric(1, math.nan)])
        assert not WebhookDelivery.objects.filter(event__startswith="metric.").exists()
        assert services.metric_events_record(run_id=run.pk, steps={}) == 0


@pytest.mark.django_db
def test_a_run_that_no_longer_exists_records_no_metric_event(make_hook: Any) -> None:
    import uuid

    make_hook(URL, events=["metric.nonfinite"])
    assert services.metric_events_record(run_id=uuid.uuid4(), steps={1: {"loss": None}}) == 0
