"""Reasoning traces, and the datasets built from them that runs train on."""

from typing import Any

from django.conf import settings
from django.db import connections, models
from django.db.models import Q
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Length
from django.db.models.lookups import GreaterThanOrEqual, LessThanOrEqual

# The limits of issue #7; the serializers enforce them with field errors, the constraints below
# keep the table honest whatever writes to it.
MAX_TEXT_CHARS = 50_000
MAX_STEPS = 1_000
MAX_STEP_CHARS = 20_000
MAX_TRACE_BYTES = 1024 * 1024
MAX_BATCH = 1_000
MAX_DATASET_TRACES = 100_000

# A meta filter: key -> the JSON scalars any of which the trace's meta value may equal.
MetaScalar = str | int | float | bool
MetaFilters = dict[str, list[MetaScalar]]


def _length_between(field: str, low: int, high: int) -> Q:
    return Q(GreaterThanOrEqual(Length(field), low), LessThanOrEqual(Length(field), high))


class TraceQuerySet(models.QuerySet["Trace"]):
    def matching(self, filters: MetaFilters) -> "TraceQuerySet":
        """Traces whose meta has, for every key, one of the given values."""
        traces = self
        for n, (key, values) in enumerate(filters.items()):
            if connections[self.db].vendor == "postgresql":
                # `meta @> {...}` is what the GIN index `tunix_traces_meta_gin` serves.
                condition = Q()
                for value in values:
                    condition |= Q(meta__contains={key: value})
                traces = traces.filter(condition)
            else:
                # SQLite has no JSON containment; an aliased key transform compares the same
                # way and, unlike `meta__<key>=`, cannot mistake a key for a lookup name.
                alias = f"meta_filter_{n}"
                condition = Q()
                for value in values:
                    condition |= Q(**{alias: value})
                traces = traces.alias(**{alias: KeyTransform(key, "meta")}).filter(condition)
        return traces


class Trace(models.Model):
    # What a client sends and gets back; the other columns are derived or bookkeeping.
    DOCUMENT_FIELDS = ("trace_version", "prompt", "steps", "final_answer", "meta")

    trace_version = models.PositiveSmallIntegerField(default=1)
    prompt = models.TextField()
    # `[{i, type, content}]`, stored in order of `i`.
    steps = models.JSONField()
    final_answer = models.TextField()
    meta = models.JSONField(default=dict, blank=True)
    # Kept beside the JSON so dataset stats and listings never read the steps.
    step_count = models.PositiveIntegerField()
    # UTF-8 size of the trace as compact JSON; the 1 MB limit applies to this.
    size_bytes = models.PositiveIntegerField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tunix_traces",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TraceQuerySet.as_manager()

    class Meta:
        db_table = "tunix_traces"
        # Newest first: the primary key index serves listings and `latest` selections.
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=_length_between("prompt", 1, MAX_TEXT_CHARS),
                name="tunix_traces_prompt_length",
            ),
            models.CheckConstraint(
                condition=_length_between("final_answer", 1, MAX_TEXT_CHARS),
                name="tunix_traces_final_answer_length",
            ),
            models.CheckConstraint(
                condition=Q(step_count__gte=1, step_count__lte=MAX_STEPS),
                name="tunix_traces_step_count",
            ),
            models.CheckConstraint(
                condition=Q(size_bytes__lte=MAX_TRACE_BYTES), name="tunix_traces_size"
            ),
            models.CheckConstraint(
                condition=Q(trace_version__gte=1), name="tunix_traces_version_min"
            ),
        ]

    def __str__(self) -> str:
        return f"trace {self.pk}"

    def document(self) -> dict[str, Any]:
        """The trace as the API takes it in."""
        return {field: getattr(self, field) for field in self.DOCUMENT_FIELDS}


class DatasetSelection(models.TextChoices):
    LATEST = "latest"
    RANDOM = "random"


class Dataset(models.Model):
    """A frozen list of traces: rebuilding from the same traces gives the same items."""

    # `name-version`, what a run's `dataset_key` names.
    key = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=100)
    version = models.CharField(max_length=50)
    filters = models.JSONField(default=dict, blank=True)
    selection = models.CharField(max_length=10, choices=DatasetSelection.choices)
    # Set exactly when the selection is random, so a random build can be repeated.
    seed = models.BigIntegerField(null=True, blank=True)
    limit = models.PositiveIntegerField()
    trace_count = models.PositiveIntegerField()
    stats = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tunix_datasets",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tunix_datasets"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(selection__in=DatasetSelection.values),
                name="tunix_datasets_selection_valid",
            ),
            models.CheckConstraint(
                condition=Q(selection=DatasetSelection.LATEST, seed__isnull=True)
                | Q(selection=DatasetSelection.RANDOM, seed__isnull=False),
                name="tunix_datasets_seed_iff_random",
            ),
        ]

    def __str__(self) -> str:
        return self.key

    def trace_ids(self) -> list[int]:
        return list(self.items.order_by("position").values_list("trace_id", flat=True))


class DatasetItem(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="items")
    # PROTECT: deleting a trace a dataset holds would make that dataset unreproducible.
    trace = models.ForeignKey(Trace, on_delete=models.PROTECT, related_name="dataset_items")
    # 0-based order of the trace in the dataset and in its export.
    position = models.PositiveIntegerField()

    class Meta:
        db_table = "tunix_dataset_items"
        ordering = ["dataset", "position"]
        constraints = [
            # Also the index each export chunk reads: `WHERE dataset_id = %s AND position
            # BETWEEN ...`.
            models.UniqueConstraint(
                fields=["dataset", "position"], name="tunix_dataset_items_position_uniq"
            ),
            models.UniqueConstraint(
                fields=["dataset", "trace"], name="tunix_dataset_items_trace_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset_id}#{self.position}"
