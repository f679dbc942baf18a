"""The webhook API: registration with a secret shown once, permissions, and every bad input a
400 naming its field."""

import json
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.webhooks.conftest import RUN_EVENTS, live_run
from webhooks.models import Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def ops(operator: Any) -> APIClient:
    return client_for(operator)


def create(client: APIClient, **body: Any) -> Any:
    body.setdefault("name", "alerts")
    body.setdefault("url", URL)
    body.setdefault("events", ["run.failed"])
    # json.dumps escapes a lone surrogate as `\\ud800`, as a client in another language would.
    return client.post("/api/webhooks", json.dumps(body), content_type="application/json")


def test_registering_a_hook_answers_its_secret_once(ops: APIClient) -> None:
    response = create(
        ops,
        events=["run.completed", "metric.threshold", "run.failed"],
        thresholds=["loss<0.5", "grad_norm >= 100"],
        recipe="child",
        pool="tpu-v5e",
        user="olga",
        body_format="slack",
    )
    assert response.status_code == 201, response.json()
    created = response.json()
    assert len(created["secret"]) >= 40
    # Stored canonically: events in their documented order, conditions spelled one way.
    assert created["events"] == ["run.completed", "run.failed", "metric.threshold"]
    assert created["thresholds"] == ["loss < 0.5", "grad_norm >= 100"]
    assert (created["recipe"], created["pool"], created["user"]) == ("child", "tpu-v5e", "olga")
    assert created["created_by"] == "olga"
    hook = Webhook.objects.get(pk=created["id"])
    assert hook.secret == created["secret"]
    detail = ops.get(created["links"]["self"]).json()
    listed = ops.get("/api/webhooks").json()["results"]
    assert "secret" not in detail and all("secret" not in h for h in listed)
    assert detail["name"] == "alerts"


def test_rotating_the_secret_shows_the_new_one_once(ops: APIClient) -> None:
    first = create(ops).json()
    rotated = ops.post(f"/api/webhooks/{first['id']}/rotate-secret").json()
    assert rotated["secret"] != first["secret"]
    assert Webhook.objects.get(pk=first["id"]).secret == rotated["secret"]


def test_a_patch_changes_what_it_names_and_checks_the_whole(ops: APIClient) -> None:
    hook = create(ops, events=["metric.threshold"], thresholds=["loss < 1"]).json()
    changed = ops.patch(f"/api/webhooks/{hook['id']}", {"active": False}, format="json")
    assert changed.status_code == 200 and changed.json()["active"] is False
    assert changed.json()["thresholds"] == ["loss < 1"]
    # Dropping the event but keeping its conditions is refused, naming the field.
    refused = ops.patch(f"/api/webhooks/{hook['id']}", {"events": ["run.failed"]}, format="json")
    assert refused.status_code == 400
    assert "thresholds" in refused.json()["error"]["fields"]
    ok = ops.patch(
        f"/api/webhooks/{hook['id']}", {"events": ["run.failed"], "thresholds": []}, format="json"
    )
    assert ok.status_code == 200 and ok.json()["events"] == ["run.failed"]


def test_a_deleted_hook_is_gone_with_its_log(ops: APIClient, make_hook: Any) -> None:
    hook = make_hook(URL)
    live_run()
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 3
    assert ops.delete(f"/api/webhooks/{hook.pk}").status_code == 204
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()
    assert ops.get(f"/api/webhooks/{hook.pk}").status_code == 404
    assert ops.get("/api/webhooks/nope").status_code == 404
    assert ops.get("/api/webhooks/99999999999999999999").status_code == 404


def test_the_delivery_log_lists_a_hooks_deliveries_newest_first(
    ops: APIClient, make_hook: Any
) -> None:
    hook = make_hook(URL)
    run = live_run()
    page = ops.get(f"/api/webhooks/{hook.pk}/deliveries").json()
    assert [d["event"] for d in page["results"]] == ["run.completed", "run.started", "run.queued"]
    assert all(d["run_id"] == str(run.pk) and d["state"] == "pending" for d in page["results"])
    assert json.loads(page["results"][0]["body"])["run"]["status"] == "completed"
    assert ops.get(f"/api/webhooks/{hook.pk}/deliveries?state=delivered").json()["count"] == 0
    bad = ops.get(f"/api/webhooks/{hook.pk}/deliveries?state=lost")
    assert bad.status_code == 400 and "state" in bad.json()["error"]["fields"]


def test_users_without_the_permissions_are_refused(alice: Any, operator: Any) -> None:
    plain = client_for(alice)
    hook = create(client_for(operator)).json()
    assert plain.get("/api/webhooks").status_code == 403
    assert plain.get(f"/api/webhooks/{hook['id']}").status_code == 403
    refused = create(plain)
    assert refused.status_code == 403
    assert "webhooks.add_webhook" in refused.json()["error"]["message"]
    assert plain.patch(f"/api/webhooks/{hook['id']}", {}, format="json").status_code == 403
    assert plain.delete(f"/api/webhooks/{hook['id']}").status_code == 403
    assert plain.post(f"/api/webhooks/{hook['id']}/rotate-secret").status_code == 403
    assert APIClient().get("/api/webhooks").status_code in (401, 403)
    assert Webhook.objects.count() == 1


def test_viewing_does_not_allow_writing(django_user_model: Any) -> None:
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(username="vic", password="vic-password-1")
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhook"))
    client = client_for(viewer)
    assert client.get("/api/webhooks").status_code == 200
    assert create(client).status_code == 403


