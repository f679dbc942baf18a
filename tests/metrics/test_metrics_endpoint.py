"""/metrics on the web tier: Prometheus' text format, no login, an optional bearer token."""

from typing import Any

import httpx
import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from runs.models import RunStatus
from tests.metrics.conftest import MetricsWorker, parse, scrape, value

pytestmark = pytest.mark.django_db


def test_metrics_parse_with_prometheus_own_parser_and_need_no_login(anon: APIClient) -> None:
    anon.get("/healthz")
    response = anon.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = parse(response.content.decode())
    names = {s.name for s in samples}
    # django-prometheus: requests through its middleware, queries through its database wrapper.
    assert value(samples, "django_http_requests_total_by_method_total", method="GET")
    assert {"django_db_execute_total", "django_http_responses_total_by_status_total"} <= names
    assert {"tunix_queue_depth", "tunix_runs_running"} <= names


def test_queue_depth_and_running_runs_are_read_from_the_database(
    anon: APIClient, make_run: Any
) -> None:
    for status in [RunStatus.PENDING] * 3 + [RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED]:
        make_run(status)
    make_run(RunStatus.COMPLETED)
    samples = parse(anon.get("/metrics").content.decode())
    assert value(samples, "tunix_queue_depth") == 3
    assert value(samples, "tunix_runs_running") == 2


def test_the_database_wrapper_keeps_the_backend_it_wraps() -> None:
    assert type(connections["default"]).__module__.startswith("django_prometheus.db.backends.")
    assert connection.vendor in ("postgresql", "sqlite")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Token s3cret-metrics", "Bearer", "bearer s3cret-metricsX"],
)
def test_with_a_token_set_metrics_refuse_anything_but_that_bearer(
    anon: APIClient, settings: Any, authorization: str | None
) -> None:
    settings.TUNIX_METRICS_TOKEN = "s3cret-metrics"
    if authorization:
        anon.credentials(HTTP_AUTHORIZATION=authorization)
    response = anon.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert response.json()["error"]["code"] == "not_authenticated"


def test_with_a_token_set_the_right_bearer_reads_metrics(anon: APIClient, settings: Any) -> None:
    settings.TUNIX_METRICS_TOKEN = "s3cret-metrics"
    response = anon.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert response.status_code == 200
    assert value(parse(response.content.decode()), "tunix_queue_depth") == 0


def test_metrics_answer_get_only(anon: APIClient) -> None:
    assert anon.post("/metrics").status_code == 405


@pytest.mark.django_db(transaction=True)
def test_the_worker_metrics_port_wants_the_same_token(metrics_worker: Any) -> None:
    worker: MetricsWorker = metrics_worker(TUNIX_METRICS_TOKEN="worker-s3cret")
    refused = httpx.get(worker.url, timeout=5)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "not_authenticated"
    wrong = httpx.get(worker.url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    samples = scrape(worker.url, token="worker-s3cret")
    assert value(samples, "tunix_queue_depth") == 0
    assert any(s.name == "process_cpu_seconds_total" for s in samples)
