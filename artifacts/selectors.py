"""Reads of the artifact registry shared by the API and the admin."""

from typing import TypedDict

from django.db.models import Count, Max, QuerySet, Sum
from django.http import Http404

from artifacts.models import Artifact
from runs.models import Run

# Ids and steps in URLs are plain ASCII digits; `int()` alone would also take " 7", "+7", "7_0"
# and non-ASCII digits. The bound keeps them inside a 64-bit column.
_MAX_DIGITS = 18


def _parse_id(value: str) -> int | None:
    if not value or len(value) > _MAX_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def artifact_list(*, run: Run) -> QuerySet[Artifact]:
    return Artifact.objects.filter(run=run).order_by("name")


def artifact_get_or_404(*, run: Run, artifact_id: str) -> Artifact:
    """Another run's artifact is as unknown as a missing one."""
    pk = _parse_id(artifact_id)
    if pk is None:
        raise Http404("No such artifact.")
    try:
        return Artifact.objects.get(pk=pk, run=run)
    except Artifact.DoesNotExist as exc:
        raise Http404("No such artifact.") from exc


class CheckpointSummary(TypedDict):
    step: int
    size_bytes: int
    file_count: int
    created_at: object


def checkpoint_list(*, run: Run) -> list[CheckpointSummary]:
    """Committed Orbax steps, oldest first; `created_at` is when the step's last file registered."""
    rows = (
        Artifact.objects.filter(run=run, step__isnull=False)
        .values("step")
        .annotate(
            size_bytes=Sum("size_bytes"), file_count=Count("id"), created_at=Max("created_at")
        )
        .order_by("step")
    )
    return [
        CheckpointSummary(
            step=row["step"],
            size_bytes=row["size_bytes"],
            file_count=row["file_count"],
            created_at=row["created_at"],
        )
        for row in rows
    ]


def checkpoint_files_or_404(*, run: Run, step: str) -> list[Artifact]:
    number = _parse_id(step)
    files = (
        list(Artifact.objects.filter(run=run, step=number).order_by("name"))
        if number is not None
        else []
    )
    if not files:
        raise Http404("No such checkpoint step.")
    return files
