"""Reads of runs shared by the API, the pages and the live-log stream."""

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from django.db import connection
from django.db.models import Count, F, Q, QuerySet, Sum, Value, Window
from django.db.models.functions import Coalesce, Mod, RowNumber
from django.http import Http404
from django.utils import timezone

from runs.entrypoints.protocol import MetricPoint
from runs.models import LogChunk, Run, RunMetric, WorkerHeartbeat
from runs.permissions import UserLike, visible_runs_q
from runs.recipes import Recipe, all_recipes
from tunixops.exceptions import InvalidInput, NotFound


def run_get_or_404(run_id: str | uuid.UUID, *, user: UserLike | None) -> Run:
    """The run if `user` may see it (`None`: the system sees all).

    A malformed id, a missing run and one the user may not see (TUNIX_RUN_VISIBILITY=owner) are
    all the same 404, so ids do not leak.
    """
    runs = Run.objects.select_related("created_by")
    if user is not None:
        runs = runs.filter(visible_runs_q(user))
    try:
        pk = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
        return runs.prefetch_related("attempts").get(pk=pk)
    except (ValueError, Run.DoesNotExist) as exc:
        raise Http404("No such run.") from exc


# How a run list may be sorted: newest first (the default), or by disk usage.
RUN_ORDERINGS = {
    "-created_at": ("-created_at",),
    "created_at": ("created_at",),
    "-artifact_bytes": ("-artifact_bytes", "-created_at"),
    "artifact_bytes": ("artifact_bytes", "-created_at"),
}


def run_list(
    *,
    user: UserLike | None,
    status: str | None = None,
    recipe: str | None = None,
    dataset_key: str | None = None,
    created_by: str | None = None,
    sort: str = "-created_at",
) -> QuerySet[Run]:
    runs = (
        Run.objects.select_related("created_by")
        .prefetch_related("attempts")
        .order_by(*RUN_ORDERINGS[sort])
    )
    if user is not None:
        runs = runs.filter(visible_runs_q(user))
    if status:
        runs = runs.filter(status=status)
    if recipe:
        runs = runs.filter(recipe=recipe)
    if dataset_key:
        runs = runs.filter(dataset_id=dataset_key)
    if created_by:
        runs = runs.filter(created_by__username=created_by)
    return runs


def recipe_list() -> list[Recipe]:
    """Every recipe a run may name (built in and from TUNIX_RECIPES_FILE), by name."""
    recipes = all_recipes()
    return [recipes[name] for name in sorted(recipes)]


# -- training metrics ---------------------------------------------------------------------------


# Each point's values are the step's TensorBoard values overlaid with its `tunixops.metric` values
# (runs/models.py, RunMetric): where both name a metric, the metric line wins.


@dataclass(frozen=True)
class MetricSeries:
    run_id: uuid.UUID
    points: list[MetricPoint]
    total: int  # points after `since_step`, before downsampling
    downsampled: bool
    last_step: int | None


