"""The delivery loop in this process (Deliverer(once=True)) against real receivers: retries with
backoff, Retry-After, giving up, claims taken over, HTTPS to a name with a pinned address."""

import datetime
import signal
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.utils import timezone

from tests.webhooks.conftest import live_run
from tests.webhooks.receiver import Receiver
from webhooks import sender, services
from webhooks.delivery import Deliverer
from webhooks.models import DeliveryState, WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast(settings: Any) -> None:
    settings.TUNIX_WEBHOOKS_BACKOFF_SECONDS = 0.05
    settings.TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS = 0.2
    settings.TUNIX_WEBHOOKS_TIMEOUT_SECONDS = 2
    settings.TUNIX_WEBHOOKS_POLL_SECONDS = 0.02


def run_once(**options: Any) -> Deliverer:
    deliverer = Deliverer(once=True, **options)
    deliverer.run()
    return deliverer


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    make_hook: Any, settings: Any
) -> None:
    settings.TUNIX_WEBHOOKS_BACKOFF_SECONDS = 0.3
    settings.TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS = 0.6
    with Receiver(status=500) as receiver:
        make_hook(receiver.url, events=["run.queued"])
        live_run()
        run_once()
        row = WebhookDelivery.objects.get()
        assert (row.state, row.attempts, row.last_status_code) == ("pending", 1, 500)
        assert row.last_error == "HTTP 500" and row.last_response == "ok"
        assert row.next_attempt_at > timezone.now()
        run_once()  # not due yet: no attempt
        row.refresh_from_db()
        assert row.attempts == 1
        time.sleep(0.35)
        run_once()  # the second failure waits twice as long (the cap)
        row.refresh_from_db()
        assert row.attempts == 2
        receiver.status = 204
        time.sleep(0.65)
        run_once()
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_status_code, row.last_error) == (
        "delivered",
        3,
        204,
        "",
    )
    assert len(receiver.snapshot()) == 3
    assert len({r.delivery_id for r in receiver.snapshot()}) == 1


def test_backoff_doubles_up_to_its_cap_and_honours_retry_after(settings: Any) -> None:
    settings.TUNIX_WEBHOOKS_BACKOFF_SECONDS = 5
    settings.TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS = 300
    waits = [services.backoff_seconds(n) for n in range(1, 10)]
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert services.backoff_seconds(1000) == 300
    assert services.backoff_seconds(1, retry_after=60) == 60
    assert services.backoff_seconds(1, retry_after=10**9) == 300


def test_a_delivery_failing_past_the_give_up_time_fails_and_frees_its_run(
    make_hook: Any, settings: Any
) -> None:
    settings.TUNIX_WEBHOOKS_GIVE_UP_SECONDS = 1
    with Receiver(status=503) as receiver:
        hook = make_hook(receiver.url)
        live_run()
        WebhookDelivery.objects.update(created_at=timezone.now() - datetime.timedelta(hours=1))
        run_once()
    # The first is given up after its attempt; the run's later events each get their own.
    rows = list(WebhookDelivery.objects.filter(webhook=hook).order_by("id"))
    assert [r.state for r in rows] == [DeliveryState.FAILED] * 3
    assert [r.attempts for r in rows] == [1, 1, 1]


def test_a_redirect_is_not_followed(make_hook: Any) -> None:
    with Receiver(status=302) as receiver:
        make_hook(receiver.url, events=["run.queued"])
        live_run()
        run_once()
    row = WebhookDelivery.objects.get()
    assert row.state == "pending" and row.last_error == "HTTP 302 (redirects are not followed)"


def test_a_receiver_that_never_answers_is_cut_off_at_the_timeout(
    make_hook: Any, settings: Any
) -> None:
    settings.TUNIX_WEBHOOKS_TIMEOUT_SECONDS = 0.5
    with Receiver(delay=3) as receiver:
        make_hook(receiver.url, events=["run.queued"])
        live_run()
        started = time.monotonic()
        run_once()
        assert time.monotonic() - started < 2.5
    row = WebhookDelivery.objects.get()
    assert row.last_error == "timed out after 0.5 s" and row.state == "pending"


def test_a_claim_taken_over_after_its_lease_records_nothing(make_hook: Any) -> None:
    make_hook("http://127.0.0.1:9/hook", events=["run.queued"])
    live_run()
    claim = services.deliveries_claim(worker_id="a", limit=5, in_flight={}, per_hook=5)[0]
    assert services.deliveries_claim(worker_id="b", limit=5, in_flight={}, per_hook=5) == []
    WebhookDelivery.objects.update(lease_until=timezone.now() - datetime.timedelta(seconds=1))
    retaken = services.deliveries_claim(worker_id="b", limit=5, in_flight={}, per_hook=5)[0]
    assert retaken.delivery_id == claim.delivery_id and retaken.token != claim.token
    ok = sender.Result(status=200, error="", seconds=0.1)
    assert services.delivery_record(claim=claim, result=ok) == "lost"
    assert services.delivery_record(claim=retaken, result=ok) == "delivered"


