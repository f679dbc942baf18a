"""The admin: hooks written through the services (the secret shown once), the delivery log
listed read-only."""

import datetime
import re
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from tests.webhooks.conftest import live_run
from webhooks.models import DeliveryState, Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"


def add_form(**fields: Any) -> dict[str, Any]:
    form = {
        "name": "from the admin",
        "url": URL,
        "events": ["run.failed", "metric.threshold"],
        "thresholds": "loss<0.5\n\n grad_norm > 10 \n",
        "recipe": "",
        "pool": "",
        "user": "",
        "body_format": "json",
        "active": "on",
    }
    form.update(fields)
    return form


def test_adding_a_hook_shows_its_secret_once(admin_client: Client) -> None:
    response = admin_client.post("/admin/webhooks/webhook/add/", add_form(), follow=True)
    assert response.status_code == 200
    hook = Webhook.objects.get()
    assert hook.thresholds == ["loss < 0.5", "grad_norm > 10"]
    assert hook.events == ["run.failed", "metric.threshold"]
    assert hook.created_by is not None and hook.created_by.username == "admin"
    assert hook.secret in response.content.decode()
    change = admin_client.get(f"/admin/webhooks/webhook/{hook.pk}/change/").content.decode()
    assert hook.secret not in change
    assert "loss &lt; 0.5" in change
    listing = admin_client.get("/admin/webhooks/webhook/").content.decode()
    assert hook.secret not in listing and "delivery log" in listing


