"""Reads of runs shared by the API and the pages."""

import uuid

from django.db.models import QuerySet
from django.http import Http404

from runs.models import Run


def run_get_or_404(run_id: str | uuid.UUID) -> Run:
    """A malformed id is as unknown as a missing one: both are 404."""
    try:
        pk = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
        return Run.objects.select_related("created_by").get(pk=pk)
    except (ValueError, Run.DoesNotExist) as exc:
        raise Http404("No such run.") from exc


def run_list(
    *,
    status: str | None = None,
    recipe: str | None = None,
    dataset_key: str | None = None,
    created_by: str | None = None,
) -> QuerySet[Run]:
    runs = Run.objects.select_related("created_by").order_by("-created_at")
    if status:
        runs = runs.filter(status=status)
    if recipe:
        runs = runs.filter(recipe=recipe)
    if dataset_key:
        runs = runs.filter(dataset_key=dataset_key)
    if created_by:
        runs = runs.filter(created_by__username=created_by)
    return runs
