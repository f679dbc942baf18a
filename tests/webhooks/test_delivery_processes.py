"""The delivery process for real: `manage.py tunix_webhooks` processes, real HTTP receivers on
127.0.0.1, events from real status changes. Signed as the README says, every event once and in
order per run after an outage, nothing lost to SIGKILL, no hook held up by a slow one."""

import os
import signal
import time
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from runs.services import run_enqueue
from tests.artifacts.servers import free_port
from tests.conftest import REPO
from tests.metrics.conftest import scrape, value
from tests.runs.helpers import wait_for
from tests.webhooks.conftest import live_run
from tests.webhooks.receiver import Received, Receiver
from webhooks.models import DeliveryState, WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)

LIFE = ["run.queued", "run.started", "run.completed"]


def readme_verify() -> Callable[..., bool]:
    """The README's verification example, executed as it is written there."""
    text = (REPO / "README.md").read_text()
    after = text.split("Verify every request before trusting it", 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    return namespace["verify"]  # type: ignore[no-any-return]


def delivered(count: int) -> Callable[[], bool]:
    return lambda: WebhookDelivery.objects.filter(state=DeliveryState.DELIVERED).count() == count


def first_receipts_by_run(received: list[Received]) -> dict[str, list[str]]:
    """Each run's events in the order the receiver first got them (a retry repeats an id)."""
    seen: set[str] = set()
    order: dict[str, list[str]] = {}
    for r in received:
        if r.delivery_id in seen:
            continue
        seen.add(r.delivery_id)
        order.setdefault(r.json["run"]["id"], []).append(r.json["event"])
    return order


def test_deliveries_are_signed_as_the_readme_verifies(make_hook: Any, spawn_deliverer: Any) -> None:
    port = free_port()
    with Receiver() as receiver:
        hook = make_hook(receiver.url)
        run = live_run()
        spawn_deliverer("--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
        wait_for(lambda: len(receiver.snapshot()) == 3, timeout=30)
        wait_for(delivered(3), timeout=10)
    verify = readme_verify()
    got = receiver.snapshot()
    assert [r.json["event"] for r in got] == LIFE
    for r in got:
        assert verify(hook.secret, r.headers, r.body)
        assert not verify("another secret", r.headers, r.body)
        assert not verify(hook.secret, r.headers, r.body + b" ")
        # A replay under a fresh timestamp does not match the signature.
        replay = Message()
        for name, header in r.headers.items():
            replay[name] = header
        replay.replace_header("X-TunixOps-Timestamp", str(int(time.time()) + 1))
        assert not verify(hook.secret, replay, r.body)
        assert r.headers["X-TunixOps-Event"] == r.json["event"]
        assert r.headers["X-TunixOps-Delivery"] == r.json["id"]
        assert r.headers["Content-Type"] == "application/json"
        assert r.path == "/hook"
        assert r.json["run"]["id"] == str(run.pk)
    rows = WebhookDelivery.objects.all()
    assert {(d.attempts, d.last_status_code, d.last_error) for d in rows} == {(1, 200, "")}
    assert all(d.last_duration_ms is not None and d.delivered_at for d in rows)
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "tunix_webhook_deliveries_total", outcome="delivered") == 3


@pytest.mark.slow
def test_a_receiver_down_then_up_gets_every_event_once_in_order_per_run(
    make_hook: Any, spawn_deliverer: Any
) -> None:
    receiver = Receiver()  # its port is chosen; nothing listens there yet
    make_hook(receiver.url)
    runs = [live_run() for _ in range(4)]
    spawn_deliverer("--concurrency", "4", "--per-hook", "4")
    # Each run's first event fails again and again; the runs' later events wait behind it.
    wait_for(lambda: WebhookDelivery.objects.filter(attempts__gte=3).count() == 4, timeout=30)
    assert set(WebhookDelivery.objects.filter(attempts__gte=1).values_list("event", flat=True)) == {
        "run.queued"
    }
    assert "connection refused" in WebhookDelivery.objects.filter(attempts__gte=1)[0].last_error
    with receiver:
        wait_for(delivered(12), timeout=30)
        got = receiver.snapshot()
    ids = [r.delivery_id for r in got]
    assert len(ids) == 12 and len(set(ids)) == 12  # once each
    assert set(ids) == {
        str(i) for i in WebhookDelivery.objects.values_list("delivery_id", flat=True)
    }
    assert first_receipts_by_run(got) == {str(run.pk): LIFE for run in runs}


@pytest.mark.slow
def test_sigkill_of_the_delivering_process_mid_batch_loses_nothing(
    make_hook: Any, spawn_deliverer: Any
) -> None:
    with Receiver(delay=1.0) as receiver:
        make_hook(receiver.url)
        runs = [live_run() for _ in range(5)]
        first = spawn_deliverer("--concurrency", "4", "--per-hook", "4")
        wait_for(
            lambda: (
                WebhookDelivery.objects.filter(state=DeliveryState.DELIVERED).exists()
                and WebhookDelivery.objects.filter(state=DeliveryState.DELIVERING).exists()
            ),
            timeout=30,
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        orphaned = WebhookDelivery.objects.filter(state=DeliveryState.DELIVERING).count()
        assert orphaned > 0  # claims of the dead process, leased
        spawn_deliverer("--concurrency", "4", "--per-hook", "4")
        wait_for(delivered(15), timeout=60)
        got = receiver.snapshot()
    assert {r.delivery_id for r in got} == {
        str(i) for i in WebhookDelivery.objects.values_list("delivery_id", flat=True)
    }
    assert first_receipts_by_run(got) == {str(run.pk): LIFE for run in runs}


@pytest.mark.slow
def test_a_slow_receiver_delays_no_delivery_to_another_hook(
    make_hook: Any, spawn_deliverer: Any
) -> None:
    with Receiver(delay=10.0) as slow, Receiver() as fast:
        make_hook(slow.url, name="slow")
        make_hook(fast.url, name="fast")
        for _ in range(3):
            live_run()
        spawn_deliverer(
            "--concurrency",
            "4",
            TUNIX_WEBHOOKS_TIMEOUT_SECONDS="15",
            TUNIX_WEBHOOKS_LEASE_SECONDS="30",
        )
        started = time.monotonic()
        wait_for(lambda: len(fast.snapshot()) == 9, timeout=8)
        # And events recorded while the slow receiver still sleeps go out at once too.
        live_run()
        wait_for(lambda: len(fast.snapshot()) == 12, timeout=5)
        assert time.monotonic() - started < 8
        assert slow.snapshot() == []  # still asleep on its first two requests
        slow_rows = WebhookDelivery.objects.filter(webhook__name="slow")
        assert slow_rows.filter(state=DeliveryState.DELIVERING).count() == 2  # --per-hook


@pytest.mark.slow
def test_sigterm_finishes_the_delivery_in_flight(make_hook: Any, spawn_deliverer: Any) -> None:
    with Receiver(delay=1.5) as receiver:
        make_hook(receiver.url, events=["run.queued"])
        live_run()
        proc = spawn_deliverer()
        wait_for(
            lambda: WebhookDelivery.objects.filter(state=DeliveryState.DELIVERING).exists(),
            timeout=30,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert len(receiver.snapshot()) == 1
    assert WebhookDelivery.objects.get().state == DeliveryState.DELIVERED


def test_the_address_guard_refuses_private_addresses_at_delivery_time(
    make_hook: Any, spawn_deliverer: Any
) -> None:
    # Registered while private targets were allowed; the delivery process does not allow them.
    port = free_port()
    with Receiver() as receiver:
        make_hook(receiver.url, events=["run.queued"])
        make_hook(f"http://localhost:{receiver.port}/hook", events=["run.queued"])
        live_run()
        proc = spawn_deliverer(
            "--metrics-port",
            str(port),
            "--metrics-addr",
            "127.0.0.1",
            TUNIX_WEBHOOKS_ALLOW_PRIVATE="false",
        )
        wait_for(lambda: not WebhookDelivery.objects.filter(attempts=0).exists(), timeout=30)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        # Stopped before the states are read: with fast backoff the process may be retrying one
        # (`delivering`) at any moment; SIGTERM lets that attempt finish and be recorded.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert receiver.snapshot() == []
    errors = list(WebhookDelivery.objects.values_list("last_error", flat=True))
    assert all(e.startswith("refused: ") and "loopback address" in e for e in errors), errors
    # Refused is retried later (DNS may change), never given up on at once.
    assert sorted(WebhookDelivery.objects.values_list("state", flat=True)) == [
        DeliveryState.PENDING,
        DeliveryState.PENDING,
    ]
    refused = value(samples, "tunix_webhook_deliveries_total", outcome="refused")
    assert refused is not None and refused >= 2


@pytest.mark.slow
def test_a_real_runs_threshold_and_nan_reach_the_receiver_once_in_order(
    make_hook: Any, spawn_deliverer: Any, spawn_worker: Any, metric_recipes: Path
) -> None:
    with Receiver() as receiver:
        hook = make_hook(
            receiver.url,
            events=[*LIFE, "metric.threshold", "metric.nonfinite"],
            thresholds=["loss < 1"],
        )
        run = run_enqueue(
            recipe="metric_child", created_by=None, config={"steps": 8, "nan_step": 3}
        )
        spawn_worker("--once", "--poll-interval", "0.1", TUNIX_RECIPES_FILE=str(metric_recipes))
        spawn_deliverer()
        wait_for(lambda: len(receiver.snapshot()) == 5, timeout=60)
        time.sleep(0.5)  # nothing more arrives
        got = receiver.snapshot()
    assert [r.json["event"] for r in got] == [
        "run.queued",
        "run.started",
        "metric.nonfinite",
        "metric.threshold",
        "run.completed",
    ]
    assert got[2].json["metric"] == {"step": 3, "names": ["grad_norm"]}
    # loss = 4 / step first drops below 1 at step 5 (0.8); steps 6 to 8 do not fire again.
    assert got[3].json["metric"] == {
        "step": 5,
        "name": "loss",
        "value": 0.8,
        "condition": "loss < 1",
    }
    assert all(r.json["run"]["id"] == str(run.pk) for r in got)
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 5
