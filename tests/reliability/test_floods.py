"""Floods, brute force and fairness: request rates, the active-run quota, deep JSON, login
lockout, and the API's error shape for what no view handled."""

import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs.models import Run, RunStatus
from tests.traces.helpers import trace_doc
from traces.models import Trace

pytestmark = pytest.mark.django_db


def client_of(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def assert_error_shape(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body


# -- request rates ------------------------------------------------------------------------------


def test_writes_past_the_users_rate_get_429_with_retry_after(
    api: APIClient, alice: Any, bob: Any, make_run: Any, settings: Any
) -> None:
    settings.TUNIX_API_WRITE_RATE = "3/min"
    run = make_run()
    for _ in range(3):
        assert api.post(f"/api/tunix/runs/{run.pk}/cancel", {}, format="json").status_code == 200
    limited = api.post("/api/tunix/run", {"recipe": "tiny_sft"}, format="json")
    body = assert_error_shape(limited, 429, "throttled")
    assert "available in" in body["error"]["message"]
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert not Run.objects.exclude(pk=run.pk).exists()
    # Trace uploads are writes too; reads are not counted against writes.
    assert api.post("/api/traces", trace_doc(), format="json").status_code == 429
    assert not Trace.objects.exists()
    assert api.get("/api/tunix/runs").status_code == 200
    # Each user has their own budget.
    assert client_of(bob).post("/api/traces", trace_doc(), format="json").status_code == 201


def test_reads_past_the_users_rate_get_429_and_writes_still_pass(
    api: APIClient, make_run: Any, settings: Any
) -> None:
    settings.TUNIX_API_READ_RATE = "5/min"
    run = make_run()
    statuses = [api.get(f"/api/tunix/runs/{run.pk}/status").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    limited = api.get("/api/tunix/runs")
    assert_error_shape(limited, 429, "throttled")
    assert int(limited["Retry-After"]) >= 1
    assert api.post(f"/api/tunix/runs/{run.pk}/cancel", {}, format="json").status_code == 200


def test_an_empty_rate_means_no_limit(api: APIClient, settings: Any) -> None:
    settings.TUNIX_API_READ_RATE = ""
    assert {api.get("/api/tunix/runs").status_code for _ in range(30)} == {200}


# -- the active-run quota ------------------------------------------------------------------------


def test_the_quota_is_a_429_in_the_api_and_a_message_on_the_page(
    api: APIClient, alice: Any, make_run: Any, settings: Any
) -> None:
    settings.TUNIX_MAX_ACTIVE_RUNS_PER_USER = 2
    make_run()
    make_run(status=RunStatus.RUNNING)
    response = api.post("/api/tunix/run", {"recipe": "tiny_sft"}, format="json")
    body = assert_error_shape(response, 429, "too_many_active_runs")
    assert "TUNIX_MAX_ACTIVE_RUNS_PER_USER=2" in body["error"]["message"]

    page = Client()
    page.force_login(alice)
    refused = page.post("/runs/new/", {"recipe": "tiny_sft", "name": "one more"})
    assert refused.status_code == 429
    assert "TUNIX_MAX_ACTIVE_RUNS_PER_USER=2" in refused.content.decode()

    done = make_run(status=RunStatus.COMPLETED)
    requeue = page.post(f"/runs/{done.pk}/requeue/")
    assert requeue.status_code == 429
    assert Run.objects.count() == 3


# -- JSON nesting -------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"recipe": "tiny_sft", "config": {"x": ' + "[" * depth + "]" * depth + "}}"


@pytest.mark.parametrize("depth", [101, 1_100, 2_000, 100_000])
def test_json_nested_past_the_limit_is_a_400_not_a_500(api: APIClient, depth: int) -> None:
    response = api.post("/api/tunix/run", nested(depth), content_type="application/json")
    body = assert_error_shape(response, 400, "nested_too_deep")
    assert "100 levels" in body["error"]["message"]
    assert not Run.objects.exists()


def test_json_at_the_limit_is_parsed_and_judged_on_its_content(api: APIClient) -> None:
    # The body is an object (1), config another (2), then 98 arrays: exactly 100 levels.
    response = api.post("/api/tunix/run", nested(98), content_type="application/json")
    body = assert_error_shape(response, 400, "invalid")
    assert "config.x" in body["error"]["fields"]


def test_brackets_inside_strings_are_text_not_nesting(api: APIClient) -> None:
    doc = trace_doc(prompt="[{" * 5_000, final_answer='\\"[[[' * 1_000)
    response = api.post("/api/traces", json.dumps(doc), content_type="application/json")
    assert response.status_code == 201, response.content


def test_deep_json_is_refused_on_every_json_route(api: APIClient, make_run: Any) -> None:
    run = make_run()
    deep = "[" * 5_000 + "]" * 5_000
    for path in (
        f"/api/tunix/runs/{run.pk}/cancel",
        "/api/traces",
        "/api/traces/batch",
        "/api/datasets/build",
    ):
        response = api.post(path, deep, content_type="application/json")
        assert_error_shape(response, 400, "nested_too_deep")


# -- errors no view handled ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/nothing", "/api/tunix/nothing/here", "/api/tunix/runs/x/y/z", "/api/"]
)
def test_an_unknown_api_path_is_a_json_404(api: APIClient, anon: APIClient, path: str) -> None:
    for client in (api, anon):
        assert_error_shape(client.get(path), 404, "not_found")
        assert_error_shape(client.post(path, {}, format="json"), 404, "not_found")


def test_a_page_path_still_gets_an_html_404(alice: Any) -> None:
    client = Client()
    client.force_login(alice)
    response = client.get("/runs/nothing/here/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.postgres
def test_an_unhandled_error_is_a_json_500_with_a_request_id_that_is_logged(
    api: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault, not a mock: the database refuses every new run with an error that no
    # code path expects.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION tunix_refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER tunix_refuse BEFORE INSERT ON tunix_runs "
            "FOR EACH ROW EXECUTE FUNCTION tunix_refuse()"
        )
    with caplog.at_level(logging.ERROR, logger="tunixops.api"):
        response = api.post("/api/tunix/run", {"recipe": "tiny_sft"}, format="json")
    body = assert_error_shape(response, 500, "server_error")
    request_id = body["error"]["request_id"]
    assert response["X-Request-ID"] == request_id
    assert "refused by the test" not in response.content.decode()
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "refused by the test" in str(logged[0].exc_info[1])


# -- login lockout ------------------------------------------------------------------------------


def login(client: Client, path: str, password: str, address: str = "10.1.1.1") -> Any:
    return client.post(path, {"username": "alice", "password": password}, REMOTE_ADDR=address)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_the_configured_failures_lock_the_login_even_with_the_right_password(
    alice: Any, settings: Any, path: str
) -> None:
    alice.is_staff = True
    alice.save()
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == settings.TUNIX_LOGIN_FAILURE_LIMIT == 5
    client = Client()
    answers = [login(client, path, f"wrong-{n}").status_code for n in range(limit)]
    # Each failure before the limit is the form again; the one that reaches it locks.
    assert answers == [200] * (limit - 1) + [429]
    locked = login(client, path, "alice-password-1")
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == settings.TUNIX_LOGIN_COOLOFF_SECONDS
    assert "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    # The lockout is for this username from this address: alice elsewhere may still log in.
    elsewhere = Client()
    assert login(elsewhere, path, "alice-password-1", address="10.2.2.2").status_code == 302


def test_after_the_cool_off_the_right_password_works_again(alice: Any, settings: Any) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        login(client, "/accounts/login/", f"wrong-{n}")
    locked = login(client, "/accounts/login/", "alice-password-1")
    assert locked.status_code == 429 and locked["Retry-After"] == "1"
    time.sleep(1.5)
    assert login(client, "/accounts/login/", "alice-password-1").status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_a_login_lockout_can_be_turned_off(alice: Any, settings: Any) -> None:
    settings.AXES_ENABLED = False
    client = Client()
    assert {login(client, "/accounts/login/", f"no-{n}").status_code for n in range(8)} == {200}
    assert login(client, "/accounts/login/", "alice-password-1").status_code == 302


def test_errors_raised_before_any_view_keep_the_api_error_shape(api: APIClient) -> None:
    # An unknown Host is refused by Django's middleware with its HTML 400 page, elsewhere.
    response = api.get("/api/tunix/runs", HTTP_HOST="evil.example")
    assert_error_shape(response, 400, "bad_request")
    page = Client().get("/accounts/login/", HTTP_HOST="evil.example")
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_the_token_login_counts_towards_the_lockout_and_answers_in_the_api_shape(
    alice: Any, settings: Any
) -> None:
    client = APIClient()

    def token(password: str) -> Any:
        body = {"username": "alice", "password": password}
        return client.post("/api/auth/token", body, format="json", REMOTE_ADDR="10.3.3.3")

    answers = [token(f"wrong-{n}") for n in range(settings.AXES_FAILURE_LIMIT)]
    assert [a.status_code for a in answers[:-1]] == [400] * (settings.AXES_FAILURE_LIMIT - 1)
    assert_error_shape(answers[-1], 429, "locked_out")
    locked = token("alice-password-1")
    assert_error_shape(locked, 429, "locked_out")
    assert locked["Retry-After"] == str(settings.TUNIX_LOGIN_COOLOFF_SECONDS)
    assert not Token.objects.filter(user=alice).exists()
    # The login page shares the count: the same username from the same address is locked there.
    page = Client().post(
        "/accounts/login/",
        {"username": "alice", "password": "alice-password-1"},
        REMOTE_ADDR="10.3.3.3",
    )
    assert page.status_code == 429


def test_an_html_500_from_outside_any_view_becomes_the_api_shape_with_a_logged_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django.http import HttpResponseServerError
    from django.test import RequestFactory

    from tunixops.api.middleware import ApiErrorsMiddleware

    # What Django's own handler answers when a middleware (not a view) raises.
    page = HttpResponseServerError("<h1>Server Error (500)</h1>", content_type="text/html")
    middleware = ApiErrorsMiddleware(lambda request: page)
    with caplog.at_level(logging.ERROR, logger="tunixops.api"):
        shaped = middleware(RequestFactory().get("/api/tunix/runs"))
    assert shaped.status_code == 500 and shaped["Content-Type"] == "application/json"
    body = json.loads(shaped.content)
    assert body["error"]["code"] == "server_error"
    assert shaped["X-Request-ID"] == body["error"]["request_id"]
    assert any(body["error"]["request_id"] in r.getMessage() for r in caplog.records)
    # Elsewhere the page stays Django's.
    assert middleware(RequestFactory().get("/runs/")) is page