def metric_series(run_id: uuid.UUID, *, since_step: int = -1, max_points: int) -> MetricSeries:
    """The run's points after `since_step`, at most `max_points` of them, the last always kept.

    A longer series is thinned evenly in the database: every k-th point counted back from the
    last, with k the smallest stride that fits.
    """
    rows = RunMetric.objects.filter(run_id=run_id, step__gt=since_step).order_by("step")
    total = rows.count()
    downsampled = total > max_points
    if downsampled:
        stride = -(-total // max_points)
        rows = rows.annotate(
            position=Window(RowNumber(), order_by=F("step").asc()),
            keep=Mod(Value(total) - F("position"), Value(stride)),
        ).filter(keep=0)
    points = [
        MetricPoint(step, {**tb_values, **values})
        for step, values, tb_values in rows.values_list("step", "values", "tb_values")
    ]
    return MetricSeries(
        run_id=run_id,
        points=points,
        total=total,
        downsampled=downsampled,
        last_step=points[-1].step if points else None,
    )


def metric_points_after(run_id: uuid.UUID, after_step: int, limit: int = 500) -> list[MetricPoint]:
    """The next `limit` points after `after_step`, in step order (for live streams)."""
    rows = (
        RunMetric.objects.filter(run_id=run_id, step__gt=after_step)
        .order_by("step")
        .values_list("step", "values", "tb_values")[:limit]
    )
    return [MetricPoint(step, {**tb_values, **values}) for step, values, tb_values in rows]


def last_metric_step(run_id: uuid.UUID) -> int:
    """The run's latest step so far, or -1 before its first."""
    step = (
        RunMetric.objects.filter(run_id=run_id)
        .order_by("-step")
        .values_list("step", flat=True)
        .first()
    )
    return -1 if step is None else step


# -- log snapshot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    seq: int
    stream: str
    text: str


@dataclass(frozen=True)
class LogSnapshot:
    run_id: uuid.UUID
    lines: list[LogLine]
    last_seq: int
    truncated: bool


SNAPSHOT_READ_CHUNKS = 100


def split_lines(chunk: str) -> list[str]:
    """A chunk's lines without their newlines; an unterminated end is a line of its own."""
    lines = chunk.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def log_snapshot(run_id: uuid.UUID, lines: int = 200) -> LogSnapshot:
    """The last `lines` lines of a run's log, and the seq to resume a stream after."""
    newest_first = (
        LogChunk.objects.filter(run_id=run_id)
        .order_by("-seq")
        .values_list("seq", "stream", "chunk")
    )
    picked: list[LogLine] = []
    last_seq = 0
    truncated = False
    before: int | None = None
    while not truncated:
        page = newest_first if before is None else newest_first.filter(seq__lt=before)
        rows = list(page[:SNAPSHOT_READ_CHUNKS])
        if not rows:
            break
        last_seq = last_seq or rows[0][0]
        for seq, stream, chunk in rows:
            for text in reversed(split_lines(chunk)):
                if len(picked) == lines:
                    truncated = True
                    break
                picked.append(LogLine(seq, stream, text))
            if truncated:
                break
        before = rows[-1][0]
    picked.reverse()
    return LogSnapshot(run_id=run_id, lines=picked, last_seq=last_seq, truncated=truncated)


# -- disk usage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserUsage:
    username: str | None  # None: runs whose creator is gone, or made by the system
    runs: int
    pinned_runs: int
    artifact_bytes: int


@dataclass(frozen=True)
class StorageUsage:
    total_bytes: int
    runs: int
    pinned_runs: int
    pinned_bytes: int
    users: list[UserUsage]
    largest_runs: list[Run]
    # PostgreSQL's on-disk size of the big tables (with indexes and TOAST), by table; empty on
    # SQLite.
    tables: dict[str, int]


LARGEST_RUNS_SHOWN = 10
BIG_TABLES = ("tunix_run_log_chunks", "tunix_run_metrics", "tunix_run_artifacts", "tunix_runs")


def table_sizes() -> dict[str, int]:
    if connection.vendor != "postgresql":
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
            "WHERE relname = ANY(%s) AND relkind = 'r'",
            [list(BIG_TABLES)],
        )
        return {name: int(size) for name, size in cursor.fetchall()}


def storage_usage() -> StorageUsage:
    """Artifact bytes in total and per user (from each run's `artifact_bytes`, one scan of the
    runs table), the largest runs, and the database's big tables."""
    pinned = Q(pinned=True)
    per_user = (
        Run.objects.order_by()
        .values("created_by__username")
        .annotate(
            runs=Count("pk"),
            pinned_runs=Count("pk", filter=pinned),
            size=Coalesce(Sum("artifact_bytes"), 0),
        )
        .order_by("-size", "created_by__username")
    )
    users = [
        UserUsage(
            username=row["created_by__username"],
            runs=row["runs"],
            pinned_runs=row["pinned_runs"],
            artifact_bytes=row["size"],
        )
        for row in per_user
    ]
    pinned_bytes = Run.objects.filter(pinned).aggregate(size=Coalesce(Sum("artifact_bytes"), 0))
    largest = Run.objects.select_related("created_by").filter(artifact_bytes__gt=0)
    return StorageUsage(
        total_bytes=sum(u.artifact_bytes for u in users),
        runs=sum(u.runs for u in users),
        pinned_runs=sum(u.pinned_runs for u in users),
        pinned_bytes=pinned_bytes["size"],
        users=users,
        largest_runs=list(largest.order_by("-artifact_bytes", "-created_at")[:LARGEST_RUNS_SHOWN]),
        tables=table_sizes(),
    )


