import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Event(models.TextChoices):
    RUN_QUEUED = "run.queued", "run.queued"
    RUN_STARTED = "run.started", "run.started"
    RUN_COMPLETED = "run.completed", "run.completed"
    RUN_FAILED = "run.failed", "run.failed"
    RUN_TIMEOUT = "run.timeout", "run.timeout"
    RUN_CANCELLED = "run.cancelled", "run.cancelled"
    # The first step at which one of the hook's thresholds holds, once per run and condition.
    METRIC_THRESHOLD = "metric.threshold", "metric.threshold"
    # The first step reporting a non-finite metric (NaN or infinity), once per run.
    METRIC_NONFINITE = "metric.nonfinite", "metric.nonfinite"


METRIC_EVENTS = frozenset({Event.METRIC_THRESHOLD, Event.METRIC_NONFINITE})


class BodyFormat(models.TextChoices):
    JSON = "json"  # the event as a JSON object (README, "Webhooks")
    SLACK = "slack"  # `{"text": "..."}`, what Slack-compatible incoming webhooks take


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class Webhook(models.Model):
    """A URL told about runs: which events, for which runs (filters), signed with its secret.

    Written only through webhooks/services.py (the API and the admin alike), which checks the URL
    (and where it resolves), the events and the thresholds.
    """

    name = models.CharField(max_length=200)
    url = models.CharField(max_length=2000)
    # Event values (Event); thresholds are canonical conditions such as "loss < 0.5".
    events = models.JSONField(default=list)
    thresholds = models.JSONField(default=list, blank=True)
    # Filters: empty means any. `pool` compares with the run's pool ("default" when runs have
    # none); `user` with the run's creator.
    recipe = models.CharField(max_length=100, blank=True)
    pool = models.CharField(max_length=100, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    body_format = models.CharField(
        max_length=10, choices=BodyFormat.choices, default=BodyFormat.JSON
    )
    # Signs each delivery (HMAC-SHA256); shown once, when created or rotated.
    secret = models.CharField(max_length=100, default=new_secret, editable=False)
    # An inactive hook records no new events, and its queued deliveries wait until it is active.
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tunix_webhooks"
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class DeliveryState(models.TextChoices):
    PENDING = "pending"  # waiting for its time (`next_attempt_at`) and its run's earlier events
    DELIVERING = "delivering"  # claimed by a delivery process until `lease_until`
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # given up after TUNIX_WEBHOOKS_GIVE_UP_SECONDS of failures


OPEN_STATES = (DeliveryState.PENDING, DeliveryState.DELIVERING)


class WebhookDelivery(models.Model):
    """The outbox and the delivery log in one: one event for one hook.

    Inserted in the transaction of the change that causes the event, so an event exists exactly
    when its change committed. `id` orders a run's events (they are inserted under the run's row
    lock); `delivery_id` is what the receiver sees, the same on every attempt.
    """

    id = models.BigAutoField(primary_key=True)
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    # Not a foreign key: the log of a run outlives the run (retention may delete runs).
    run_id = models.UUIDField()
    event = models.CharField(max_length=30, choices=Event.choices)
    # What fires once per run and hook ("threshold:loss < 0.5", "nonfinite"); empty otherwise.
    once_key = models.CharField(max_length=200, blank=True)
    body = models.TextField()
    state = models.CharField(
        max_length=12, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_by = models.CharField(max_length=200, blank=True)
    claim_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_response = models.TextField(blank=True)
    last_duration_ms = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "tunix_webhook_deliveries"
        ordering = ["-id"]
        indexes = [
            # The claim: open deliveries by due time.
            models.Index(
                fields=["next_attempt_at", "id"],
                name="tunix_wh_deliveries_due_idx",
                condition=Q(state__in=["pending", "delivering"]),
            ),
            # The claim's "no earlier open event of the same run and hook" test.
            models.Index(
                fields=["webhook", "run_id", "id"],
                name="tunix_wh_deliveries_chain_idx",
                condition=Q(state__in=["pending", "delivering"]),
            ),
            # The delivery log of a run, and of a hook, newest first.
            models.Index(fields=["run_id", "-id"], name="tunix_wh_deliveries_run_idx"),
            models.Index(fields=["webhook", "-id"], name="tunix_wh_deliveries_hook_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=DeliveryState.values), name="tunix_wh_delivery_state_valid"
            ),
            # Once per run and hook: a second threshold crossing is not an event.
            models.UniqueConstraint(
                fields=["webhook", "run_id", "once_key"],
                condition=~Q(once_key=""),
                name="tunix_wh_delivery_once_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.webhook_id} ({self.state})"
