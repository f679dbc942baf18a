import uuid
from collections.abc import Collection
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from runs import retry_rules


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

    def claimable(self, now: datetime | None = None) -> "RunQuerySet":
        # Served by the partial index `tunix_runs_claim_idx`. A retry waits out its backoff.
        now = now or timezone.now()
        return (
            self.pending()
            .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
            .order_by("-priority", "created_at")
        )

    def claimable_by(
        self,
        *,
        pools: Collection[str],
        free_devices: int,
        total_devices: int,
        executors: Collection[str] = ("local",),
    ) -> "RunQuerySet":
        """What a worker serving these pools with these devices may claim now, best first.

        Only runs of the worker's pools, that fit its free devices. And a device run waits while
        a run ahead of it in the queue (higher priority, or as high and older) needs more devices
        than are free but no more than this worker has: the worker keeps its freed devices for
        that large run instead of letting a stream of small runs starve it. Runs without devices
        never wait. Only runs of an executor the worker can use (a worker without
        `RAY_ADDRESS` leaves Ray runs to one that has it).
        """
        blocked_by = Run.objects.filter(
            status=RunStatus.PENDING,
            pool__in=pools,
            devices__gt=free_devices,
            devices__lte=total_devices,
        ).filter(
            Q(priority__gt=OuterRef("priority"))
            | Q(priority=OuterRef("priority"), created_at__lt=OuterRef("created_at"))
        )
        return self.claimable().filter(
            Q(pool__in=pools),
            Q(executor__in=executors),
            Q(devices=0) | (Q(devices__lte=free_devices) & ~Exists(blocked_by)),
        )

    def stale(self, now: datetime, lease_seconds: float) -> "RunQuerySet":
        return self.active().filter(heartbeat_at__lt=now - timedelta(seconds=lease_seconds))


