"""Reads of traces and datasets shared by the API, the admin and the worker."""

import json
from collections.abc import Iterator

from django.db.models import QuerySet
from django.http import Http404

from traces.formats import Renderer
from traces.models import MAX_TRACE_BYTES, Dataset, DatasetItem, MetaFilters, Trace
from tunixops.text import has_bad_chars

# Traces read per export query: as many as fit in EXPORT_CHUNK_BYTES going by the dataset's
# largest trace, so round trips do not dominate with small traces and memory stays bounded with
# 1 MB ones.
EXPORT_CHUNK_BYTES = 8 * 1024 * 1024
EXPORT_CHUNK_MAX = 500


def dataset_keys_newest_first() -> QuerySet[Dataset, str]:
    return Dataset.objects.order_by("-created_at").values_list("key", flat=True)


def dataset_exists(key: str) -> bool:
    return not has_bad_chars(key) and Dataset.objects.filter(key=key).exists()


def dataset_get_or_404(key: str) -> Dataset:
    # No key holds a NUL or a lone surrogate, and PostgreSQL refuses them in a query (a 500):
    # such a key is unknown.
    if has_bad_chars(key):
        raise Http404("No such dataset.")
    try:
        return Dataset.objects.select_related("created_by").get(key=key)
    except Dataset.DoesNotExist as exc:
        raise Http404("No such dataset.") from exc


def trace_get_or_404(trace_id: str | int) -> Trace:
    """A malformed id is as unknown as a missing one: both are 404."""
    try:
        return Trace.objects.select_related("created_by").get(pk=int(trace_id))
    except (ValueError, OverflowError, Trace.DoesNotExist) as exc:
        raise Http404("No such trace.") from exc


def trace_list(*, meta: MetaFilters | None = None) -> QuerySet[Trace]:
    """Newest first, without the large columns a listing does not show."""
    traces = Trace.objects.matching(meta or {}).select_related("created_by")
    return traces.defer("prompt", "steps", "final_answer").order_by("-id")


def export_chunk_size(dataset: Dataset) -> int:
    largest = int(dataset.stats.get("bytes_max") or MAX_TRACE_BYTES)
    return max(1, min(EXPORT_CHUNK_MAX, EXPORT_CHUNK_BYTES // largest))


def dataset_jsonl_chunks(dataset: Dataset, render: Renderer) -> Iterator[bytes]:
    """The dataset as JSONL, one query and one bytes chunk per `export_chunk_size` traces.

    Each chunk is read by position range rather than from an open cursor, so the iterator holds no
    database state between chunks and may be advanced from any thread.
    """
    size = export_chunk_size(dataset)
    for start in range(0, dataset.trace_count, size):
        rows = (
            DatasetItem.objects.filter(
                dataset=dataset, position__gte=start, position__lt=start + size
            )
            .order_by("position")
            .values_list("trace__prompt", "trace__steps", "trace__final_answer")
        )
        yield b"".join(_jsonl_line(render(*row)) for row in rows)


def _jsonl_line(record: dict[str, str]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"
