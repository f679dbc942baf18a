"""Trace and dataset workflows shared by the API, the admin and the worker."""

import json
import os
import random
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from runs.permissions import ADD_DATASET, ADD_TRACE, UserLike, require
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
from tunixops.exceptions import Conflict, InvalidInput, TooLarge

NOT_TRACE_WRITER = (
    "Your account may not upload traces: it needs the traces.add_trace permission "
    "(the submitters group); ask an operator."
)
NOT_DATASET_BUILDER = (
    "Your account may not build datasets: it needs the traces.add_dataset permission "
    "(the submitters group); ask an operator."
)


class DatasetNotFound(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no dataset with key {key!r}")
        self.key = key


def _user(user: UserLike | None) -> User | None:
    return user if isinstance(user, User) and user.is_authenticated else None


def trace_size_bytes(document: Mapping[str, Any]) -> int:
    """What the 1 MB limit measures: the trace as compact UTF-8 JSON."""
    return len(_json(document).encode())


# json.dumps() with these options would build an encoder per call, five times per trace.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _utf8_len(text: str) -> int:
    # isascii() reads a flag CPython keeps on every str: no encoding for the usual case.
    return len(text) if text.isascii() else len(text.encode())


# trace_size_bytes() of a document is its fields' compact JSON plus this frame (the braces,
# the quoted keys, colons and commas): one zero per field stands in for each 1-byte value.
_FRAME_BYTES = trace_size_bytes(dict.fromkeys(Trace.DOCUMENT_FIELDS, 0)) - len(
    Trace.DOCUMENT_FIELDS
)


class _Row(NamedTuple):
    """A trace as stored, its JSON columns already encoded."""

    trace_version: int
    prompt: str
    steps: str
    final_answer: str
    meta: str
    step_count: int
    size_bytes: int


def _encode(data: Mapping[str, Any]) -> _Row:
    """The row of a trace document, with its size measured as trace_size_bytes() measures it,
    from the same JSON that is stored, so each trace is encoded once."""
    steps, meta = _json(data["steps"]), _json(data["meta"])
    size = (
        _FRAME_BYTES
        + _utf8_len(_json(data["trace_version"]))
        + _utf8_len(_json(data["prompt"]))
        + _utf8_len(steps)
        + _utf8_len(_json(data["final_answer"]))
        + _utf8_len(meta)
    )
    return _Row(
        data["trace_version"],
        data["prompt"],
        steps,
        data["final_answer"],
        meta,
        len(data["steps"]),
        size,
    )


def _too_large(size: int) -> list[str]:
    return [f"The trace is {size:,} bytes; the limit is {MAX_TRACE_BYTES:,}."]


# The columns COPY writes, `id` first: the ids are taken from the sequence beforehand, since COPY
# returns none.
_COPY_COLUMNS = ("id", *_Row._fields, "created_at", "created_by_id")


def _store_copy(
    traces: Sequence[Mapping[str, Any]], names: Sequence[str], user_id: int | None
) -> list[tuple[int, datetime]]:
    """PostgreSQL: one COPY for the batch, each row encoded as it is written, so the server
    parses rows while the next ones are encoded and no encoded batch is ever held in memory."""
    table = Trace._meta.db_table
    quote = connection.ops.quote_name
    copy_sql = f"COPY {quote(table)} ({', '.join(map(quote, _COPY_COLUMNS))}) FROM STDIN"
    too_large: dict[str, list[str]] = {}
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, len(traces)],
        )
        ids = sorted(row[0] for row in cursor.fetchall())
        # The COPY goes to psycopg's cursor, past Django's wrapper: errors are wrapped here as
        # the wrapper would (IntegrityError...), and the debug wrapper (DEBUG, or a test
        # capturing queries) still records the statement.
        record = getattr(cursor, "debug_sql", None) or nullcontext
        with (
            connection.wrap_database_errors,
            record(copy_sql),
            cursor.cursor.copy(copy_sql) as copy,
        ):
            for trace_id, name, data in zip(ids, names, traces, strict=True):
                row = _encode(data)
                if row.size_bytes > MAX_TRACE_BYTES:
                    too_large[name] = _too_large(row.size_bytes)
                elif not too_large:  # the batch fails; only the sizes are left to check
                    copy.write_row((trace_id, *row, now, user_id))
    if too_large:
        raise TooLarge("A trace is larger than 1 MB.", code="trace_too_large", fields=too_large)
    return [(trace_id, now) for trace_id in ids]