# -- comparing runs -------------------------------------------------------------------------------

MAX_COMPARED = 10
# Fields of the run itself that the comparison lists beside its config keys.
COMPARED_FIELDS = (("recipe", "recipe"), ("model_id", "model_id"), ("dataset_key", "dataset_id"))

Goal = Literal["min", "max"]
# Which way is better, by a word in the metric's name (`eval/loss`, `train_accuracy`); metrics
# named otherwise (learning_rate, grad_norm) have no best value.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ppl", "error", "err", "wer", "cer"})
HIGHER_IS_BETTER = frozenset({"accuracy", "acc", "reward", "score", "f1", "bleu", "rouge"})


def metric_goal(name: str) -> Goal | None:
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & LOWER_IS_BETTER:
        return "min"
    if words & HIGHER_IS_BETTER:
        return "max"
    return None


def parse_run_ids(values: list[str]) -> list[uuid.UUID]:
    """Run ids from `?ids=A,B,C` (or repeated `ids=`), in order, each once; 1 to 10 of them."""
    raw = [part.strip() for value in values for part in value.split(",")]
    raw = [part for part in raw if part]
    if not raw:
        raise _bad_ids("Name the runs to compare: ?ids=<run id>,<run id>.")
    ids: list[uuid.UUID] = []
    for part in raw:
        try:
            run_id = uuid.UUID(part)
        except ValueError:
            shown = part if len(part) <= 40 else part[:40] + "…"
            raise _bad_ids(f"{shown!r} is not a run id.") from None
        if run_id not in ids:
            ids.append(run_id)
    if len(ids) > MAX_COMPARED:
        raise _bad_ids(f"At most {MAX_COMPARED} runs can be compared; {len(ids)} were given.")
    return ids