class Run(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, blank=True)
    recipe = models.CharField(max_length=100)
    model_id = models.CharField(max_length=200, blank=True)
    # NULL means "no dataset": the recipe trains on its built-in data. PROTECT: a dataset a run
    # names cannot be deleted, so the run can always be repeated. `dataset_id` is the key.
    dataset = models.ForeignKey(
        "traces.Dataset",
        to_field="key",
        db_column="dataset_key",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="runs",
    )
    config = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    timeout_seconds = models.PositiveIntegerField()
    cancel_grace_seconds = models.FloatField(null=True, blank=True)
    max_attempts = models.PositiveSmallIntegerField(default=1)
    # The kind of host the run needs: only workers serving this pool claim it.
    pool = models.CharField(max_length=100, default="default")
    # Which endings start another attempt while attempts remain (runs/retry_rules.py), and when a
    # retried run may be claimed again (its backoff).
    retry_on = models.JSONField(default=retry_rules.default_rules, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    # Accelerators the run needs on one host (GPUs or TPU chips; 0 = CPU only), and the ids of
    # those its worker gave it (e.g. "2,3"), set with the claim and kept after the run.
    devices = models.PositiveSmallIntegerField(default=0)
    device_ids = models.CharField(max_length=200, blank=True)
    # The run's memory limit, enforced by its cgroup; NULL = the worker's default (if any).
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=0)
    # Where the run executes (the recipe's `executor`, fixed at enqueue): "local" (a child of the
    # worker) or "ray" (a Ray job). A Ray run's latest submission id, and while that job is still
    # to be followed, how many bytes of its output file (runs/entrypoints/ray_job.py) are stored
    # as log chunks: written in the same transaction as those chunks, so a worker that adopts the
    # job after its worker died resumes right after them; NULL once the attempt's outcome is
    # recorded (in the same transaction as the outcome), so a retry submits a new job.
    executor = models.CharField(max_length=20, default="local")
    ray_submission_id = models.CharField(max_length=200, blank=True)
    job_output_offset = models.BigIntegerField(null=True, blank=True)
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
    # Continued (same recipe) or forked (another recipe) from this run's checkpoint step: the
    # worker starts the run directory with that step's files, so training resumes from it.
    continued_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="continuations"
    )
    continued_from_step = models.PositiveIntegerField(null=True, blank=True)
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
    # A pinned run is exempt from retention (runs/retention.py); see `runs.services.run_pin`.
    pinned = models.BooleanField(default=False)
    pinned_at = models.DateTimeField(null=True, blank=True)
    pinned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # When retention deleted the run's log chunks (the stdout/stderr tails above are kept), and
    # when it deleted checkpoint files and their artifact rows. Set before the first deletion, so
    # a prune stopped half-way still shows that something is missing.
    log_pruned_at = models.DateTimeField(null=True, blank=True)
    artifacts_pruned_at = models.DateTimeField(null=True, blank=True)
    # Sum of the run's registered artifact sizes, kept by artifacts.services (every sync and
    # prune recounts it in the same transaction), so lists can sort by disk usage without a join.
    artifact_bytes = models.BigIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        db_table = "tunix_runs"
        ordering = ["-created_at"]
        # Beside Django's add/change/delete/view; see runs/permissions.py for who holds what.
        permissions = [
            ("manage_any_run", "Can cancel or requeue any user's run"),
            ("set_run_priority", "Can give a run a priority other than 0"),
        ]
        indexes = [
            # The worker's claim query: pending runs of its pools by priority, then age.
            models.Index(
                fields=["pool", "-priority", "created_at"],
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
            # Retention walks finished, unpinned runs oldest first:
            # `WHERE status IN (terminal) AND NOT pinned AND finished_at < %s ORDER BY finished_at`.
            models.Index(
                fields=["finished_at", "id"],
                name="tunix_runs_retention_idx",
                condition=Q(
                    status__in=["completed", "failed", "timeout", "cancelled"], pinned=False
                ),
            ),
            # The run list and the admin sorted by disk usage, largest first.
            models.Index(fields=["-artifact_bytes"], name="tunix_runs_artifact_bytes_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="tunix_runs_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(max_attempts__gte=1), name="tunix_runs_attempts_min"
            ),
            models.CheckConstraint(
                condition=Q(executor__in=["local", "ray"]), name="tunix_runs_executor_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name or str(self.id)

    @property
    def ray_dashboard_url(self) -> str:
        """The Ray dashboard's page of the run's job, when the dashboard's address is known."""
        base = settings.TUNIX_RAY_DASHBOARD_URL
        if not self.ray_submission_id or not base.startswith(("http://", "https://")):
            return ""
        return f"{base.rstrip('/')}/#/jobs/{self.ray_submission_id}"

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
    """One training step's numbers, from the run's `tunixops.metric` lines and event files.

    `values` maps each metric name (loss, perplexity, learning_rate, ...) from the recipe's
    `tunixops.metric` stdout lines to a number, or to null where the recipe reported a non-finite
    one; a step reported again (a retried attempt that resumed from a checkpoint) replaces them.
    `tb_values` holds what the worker read from the run's TensorBoard event files
    (runs/execution/tensorboard.py), merged name by name. Readers see both, and where both name
    the same metric at the same step the `tunixops.metric` line wins: it is the recipe's explicit
    report.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    tb_values = models.JSONField(default=dict)
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

    @property
    def merged(self) -> dict[str, float | None]:
        return {**self.tb_values, **self.values}


# A dead worker's heartbeat row is kept this long, so its silence shows in metrics, then dropped
# (by every worker's sweep, and by `tunix_prune`).
FORGET_WORKER_SECONDS = 24 * 3600


class WorkerHeartbeatQuerySet(models.QuerySet["WorkerHeartbeat"]):
    def fresh(self, now: datetime, lease_seconds: float) -> "WorkerHeartbeatQuerySet":
        return self.filter(last_seen__gte=now - timedelta(seconds=lease_seconds))

    def forgotten(self, now: datetime, after_seconds: float) -> "WorkerHeartbeatQuerySet":
        return self.filter(last_seen__lt=now - timedelta(seconds=after_seconds))

    def stuck(self) -> "WorkerHeartbeatQuerySet":
        return self.exclude(stuck_reason="")


class WorkerHeartbeat(models.Model):
    """A worker process's sign of life, renewed every heartbeat even while it has no run.

    Readiness counts the fresh ones that are not stuck; metrics export each one's `last_seen` and
    whether it is stuck. A worker that stops cleanly deletes its row; a dead worker's row stays
    until it is forgotten, so its silence shows.
    """

    worker_id = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    devices_total = models.PositiveSmallIntegerField(default=0)
    devices_busy = models.PositiveSmallIntegerField(default=0)
    # The pools this worker claims runs of, and whether it is draining (claims nothing, lets its
    # runs finish until `drain_deadline`, then stops them). `drain_requested` is set from outside
    # (`tunix_worker --drain WORKER_ID`) and acted on at the worker's next heartbeat.
    pools = models.JSONField(default=list)
    # The executors it can use ("local", and "ray" when it has RAY_ADDRESS).
    executors = models.JSONField(default=list)
    draining = models.BooleanField(default=False)
    drain_requested = models.BooleanField(default=False)
    drain_deadline = models.DateTimeField(null=True, blank=True)
    # Set while a write the worker must make keeps failing (TUNIX_WORKER_STUCK_SECONDS or more):
    # what fails and why. Readiness does not count such a worker.
    stuck_reason = models.TextField(blank=True)
    stuck_since = models.DateTimeField(null=True, blank=True)

    objects = WorkerHeartbeatQuerySet.as_manager()

    class Meta:
        db_table = "tunix_worker_heartbeats"
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return self.worker_id


class RetentionPrune(models.Model):
    """One prune that changed (or tried to change) something: who started it and what it did.

    The worker's daily prune looks here to run once a day across all workers; the Storage page
    shows the latest. A `--dry-run` leaves no record.
    """

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # `command` or `worker <worker id>`.
    trigger = models.CharField(max_length=255)
    # The options it ran with and what it deleted (runs/retention.py `PruneReport.as_dict`).
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        db_table = "tunix_retention_prunes"
        ordering = ["-started_at"]
        indexes = [
            # "Has a prune started lately?" and the Storage page's latest prune.
            models.Index(fields=["-started_at"], name="tunix_prunes_started_idx"),
        ]

    def __str__(self) -> str:
        return f"prune {self.started_at:%Y-%m-%d %H:%M} ({self.trigger})"


class RunAttempt(models.Model):
    """One attempt of a run: which worker ran it, when, and how it ended.

    Written by the state machine with each move into and out of `running`, so the run page can
    show every attempt of a retried run with its ending.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveSmallIntegerField()
    worker_id = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # The status the attempt left `running` for (pending when it was retried), and why.
    ending = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)

    class Meta:
        db_table = "tunix_run_attempts"
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="tunix_run_attempts_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} attempt {self.number}"
