"""Trace and dataset workflows shared by the API, the admin and the worker."""

import json
import os
import random
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction

from traces import selectors
from traces.formats import FORMATS
from traces.models import (
    MAX_TRACE_BYTES,
    Dataset,
    DatasetItem,
    DatasetSelection,
    MetaFilters,
    Trace,
)
from tunixops.api import ApplicationError

UserLike = User | AnonymousUser


class DatasetNotFound(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no dataset with key {key!r}")
        self.key = key


def _user(user: UserLike | None) -> User | None:
    return user if isinstance(user, User) and user.is_authenticated else None


def trace_size_bytes(document: Mapping[str, Any]) -> int:
    """What the 1 MB limit measures: the trace as compact UTF-8 JSON."""
    return len(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode())


def _create(
    traces: Sequence[Mapping[str, Any]], names: Sequence[str], created_by: UserLike | None
) -> list[Trace]:
    """The one way traces are stored: a single INSERT ... RETURNING for the whole batch."""
    user = _user(created_by)
    rows, too_large = [], {}
    for name, data in zip(names, traces, strict=True):
        document = {key: data[key] for key in Trace.DOCUMENT_FIELDS}
        size = trace_size_bytes(document)
        if size > MAX_TRACE_BYTES:
            too_large[name] = [f"The trace is {size:,} bytes; the limit is {MAX_TRACE_BYTES:,}."]
        rows.append(
            Trace(
                **document,
                step_count=len(document["steps"]),
                size_bytes=size,
                created_by=user,
            )
        )
    if too_large:
        raise ApplicationError(
            "A trace is larger than 1 MB.",
            code="trace_too_large",
            status_code=413,
            fields=too_large,
        )
    with transaction.atomic():
        # One statement whatever the batch size on PostgreSQL; the ids come back from RETURNING.
        return Trace.objects.bulk_create(rows)


def trace_create(*, trace: Mapping[str, Any], created_by: UserLike | None) -> Trace:
    return _create([trace], ["non_field_errors"], created_by)[0]


def trace_create_batch(
    *, traces: Sequence[Mapping[str, Any]], created_by: UserLike | None
) -> list[Trace]:
    """All or none, in input order."""
    return _create(traces, [f"traces.{i}" for i in range(len(traces))], created_by)


def _stats(rows: Sequence[tuple[int, int, int]]) -> dict[str, float | int]:
    steps = [row[1] for row in rows]
    sizes = [row[2] for row in rows]
    return {
        "steps_total": sum(steps),
        "steps_min": min(steps),
        "steps_max": max(steps),
        "steps_mean": round(sum(steps) / len(steps), 3),
        "bytes_total": sum(sizes),
        "bytes_mean": round(sum(sizes) / len(sizes), 3),
        "bytes_max": max(sizes),
    }


def dataset_build(
    *,
    name: str,
    version: str,
    created_by: UserLike | None,
    filters: MetaFilters | None = None,
    limit: int,
    selection: str = DatasetSelection.LATEST,
    seed: int | None = None,
) -> Dataset:
    """Select traces and freeze their ids as the dataset `name-version`.

    `latest` takes the newest matching traces, newest first. `random` samples from the matching
    traces in id order with `random.Random(seed)`; a seed is chosen and recorded when none is
    given, so either way the stored ids are what the build selected and never change.
    """
    key = f"{name}-{version}"
    filters = filters or {}
    if selection == DatasetSelection.RANDOM and seed is None:
        seed = secrets.randbelow(2**31)
    if selectors.dataset_exists(key):
        raise _exists(key)
    matching = Trace.objects.matching(filters).values_list("id", "step_count", "size_bytes")
    if selection == DatasetSelection.LATEST:
        rows = list(matching.order_by("-id")[:limit])
    else:
        candidates = list(matching.order_by("id"))
        # Seeded for reproducibility, not secrecy.
        sampler = random.Random(seed)  # noqa: S311
        rows = sampler.sample(candidates, min(limit, len(candidates)))
    if not rows:
        raise ApplicationError(
            "No trace matches; a dataset needs at least one.",
            code="empty_dataset",
            fields={"filters": ["No trace matches these filters."]},
        )
    with transaction.atomic():
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(
                    key=key,
                    name=name,
                    version=version,
                    filters=filters,
                    selection=selection,
                    seed=seed,
                    limit=limit,
                    trace_count=len(rows),
                    stats=_stats(rows),
                    created_by=_user(created_by),
                )
        except IntegrityError as exc:
            # Another build of the same key committed between the check above and this insert.
            raise _exists(key) from exc
        DatasetItem.objects.bulk_create(
            DatasetItem(dataset=dataset, trace_id=row[0], position=position)
            for position, row in enumerate(rows)
        )
    return dataset


def _exists(key: str) -> ApplicationError:
    return ApplicationError(
        f"Dataset {key} already exists; datasets are immutable, build a new version.",
        code="dataset_exists",
        status_code=409,
        fields={"version": [f"{key} already exists."]},
    )


def dataset_write_jsonl(*, key: str, path: Path) -> int:
    """Write the dataset's `tunix_sft` JSONL to `path` atomically; return the record count.

    The records are those of the export endpoint, from the same iterator. The file appears
    complete or not at all: it is written beside `path` and renamed over it.
    """
    try:
        dataset = Dataset.objects.get(key=key)
    except Dataset.DoesNotExist as exc:
        raise DatasetNotFound(key) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    records = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in selectors.dataset_jsonl_chunks(dataset, FORMATS["tunix_sft"]):
                out.write(chunk)
                # JSON escapes newlines inside strings, so each one ends a record.
                records += chunk.count(b"\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return records
