"""Process-level endpoints that need no login."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database answers and every migration is applied."""
    try:
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:
        return JsonResponse(
            {"status": "unavailable", "database": str(exc.__class__.__name__)}, status=503
        )
    if unapplied:
        return JsonResponse(
            {"status": "unavailable", "database": "ok", "unapplied_migrations": len(unapplied)},
            status=503,
        )
    return JsonResponse({"status": "ok", "database": "ok"})