def test_only_the_oldest_open_event_of_a_run_is_claimed_per_hook(make_hook: Any) -> None:
    first = make_hook("http://127.0.0.1:9/a")
    second = make_hook("http://127.0.0.1:9/b")
    runs = [live_run(), live_run()]
    claims = services.deliveries_claim(worker_id="w", limit=50, in_flight={}, per_hook=50)
    # One per run and hook: each run's `run.queued`.
    assert sorted((c.webhook_id, c.event) for c in claims) == sorted(
        [(h.pk, "run.queued") for h in (first, second) for _ in runs]
    )
    # A hook at its per-hook limit gets nothing more in this claim.
    for claim in claims:
        services.delivery_record(claim=claim, result=sender.Result(200, "", 0.0))
    capped = services.deliveries_claim(worker_id="w", limit=50, in_flight={first.pk: 1}, per_hook=1)
    assert {c.webhook_id for c in capped} == {second.pk}
    assert {c.event for c in capped} == {"run.started"}


def test_an_inactive_hooks_deliveries_wait(make_hook: Any, operator: Any) -> None:
    with Receiver() as receiver:
        hook = make_hook(receiver.url, events=["run.queued"])
        live_run()
        services.webhook_update(webhook_id=hook.pk, actor=operator, active=False)
        run_once()
        assert receiver.snapshot() == []
        services.webhook_update(webhook_id=hook.pk, actor=operator, active=True)
        run_once()
        assert len(receiver.snapshot()) == 1


def test_a_database_outage_is_waited_out(make_hook: Any, monkeypatch: Any) -> None:
    from django.db import DatabaseError

    from webhooks import delivery

    with Receiver() as receiver:
        make_hook(receiver.url, events=["run.queued"])
        live_run()
        real = services.delivery_record
        failures = iter([DatabaseError("server closed the connection")])

        def flaky(**kwargs: Any) -> str:
            for exc in failures:
                raise exc
            return real(**kwargs)

        monkeypatch.setattr(delivery, "delivery_record", flaky)
        deliverer = run_once()
    assert deliverer.attempts == 1
    assert WebhookDelivery.objects.get().state == DeliveryState.DELIVERED


def test_an_unexpected_error_is_recorded_as_a_failed_attempt(
    make_hook: Any, monkeypatch: Any
) -> None:
    make_hook("http://127.0.0.1:9/hook", events=["run.queued"])
    live_run()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sender, "post", broken)
    run_once()
    row = WebhookDelivery.objects.get()
    assert row.state == "pending" and row.last_error.startswith("internal error: RuntimeError")


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_is_verified_against_the_host_name_while_connecting_to_the_checked_address(
    make_hook: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    cert, key = _certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test's own certificate authority
    with Receiver() as receiver:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server = receiver._server
        assert server is not None
        server.socket = context.wrap_socket(server.socket, server_side=True)
        by_name = make_hook(f"https://localhost:{receiver.port}/hook", events=["run.queued"])
        by_address = make_hook(f"https://127.0.0.1:{receiver.port}/hook", events=["run.queued"])
        live_run()
        run_once()
        assert len(receiver.snapshot()) == 1
    assert WebhookDelivery.objects.get(webhook=by_name).state == DeliveryState.DELIVERED
    refused = WebhookDelivery.objects.get(webhook=by_address)
    # The certificate names localhost, not 127.0.0.1: the TLS check still applies.
    assert refused.state == "pending" and refused.last_error.startswith("TLS")


def test_signal_handling_stops_after_the_work_in_flight(make_hook: Any) -> None:
    with Receiver(delay=0.5) as receiver:
        make_hook(receiver.url, events=["run.queued"])
        live_run()
        deliverer = Deliverer(poll_interval=0.02)
        thread = threading.Thread(target=deliverer.run)
        thread.start()
        deadline = time.monotonic() + 10
        while not deliverer.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        deliverer._on_signal(15, None)
        thread.join(10)
        assert not thread.is_alive()
    assert WebhookDelivery.objects.get().state == DeliveryState.DELIVERED


def test_sender_refuses_what_registration_refuses() -> None:
    result = sender.post(
        "http://10.0.0.1/", b"{}", {}, timeout=1, allow_private=False
    )  # refused before any connection is attempted
    assert result.refused and result.status is None and "private address" in result.error
    assert sender.post("gopher://x/", b"", {}, timeout=1, allow_private=True).refused
    assert sender.refused_because(__import__("ipaddress").ip_address("2002:a00:1::")) == "private"
    assert sender.refused_because(__import__("ipaddress").ip_address("8.8.8.8")) is None
    assert uuid.UUID(int=0)  # the delivery id type


def test_the_command_delivers_what_is_due_and_exits_with_once(make_hook: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with Receiver() as receiver:
        make_hook(receiver.url, events=["run.queued", "run.started"])
        live_run()
        try:
            call_command(
                "tunix_webhooks", "--once", "--poll-interval", "0.05", "--per-hook", "1", stdout=out
            )
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    assert [r.json["event"] for r in receiver.snapshot()] == ["run.queued", "run.started"]
    assert "2 attempt(s)" in out.getvalue()