BAD_INPUTS = [
    ({"url": "ftp://example.com/hook"}, "url"),
    ({"url": "file:///etc/passwd"}, "url"),
    ({"url": "javascript:alert(1)"}, "url"),
    ({"url": "http://"}, "url"),
    ({"url": "http://user:pw@example.com/"}, "url"),
    ({"url": "http://exa mple.com/"}, "url"),
    ({"url": "http://example.com:99999/"}, "url"),
    ({"url": "http://example.com/\x00"}, "url"),
    ({"url": "http://example.com/" + "a" * 2001}, "url"),
    ({"url": 7}, "url"),
    ({"name": "a\x00b"}, "name"),
    ({"name": "\ud800"}, "name"),
    ({"name": ""}, "name"),
    ({"events": []}, "events"),
    ({"events": ["run.exploded"]}, "events.0"),
    ({"events": "run.failed"}, "events"),
    ({"events": ["run.failed"] * 500}, "events"),
    ({"events": [["run.failed"]]}, "events.0"),
    ({"events": ["metric.threshold"], "thresholds": ["loss <"]}, "thresholds.0"),
    ({"events": ["metric.threshold"], "thresholds": ["loss < nan"]}, "thresholds.0"),
    ({"events": ["metric.threshold"], "thresholds": ["< 0.5"]}, "thresholds.0"),
    ({"events": ["metric.threshold"], "thresholds": ["loss ~ 0.5"]}, "thresholds.0"),
    ({"events": ["metric.threshold"], "thresholds": ["lo\x00ss < 1"]}, "thresholds.0"),
    ({"events": ["metric.threshold"], "thresholds": ["loss < 1"] * 21}, "thresholds"),
    ({"events": ["metric.threshold"], "thresholds": [{"loss": 1}]}, "thresholds.0"),
    ({"events": ["metric.threshold"]}, "thresholds"),
    ({"thresholds": ["loss < 1"]}, "thresholds"),
    ({"recipe": "no-such-recipe"}, "recipe"),
    ({"pool": "a pool"}, "pool"),
    ({"user": "nobody-by-that-name"}, "user"),
    ({"user": "x\x00"}, "user"),
    ({"body_format": "xml"}, "body_format"),
    ({"secret": "mine"}, "secret"),
    ({"unknown": 1}, "unknown"),
]


@pytest.mark.parametrize(("body", "field"), BAD_INPUTS, ids=[repr(b)[:60] for b, _ in BAD_INPUTS])
def test_bad_input_is_a_400_naming_the_field(
    ops: APIClient, body: dict[str, Any], field: str
) -> None:
    response = create(ops, **body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert not Webhook.objects.exists()


def test_json_nested_2000_deep_is_a_400(ops: APIClient) -> None:
    deep = "[" * 2000 + "]" * 2000
    body = f'{{"name": "a", "url": "{URL}", "events": {deep}}}'
    response = ops.post("/api/webhooks", body, content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://localhost:8000/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[64:ff9b::a00:1]/",
        "http://240.0.0.1/",
    ],
)
def test_the_address_guard_refuses_private_targets_at_registration(
    ops: APIClient, settings: Any, url: str
) -> None:
    settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE = False
    response = create(ops, url=url)
    assert response.status_code == 400, response.content
    assert "address" in response.json()["error"]["fields"]["url"][0]


def test_the_address_guard_takes_public_addresses(ops: APIClient, settings: Any) -> None:
    settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE = False
    # A literal address needs no DNS (there is none here) and is never connected to.
    assert create(ops, url="https://8.8.8.8/hook?token=x").status_code == 201


def test_an_unresolvable_host_is_refused_when_the_guard_is_on(
    ops: APIClient, settings: Any
) -> None:
    settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE = False
    response = create(ops, url="http://no-such-host.invalid/")
    assert response.status_code == 400
    assert "resolve" in response.json()["error"]["fields"]["url"][0]


def test_all_run_events_are_accepted(ops: APIClient) -> None:
    assert create(ops, events=RUN_EVENTS).status_code == 201


RAW_BAD = [
    ({"name": 5}, "name"),
    ({"url": None}, "url"),
    ({"events": "run.failed"}, "events"),
    ({"events": ["run.failed"] * 9}, "events"),
    ({"events": ["run.nope"]}, "events"),
    ({"thresholds": "loss < 1"}, "thresholds"),
    ({"thresholds": ["loss < 1"] * 21}, "thresholds"),
    ({"thresholds": [5]}, "thresholds.0"),
    ({"user": 5}, "user"),
    ({"pool": "bad pool"}, "pool"),
    ({"body_format": "yaml"}, "body_format"),
]


@pytest.mark.parametrize(("change", "field"), RAW_BAD)
def test_the_service_refuses_raw_bad_values_too(change: dict[str, Any], field: str) -> None:
    # What the admin or a script hands the service directly, without the API's serializer.
    from tunixops.exceptions import InvalidInput
    from webhooks.services import webhook_clean

    fields: dict[str, Any] = {"name": "n", "url": URL, "events": ["run.failed"], **change}
    with pytest.raises(InvalidInput) as refused:
        webhook_clean(**fields)
    assert field in (refused.value.fields or {})


def test_updating_refuses_unknown_fields_and_missing_hooks(operator: Any) -> None:
    from tunixops.exceptions import InvalidInput, NotFound
    from webhooks import services

    hook = services.webhook_create(created_by=operator, name="n", url=URL, events=["run.failed"])
    with pytest.raises(InvalidInput):
        services.webhook_update(webhook_id=hook.pk, actor=operator, secret="mine")
    with pytest.raises(NotFound):
        services.webhook_update(webhook_id=hook.pk + 1, actor=operator, name="x")
    with pytest.raises(NotFound):
        services.webhook_delete(webhook_id=hook.pk + 1, actor=operator)