def _bad_ids(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_ids", fields={"ids": [message]})


def runs_for_compare(ids: list[uuid.UUID], *, user: UserLike | None) -> list[Run]:
    """The runs, in the order asked; NotFound names any that do not exist, or that `user` may
    not see (TUNIX_RUN_VISIBILITY=owner): the same answer, so ids do not leak."""
    runs = Run.objects.select_related("created_by").filter(pk__in=ids)
    if user is not None:
        runs = runs.filter(visible_runs_q(user))
    found = {run.pk: run for run in runs}
    missing = [str(run_id) for run_id in ids if run_id not in found]
    if missing:
        raise NotFound(
            f"No such run: {', '.join(missing)}.", code="unknown_runs", fields={"ids": missing}
        )
    return [found[run_id] for run_id in ids]


@dataclass(frozen=True)
class Difference:
    key: str  # a run field (`recipe`) or `config.<key>`
    values: dict[uuid.UUID, Any]  # by run id; a run without the key is left out


@dataclass(frozen=True)
class Comparison:
    runs: list[Run]
    series: dict[uuid.UUID, MetricSeries]
    names: list[str]  # every metric name of every run, sorted
    # Each run's value per metric at the last step that reported it; None if that value was not
    # finite (a diverged run is not the best because of an earlier value).
    final: dict[uuid.UUID, dict[str, float | None]]
    best: dict[str, list[uuid.UUID]]  # per metric with a goal: the run(s) with the best final
    goals: dict[str, Goal | None]
    differences: list[Difference]


def _same(values: list[Any]) -> bool:
    # JSON text, so that true and 1, or 1 and "1", differ as they do in the config.
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def config_differences(runs: list[Run]) -> list[Difference]:
    """The run fields and config keys whose values are not the same for every run."""
    out: list[Difference] = []
    for label, attribute in COMPARED_FIELDS:
        values = {run.pk: getattr(run, attribute) for run in runs}
        if not _same(list(values.values())):
            out.append(Difference(label, values))
    keys = sorted({key for run in runs for key in run.config})
    for key in keys:
        present = {run.pk: run.config[key] for run in runs if key in run.config}
        if len(present) < len(runs) or not _same(list(present.values())):
            out.append(Difference(f"config.{key}", present))
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# A metric's final value is looked for among the run's last this many steps.
FINAL_LOOKBACK_STEPS = 100


def final_values(run_id: uuid.UUID) -> dict[str, float | None]:
    """Each metric's value at the latest step that reported it (None where not finite), among
    the run's last FINAL_LOOKBACK_STEPS steps: one short index scan, however long the run."""
    rows = (
        RunMetric.objects.filter(run_id=run_id)
        .order_by("-step")
        .values_list("values", "tb_values")[:FINAL_LOOKBACK_STEPS]
    )
    out: dict[str, float | None] = {}
    for values, tb_values in rows:
        for name, value in {**tb_values, **values}.items():
            if name not in out:
                out[name] = value if _finite(value) else None
    return out


def best_runs(
    final: dict[uuid.UUID, dict[str, float | None]], goals: dict[str, Goal | None]
) -> dict[str, list[uuid.UUID]]:
    best: dict[str, list[uuid.UUID]] = {}
    for name, goal in goals.items():
        values = {
            run_id: value
            for run_id, by_name in final.items()
            if (value := by_name.get(name)) is not None
        }
        if goal is None or not values:
            continue
        target = min(values.values()) if goal == "min" else max(values.values())
        best[name] = [run_id for run_id, value in values.items() if value == target]
    return best


def run_title(run: Run) -> str:
    """How a comparison names a run: its name, or the start of its id."""
    return run.name or str(run.pk)[:8]


def metric_order(names: set[str]) -> list[str]:
    """Loss first, then the others by name."""
    return sorted(names, key=lambda name: (name != "loss", name))


def run_comparison(runs: list[Run], *, max_points: int | None) -> Comparison:
    """Side by side: each run's metric series (thinned as the metrics endpoint does; none when
    `max_points` is None), its final values with the best per metric, and where their settings
    differ."""
    series = (
        {run.pk: metric_series(run.pk, max_points=max_points) for run in runs}
        if max_points is not None
        else {}
    )
    final = {run.pk: final_values(run.pk) for run in runs}
    found = {name for values in final.values() for name in values}
    found |= {name for one in series.values() for point in one.points for name in point.values}
    names = metric_order(found)
    goals = {name: metric_goal(name) for name in names}
    return Comparison(
        runs=runs,
        series=series,
        names=names,
        final=final,
        best=best_runs(final, goals),
        goals=goals,
        differences=config_differences(runs),
    )


# -- pools ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSummary:
    pool: str
    live_workers: list[str]
    draining_workers: list[str]
    queue_depth: int


def pool_summaries(*, lease_seconds: float) -> list[PoolSummary]:
    """Every pool a live worker serves or a pending run names, with its workers and queue."""
    live: dict[str, list[str]] = {}
    draining: dict[str, list[str]] = {}
    fresh = WorkerHeartbeat.objects.fresh(timezone.now(), lease_seconds)
    for worker_id, pools, is_draining in fresh.values_list("worker_id", "pools", "draining"):
        for pool in pools:
            (draining if is_draining else live).setdefault(pool, []).append(worker_id)
    queued = dict(
        Run.objects.pending()
        .order_by()
        .values("pool")
        .annotate(n=Count("pk"))
        .values_list("pool", "n")
    )
    names = sorted(set(live) | set(draining) | set(queued))
    return [
        PoolSummary(
            pool=name,
            live_workers=sorted(live.get(name, [])),
            draining_workers=sorted(draining.get(name, [])),
            queue_depth=queued.get(name, 0),
        )
        for name in names
    ]
