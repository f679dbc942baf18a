import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED}
)
ACTIVE_STATUSES = frozenset({RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED})


class RunQuerySet(models.QuerySet["Run"]):
    def pending(self) -> "RunQuerySet":
        return self.filter(status=RunStatus.PENDING)

    def active(self) -> "RunQuerySet":
        return self.filter(status__in=ACTIVE_STATUSES)

    def claimable(self) -> "RunQuerySet":
        # Served by the partial index `tunix_runs_claim_idx`.
        return self.pending().order_by("-priority", "created_at")

    def stale(self, now: datetime, lease_seconds: float) -> "RunQuerySet":
        return self.active().filter(heartbeat_at__lt=now - timedelta(seconds=lease_seconds))


class Run(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, blank=True)
    recipe = models.CharField(max_length=100)
    model_id = models.CharField(max_length=200, blank=True)
    # NULL means "no dataset": the recipe trains on its built-in data.
    dataset_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    config = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    timeout_seconds = models.PositiveIntegerField()
    cancel_grace_seconds = models.FloatField(null=True, blank=True)
    max_attempts = models.PositiveSmallIntegerField(default=1)
    attempt = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(
        max_length=20, choices=RunStatus.choices, default=RunStatus.PENDING, db_index=False
    )
    status_reason = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tunix_runs",
    )
    requeued_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="requeues"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stdout_tail = models.TextField(blank=True)
    stderr_tail = models.TextField(blank=True)
    log_bytes = models.BigIntegerField(default=0)
    log_truncated = models.BooleanField(default=False)

    objects = RunQuerySet.as_manager()

    class Meta:
        db_table = "tunix_runs"
        ordering = ["-created_at"]
        indexes = [
            # The worker's claim query: pending runs by priority, then age.
            models.Index(
                fields=["-priority", "created_at"],
                name="tunix_runs_claim_idx",
                condition=Q(status="pending"),
            ),
            # Run lists, newest first, optionally filtered by status or recipe.
            models.Index(fields=["-created_at"], name="tunix_runs_created_idx"),
            models.Index(fields=["status", "-created_at"], name="tunix_runs_status_idx"),
            models.Index(fields=["recipe", "-created_at"], name="tunix_runs_recipe_idx"),
            # The lease sweep looks for active runs with an old heartbeat.
            models.Index(
                fields=["heartbeat_at"],
                name="tunix_runs_lease_idx",
                condition=Q(status__in=["running", "cancel_requested"]),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="tunix_runs_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(max_attempts__gte=1), name="tunix_runs_attempts_min"
            ),
        ]

    def __str__(self) -> str:
        return self.name or str(self.id)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


class LogStream(models.TextChoices):
    STDOUT = "stdout"
    STDERR = "stderr"


class LogChunk(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=6, choices=LogStream.choices)
    chunk = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tunix_run_log_chunks"
        ordering = ["run", "seq"]
        constraints = [
            # Also the index every log read uses: `WHERE run_id = %s AND seq > %s ORDER BY seq`.
            models.UniqueConstraint(fields=["run", "seq"], name="tunix_log_chunks_run_seq_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq}"


class RunMetric(models.Model):
    """One training step's numbers, parsed by the worker from the run's `tunixops.metric` lines.

    `values` maps each metric name (loss, perplexity, learning_rate, ...) to a number, or to null
    where the recipe reported a non-finite one. A step reported again (a retried attempt that
    resumed from a checkpoint) replaces the earlier values.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "tunix_run_metrics"
        ordering = ["run", "step"]
        constraints = [
            # Also the index of every series read: `WHERE run_id = %s AND step > %s ORDER BY step`,
            # and the conflict target of the worker's upsert.
            models.UniqueConstraint(fields=["run", "step"], name="tunix_run_metrics_run_step_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}@{self.step}"


class WorkerHeartbeatQuerySet(models.QuerySet["WorkerHeartbeat"]):
    def fresh(self, now: datetime, lease_seconds: float) -> "WorkerHeartbeatQuerySet":
        return self.filter(last_seen__gte=now - timedelta(seconds=lease_seconds))

    def forgotten(self, now: datetime, after_seconds: float) -> "WorkerHeartbeatQuerySet":
        return self.filter(last_seen__lt=now - timedelta(seconds=after_seconds))


class WorkerHeartbeat(models.Model):
    """A worker process's sign of life, renewed every heartbeat even while it has no run.

    Readiness counts the fresh ones; metrics export each one's `last_seen`. A worker that stops
    cleanly deletes its row; a dead worker's row stays until it is forgotten, so its silence shows.
    """

    worker_id = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    objects = WorkerHeartbeatQuerySet.as_manager()

    class Meta:
        db_table = "tunix_worker_heartbeats"
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return self.worker_id