def test_the_admin_form_shows_the_services_refusals(admin_client: Client, settings: Any) -> None:
    settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE = False
    response = admin_client.post(
        "/admin/webhooks/webhook/add/",
        add_form(url="http://10.0.0.8/", thresholds="loss <", recipe="nope"),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "private address" in errors["url"][0]
    assert "Expected `<metric> <op> <number>`" in errors["thresholds"][0]
    assert "Unknown recipe" in errors["recipe"][0]
    assert not Webhook.objects.exists()


def test_changing_and_deleting_go_through_the_services(admin_client: Client) -> None:
    admin_client.post("/admin/webhooks/webhook/add/", add_form())
    hook = Webhook.objects.get()
    secret = hook.secret
    response = admin_client.post(
        f"/admin/webhooks/webhook/{hook.pk}/change/",
        add_form(name="renamed", events=["run.completed"], thresholds="", active=""),
    )
    assert response.status_code == 302
    hook.refresh_from_db()
    assert (hook.name, hook.events, hook.thresholds, hook.active) == (
        "renamed",
        ["run.completed"],
        [],
        False,
    )
    assert hook.secret == secret
    rotated = admin_client.post(
        "/admin/webhooks/webhook/",
        {"action": "rotate_secret", "_selected_action": [hook.pk]},
        follow=True,
    )
    hook.refresh_from_db()
    assert hook.secret != secret and hook.secret in rotated.content.decode()
    admin_client.post(
        "/admin/webhooks/webhook/",
        {"action": "delete_selected", "_selected_action": [hook.pk], "post": "yes"},
    )
    assert not Webhook.objects.exists()


def test_the_delivery_log_is_listed_read_only(admin_client: Client, make_hook: Any) -> None:
    hook = make_hook(URL)
    run = live_run()
    WebhookDelivery.objects.filter(event="run.queued").update(
        state=DeliveryState.DELIVERED, attempts=2, last_status_code=200, last_duration_ms=12
    )
    WebhookDelivery.objects.filter(event="run.started").update(
        attempts=3, last_status_code=503, last_error="HTTP 503"
    )
    listing = admin_client.get("/admin/webhooks/webhookdelivery/")
    assert listing.status_code == 200
    assert len(listing.context["cl"].result_list) == 3
    body = listing.content.decode()
    for text in ("HTTP 503", "tunix-status-completed", "pending", "503"):
        assert text in body
    assert str(run.pk)[:8] in body
    by_state = admin_client.get("/admin/webhooks/webhookdelivery/?state__exact=delivered")
    assert [d.event for d in by_state.context["cl"].result_list] == ["run.queued"]
    by_run = admin_client.get(f"/admin/webhooks/webhookdelivery/?q={run.pk}")
    assert len(by_run.context["cl"].result_list) == 3
    elsewhere = admin_client.get(
        "/admin/webhooks/webhookdelivery/?q=0b9e0000-0000-0000-0000-000000000000"
    )
    assert len(elsewhere.context["cl"].result_list) == 0
    row = WebhookDelivery.objects.get(event="run.completed")
    page = admin_client.get(f"/admin/webhooks/webhookdelivery/{row.pk}/change/")
    assert page.status_code == 200
    assert not page.context["adminform"].form.fields  # every field read-only
    assert admin_client.get("/admin/webhooks/webhookdelivery/add/").status_code == 403
    before = WebhookDelivery.objects.get(pk=row.pk).body
    assert (
        admin_client.post(
            f"/admin/webhooks/webhookdelivery/{row.pk}/change/", {"body": "{}"}
        ).status_code
        == 403
    )
    assert admin_client.post(f"/admin/webhooks/webhookdelivery/{row.pk}/delete/").status_code == 403
    assert WebhookDelivery.objects.get(pk=row.pk).body == before
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 3


def test_retry_now_sends_a_given_up_delivery_again(admin_client: Client, make_hook: Any) -> None:
    make_hook(URL, events=["run.queued"])
    live_run()
    row = WebhookDelivery.objects.get()
    later = timezone.now() + datetime.timedelta(hours=1)
    WebhookDelivery.objects.update(state=DeliveryState.FAILED, next_attempt_at=later)
    admin_client.post(
        "/admin/webhooks/webhookdelivery/",
        {"action": "retry_now", "_selected_action": [row.pk]},
    )
    row.refresh_from_db()
    assert row.state == DeliveryState.PENDING and row.next_attempt_at <= timezone.now()


def test_the_operators_group_holds_the_webhook_permissions() -> None:
    from django.apps import apps

    from webhooks.migrations import __name__ as package

    grant = __import__(f"{package}.0002_operators_group", fromlist=["grant"]).grant
    Group.objects.filter(name="operators").delete()
    grant(apps, None)
    grant(apps, None)  # idempotent, and leaves an existing group's other permissions alone
    group = Group.objects.get(name="operators")
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert {"add_webhook", "change_webhook", "delete_webhook", "view_webhook"} <= codenames


def test_an_operator_may_use_the_admin_for_hooks(client: Client, django_user_model: Any) -> None:
    user = django_user_model.objects.create_user(
        username="op", password="op-password-1", is_staff=True
    )
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="webhooks"))
    client.force_login(user)
    assert client.get("/admin/webhooks/webhook/add/").status_code == 200
    assert client.get("/admin/webhooks/webhookdelivery/").status_code == 200


def test_prune_deletes_old_finished_deliveries_only(make_hook: Any) -> None:
    make_hook(URL)
    live_run()
    old = timezone.now() - datetime.timedelta(days=40)
    WebhookDelivery.objects.filter(event="run.queued").update(
        state=DeliveryState.DELIVERED, created_at=old
    )
    WebhookDelivery.objects.filter(event="run.started").update(
        state=DeliveryState.FAILED, created_at=old
    )
    WebhookDelivery.objects.filter(event="run.completed").update(created_at=old)  # still open
    from io import StringIO

    out = StringIO()
    call_command("tunix_webhooks_prune", "--days", "30", "--dry-run", stdout=out)
    assert re.search(r"would delete 2 ", out.getvalue())
    assert WebhookDelivery.objects.count() == 3
    call_command("tunix_webhooks_prune", "--days", "30", "--batch", "1", stdout=out)
    assert list(WebhookDelivery.objects.values_list("event", flat=True)) == ["run.completed"]