def _store_orm(
    traces: Sequence[Mapping[str, Any]], names: Sequence[str], user_id: int | None
) -> list[tuple[int, datetime]]:
    """Other databases (SQLite, for the quickstart): bulk_create, which splits the INSERT as
    the database's parameter limit requires."""
    rows = [_encode(data) for data in traces]
    too_large = {
        name: _too_large(row.size_bytes)
        for name, row in zip(names, rows, strict=True)
        if row.size_bytes > MAX_TRACE_BYTES
    }
    if too_large:
        raise TooLarge("A trace is larger than 1 MB.", code="trace_too_large", fields=too_large)
    # The JSON columns take the decoded values; the encoded ones only measured the size here.
    objs = [
        Trace(
            **{field: data[field] for field in Trace.DOCUMENT_FIELDS},
            step_count=row.step_count,
            size_bytes=row.size_bytes,
            created_by_id=user_id,
        )
        for data, row in zip(traces, rows, strict=True)
    ]
    return [(trace.pk, trace.created_at) for trace in Trace.objects.bulk_create(objs)]


def _store(
    traces: Sequence[Mapping[str, Any]], names: Sequence[str], created_by: UserLike | None
) -> list[tuple[int, datetime]]:
    """The one way traces are stored: all of them in one transaction, or none. Answers each
    trace's id and creation time, in input order.

    For a user (`created_by`), which needs `traces.add_trace`; `None` is the system. A trace
    over MAX_TRACE_BYTES fails the batch with 413, naming each such trace by `names`.
    """
    if created_by is not None:
        require(created_by.has_perm(ADD_TRACE), NOT_TRACE_WRITER)
    user = _user(created_by)
    user_id = user.pk if user is not None else None
    store = _store_copy if connection.vendor == "postgresql" else _store_orm
    with transaction.atomic():
        return store(traces, names, user_id)


def _traces(
    traces: Sequence[Mapping[str, Any]],
    stored: Sequence[tuple[int, datetime]],
    created_by: UserLike | None,
) -> list[Trace]:
    """The stored traces as models, for the callers that want them (encoded a second time:
    the batch API answers ids only and never builds these)."""
    user = _user(created_by)
    models = []
    for (trace_id, created_at), data in zip(stored, traces, strict=True):
        row = _encode(data)
        trace = Trace(
            id=trace_id,
            **{field: data[field] for field in Trace.DOCUMENT_FIELDS},
            step_count=row.step_count,
            size_bytes=row.size_bytes,
            created_at=created_at,
            created_by=user,
        )
        # As the ORM leaves a model it has saved: a later save() updates the row.
        trace._state.adding, trace._state.db = False, connection.alias
        models.append(trace)
    return models


def trace_create(*, trace: Mapping[str, Any], created_by: UserLike | None) -> Trace:
    return _traces([trace], _store([trace], ["non_field_errors"], created_by), created_by)[0]


def trace_create_batch(
    *, traces: Sequence[Mapping[str, Any]], created_by: UserLike | None
) -> list[Trace]:
    """All or none, in input order."""
    return _traces(traces, _store(traces, _batch_names(traces), created_by), created_by)


def trace_import_batch(
    *, traces: Sequence[Mapping[str, Any]], created_by: UserLike | None
) -> list[int]:
    """trace_create_batch() for the batch API, which answers ids only: no model per trace."""
    return [trace_id for trace_id, _ in _store(traces, _batch_names(traces), created_by)]


def _batch_names(traces: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"traces.{i}" for i in range(len(traces))]


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
    given, so either way the stored ids are what the build selected and never change. A user
    (`created_by`) needs `traces.add_dataset`; `None` is the system.
    """
    if created_by is not None:
        require(created_by.has_perm(ADD_DATASET), NOT_DATASET_BUILDER)
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
        raise InvalidInput(
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


def _exists(key: str) -> Conflict:
    return Conflict(
        f"Dataset {key} already exists; datasets are immutable, build a new version.",
        code="dataset_exists",
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
