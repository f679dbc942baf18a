"""Process-level endpoints that need no login: liveness, readiness, Prometheus metrics; and the
answer to an error no view handled."""

import sys

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils import timezone
from django.views import defaults
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from runs.models import WorkerHeartbeat
from tunixops import telemetry
from tunixops.api.errors import POOL_RETRY_AFTER_SECONDS, pool_exhausted
from tunixops.api.middleware import API_PREFIX, database_busy


@require_GET
@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


# Set once every migration was seen applied; tests reset it.
_migrated = False


@require_GET
@login_not_required
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database answers and every migration is applied.

    Also says how many workers renewed their heartbeat within TUNIX_LEASE_SECONDS and are not
    stuck (`workers_stuck` counts those that are). Zero workers leaves the web tier ready (runs
    queue up), so a probe that cares reads `workers`.
    """
    global _migrated
    try:
        if not _migrated:
            executor = MigrationExecutor(connection)
            unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
            if unapplied:
                return JsonResponse(
                    {
                        "status": "unavailable",
                        "database": "ok",
                        "unapplied_migrations": len(unapplied),
                    },
                    status=503,
                )
            # Migrations only move forward while a process lives: check once, not per probe.
            _migrated = True
        fresh = WorkerHeartbeat.objects.fresh(timezone.now(), settings.TUNIX_LEASE_SECONDS)
        stuck = fresh.stuck().count()
        workers = fresh.count() - stuck
    except Exception as exc:
        return JsonResponse(
            {"status": "unavailable", "database": str(exc.__class__.__name__)}, status=503
        )
    body: dict[str, object] = {"status": "ok", "database": "ok", "workers": workers}
    if stuck:
        body["workers_stuck"] = stuck
    return JsonResponse(body)


@require_GET
@login_not_required
def metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus' text format (see tunixops/telemetry.py)."""
    if not telemetry.bearer_allowed(request.headers.get("Authorization", "")):
        return HttpResponse(
            telemetry.UNAUTHORIZED_BODY,
            status=401,
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


def server_error(request: HttpRequest) -> HttpResponse:
    """`handler500`: a saturated database pool is a 503 to retry, anything else Django's 500.

    Reached for errors raised outside an API view (pages, middleware); DRF's handler and the API
    middleware answer those of API views. The 503 page renders without the database.
    """
    if not pool_exhausted(sys.exc_info()[1]):
        return defaults.server_error(request)
    if request.path.startswith(API_PREFIX):
        return database_busy()
    response = HttpResponse(loader.render_to_string("503.html"), status=503)
    response["Retry-After"] = str(POOL_RETRY_AFTER_SECONDS)
    return response
