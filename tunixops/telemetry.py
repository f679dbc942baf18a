"""Prometheus metrics of TunixOps: run outcomes, the queue, log capture, live streams, workers.

Counters and histograms live in the process that observes the event: a worker counts the runs it
finishes and the log it stores, the web process counts the pending runs it cancels and the log
streams it serves. Scrape every process and sum them (`sum by (recipe, status)`).

Gauges of shared state (queue depth, running runs, worker heartbeats) are read from the database
when scraped (`DatabaseCollector`), so each process reports the same, right value: aggregate
them with `max`, never `sum`.

Exposed by the web process at `/metrics` (tunixops/views.py) and by a worker started with
`--metrics-port` (`serve`). With `TUNIX_METRICS_TOKEN` set, both want `Authorization: Bearer`.
"""

import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runs.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Run, RunStatus, WorkerHeartbeat

log = logging.getLogger(__name__)

RUNS_TOTAL = Counter(
    "tunix_runs",
    "Runs that reached a terminal status, by recipe and status.",
    ["recipe", "status"],
)
RUN_DURATION = Histogram(
    "tunix_run_duration_seconds",
    "Seconds from a run's start to its terminal status (runs that started).",
    ["recipe", "status"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)
PICKUP_LATENCY = Histogram(
    "tunix_run_pickup_latency_seconds",
    "Seconds from enqueue to a worker's first claim of the run.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
CANCEL_LATENCY = Histogram(
    "tunix_cancel_latency_seconds",
    "Seconds from a cancel request on a running run to the run being cancelled.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300),
)
LOG_BYTES = Counter("tunix_log_bytes", "Bytes of run output stored as log chunks.")
LOG_CHUNKS = Counter("tunix_log_chunks", "Log chunk rows stored.")
SSE_STREAMS_OPEN = Gauge("tunix_sse_streams_open", "Live log streams (SSE) open in this process.")
WEBHOOK_DELIVERIES = Counter(
    "tunix_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (retried with backoff), "
    "refused (the address guard; retried), abandoned (given up), lost (the lease was taken over).",
    ["outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "tunix_webhook_delivery_seconds",
    "Seconds one webhook delivery attempt took, connect to answer.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


# -- observations ---------------------------------------------------------------------------------


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max((later - earlier).total_seconds(), 0.0)


def run_status_saved(
    sender: type[Run], instance: Run, update_fields: Iterable[str] | None, **kwargs: Any
) -> None:
    """`post_save` receiver for Run: every status write (runs/state_machine.py) is observed here.

    A receiver rather than a call in `transition()` so that the one place that writes statuses
    stays free of instrumentation; the observation waits for the commit, so a rolled-back
    transition is not counted.
    """
    if not update_fields or "status" not in update_fields:
        return
    run = instance
    observations: list[Callable[[], None]] = []
    if run.status == RunStatus.RUNNING and run.attempt == 1:
        pickup = _seconds(run.started_at, run.created_at)
        if pickup is not None:
            observations.append(lambda: PICKUP_LATENCY.observe(pickup))
    if run.status in TERMINAL_STATUSES:
        labels = {"recipe": run.recipe, "status": run.status}
        observations.append(lambda: RUNS_TOTAL.labels(**labels).inc())
        duration = _seconds(run.finished_at, run.started_at)
        if duration is not None:
            observations.append(lambda: RUN_DURATION.labels(**labels).observe(duration))
        cancel = _seconds(run.finished_at, run.cancel_requested_at)
        if run.status == RunStatus.CANCELLED and cancel is not None:
            observations.append(lambda: CANCEL_LATENCY.observe(cancel))
    for observe in observations:
        transaction.on_commit(observe, using=kwargs.get("using"))


def log_stored(*, chunks: int, size: int) -> None:
    LOG_CHUNKS.inc(chunks)
    LOG_BYTES.inc(size)


def webhook_delivery_observed(*, outcome: str, seconds: float) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    WEBHOOK_DELIVERY_SECONDS.observe(seconds)


@contextmanager
def sse_stream_open() -> Iterator[None]:
    """Wrap the life of one live-log stream: `tunix_sse_streams_open` counts it meanwhile."""
    SSE_STREAMS_OPEN.inc()
    try:
        yield
    finally:
        SSE_STREAMS_OPEN.dec()


# -- state read from the database at scrape time --------------------------------------------------


class DatabaseCollector(Collector):
    """Queue depth, running runs, worker heartbeats and artifact bytes, as the database has them
    now."""

    def describe(self) -> list[Metric]:
        # Registration asks for the names only: no query at import time.
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        try:
            rows = (
                Run.objects.order_by()
                .filter(status__in=[RunStatus.PENDING, *ACTIVE_STATUSES])
                .values("status")
                .annotate(n=Count("pk"))
            )
            by_status = {row["status"]: row["n"] for row in rows}
            by_pool = dict(
                Run.objects.pending()
                .order_by()
                .values("pool")
                .annotate(n=Count("pk"))
                .values_list("pool", "n")
            )
            beats = list(
                WorkerHeartbeat.objects.values_list(
                    "worker_id", "last_seen", "stuck_reason", "devices_total", "devices_busy"
                )
            )
            # One pass over the runs table's `artifact_bytes` (kept by every artifact sync).
            stored = Run.objects.aggregate(total=Coalesce(Sum("artifact_bytes"), 0))["total"]
        except DatabaseError as exc:
            # The scrape still answers; the gap in these series is the alert.
            log.warning("metrics: database unavailable: %s", exc)
            return
        yield from self._families(by_status, beats, by_pool, stored)

    def _families(
        self,
        by_status: dict[str, int] | None = None,
        beats: list[tuple[str, datetime, str, int, int]] | None = None,
        by_pool: dict[str, int] | None = None,
        artifact_bytes: int | None = None,
    ) -> Iterator[Metric]:
        counts = by_status or {}
        queue = GaugeMetricFamily("tunix_queue_depth", "Runs waiting for a worker (pending).")
        running = GaugeMetricFamily(
            "tunix_runs_running",
            "Runs whose child is executing (running or cancel_requested).",
        )
        heartbeat = GaugeMetricFamily(
            "tunix_worker_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat; a worker that stopped cleanly is removed.",
            labels=["worker"],
        )
        stuck = GaugeMetricFamily(
            "tunix_worker_stuck",
            "1 while a worker reports that a write it must make keeps failing, else 0.",
            labels=["worker"],
        )
        stored = GaugeMetricFamily(
            "tunix_artifact_bytes",
            "Bytes of every run's registered files (checkpoints and others), after retention.",
        )
        devices = GaugeMetricFamily(
            "tunix_worker_devices",
            "Accelerators of each worker: state=total or busy (held by a run).",
            labels=["worker", "state"],
        )
        pool_queue = GaugeMetricFamily(
            "tunix_pool_queue_depth", "Pending runs of each pool.", labels=["pool"]
        )
        for pool, waiting in sorted((by_pool or {}).items()):
            pool_queue.add_metric([pool], waiting)
        if by_status is not None:
            queue.add_metric([], counts.get(RunStatus.PENDING, 0))
            running.add_metric([], sum(counts.get(s, 0) for s in ACTIVE_STATUSES))
        for worker_id, last_seen, stuck_reason, total, busy in beats or []:
            heartbeat.add_metric([worker_id], last_seen.timestamp())
            stuck.add_metric([worker_id], 1 if stuck_reason else 0)
            devices.add_metric([worker_id, "total"], total)
            devices.add_metric([worker_id, "busy"], busy)
        if artifact_bytes is not None:
            stored.add_metric([], artifact_bytes)
        yield from (queue, pool_queue, running, heartbeat, stuck, devices, stored)


REGISTRY.register(DatabaseCollector())


class WebhookBacklogCollector(Collector):
    """Webhook deliveries not yet delivered, by state, as the database has them now."""

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        from webhooks.models import OPEN_STATES, WebhookDelivery

        try:
            rows = (
                WebhookDelivery.objects.order_by()
                .filter(state__in=OPEN_STATES)
                .values("state")
                .annotate(n=Count("pk"))
            )
            counts = {row["state"]: row["n"] for row in rows}
        except DatabaseError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            return
        yield self._family(counts)

    def _family(self, counts: dict[str, int] | None = None) -> Metric:
        family = GaugeMetricFamily(
            "tunix_webhook_backlog",
            "Webhook deliveries waiting (pending, including retries) or being sent (delivering).",
            labels=["state"],
        )
        for state in ("pending", "delivering") if counts is not None else ():
            family.add_metric([state], counts.get(state, 0) if counts else 0)
        return family


REGISTRY.register(WebhookBacklogCollector())


# -- exposition -----------------------------------------------------------------------------------


def bearer_allowed(authorization: str) -> bool:
    """Whether a request with this Authorization header may read metrics."""
    token = settings.TUNIX_METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


UNAUTHORIZED_BODY = (
    b'{"error": {"code": "not_authenticated", '
    b'"message": "Metrics need Authorization: Bearer <TUNIX_METRICS_TOKEN>."}}'
)

StartResponse = Callable[..., Any]


def _worker_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if not bearer_allowed(environ.get("HTTP_AUTHORIZATION", "")):
        start_response(
            "401 Unauthorized",
            [("Content-Type", "application/json"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [UNAUTHORIZED_BODY]
    try:
        return list(_prometheus_app(environ, start_response))
    finally:
        # Each scrape runs on a thread of its own: its database connection goes with it.
        connections.close_all()


_prometheus_app = make_wsgi_app(REGISTRY)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(addr: str, port: int) -> WSGIServer:
    """Serve this process's metrics over HTTP from a daemon thread; stop with `shutdown()`."""
    server = make_server(addr, port, _worker_app, _ThreadingServer, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    log.info("metrics: serving on http://%s:%d/metrics", addr, server.server_port)
    return server
