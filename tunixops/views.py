"""Process-level endpoints that need no login: liveness, readiness, Prometheus metrics."""

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from runs.models import WorkerHeartbeat
from tunixops import metrics as tunix_metrics


@require_GET
@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
@login_not_required
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database answers and every migration is applied.

    Also says how many workers renewed their heartbeat within TUNIX_LEASE_SECONDS. Zero workers
    leaves the web tier ready (runs queue up), so a probe that cares reads `workers`.
    """
    try:
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if unapplied:
            return JsonResponse(
                {"status": "unavailable", "database": "ok", "unapplied_migrations": len(unapplied)},
                status=503,
            )
        workers = WorkerHeartbeat.objects.fresh(
            timezone.now(), settings.TUNIX_LEASE_SECONDS
        ).count()
    except Exception as exc:
        return JsonResponse(
            {"status": "unavailable", "database": str(exc.__class__.__name__)}, status=503
        )
    return JsonResponse({"status": "ok", "database": "ok", "workers": workers})


@require_GET
@login_not_required
def metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus' text format (see tunixops/metrics.py)."""
    if not tunix_metrics.bearer_allowed(request.headers.get("Authorization", "")):
        return HttpResponse(
            tunix_metrics.UNAUTHORIZED_BODY,
            status=401,
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
