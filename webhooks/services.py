"""Webhook writes: registration, the outbox (events recorded with the change that causes them),
and the delivery process's claims and results.

Events are rows of `WebhookDelivery`, one per event and hook, inserted in the transaction of the
change itself: a run's status change (through `run_saved`, a post_save receiver on Run, which
the state machine's every write reaches) or a batch of training metrics (`metric_events_record`,
which the metric store path calls). Nothing else happens there: no HTTP, no wait. The delivery
process (webhooks/delivery.py) claims due rows with SKIP LOCKED, sends them and records the
outcome here.
"""

import json
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from runs.live import notify
from runs.models import Run, RunStatus
from runs.recipes import POOL_NAME, get_recipe
from tunixops.exceptions import InvalidInput, NotFound, PermissionDenied
from tunixops.text import UNSTORABLE, storable
from webhooks import conditions, sender
from webhooks.models import (
    METRIC_EVENTS,
    OPEN_STATES,
    BodyFormat,
    DeliveryState,
    Event,
    Webhook,
    WebhookDelivery,
    new_secret,
)
from webhooks.selectors import active_webhooks

UserLike = User | AnonymousUser
Values = Mapping[str, float | None]

ADD = "webhooks.add_webhook"
CHANGE = "webhooks.change_webhook"
DELETE = "webhooks.delete_webhook"

MAX_NAME_CHARS = 200
MAX_THRESHOLDS = 20
MAX_THRESHOLD_CHARS = 200
STATUS_EVENTS: dict[str, Event] = {
    RunStatus.PENDING: Event.RUN_QUEUED,
    RunStatus.RUNNING: Event.RUN_STARTED,
    RunStatus.COMPLETED: Event.RUN_COMPLETED,
    RunStatus.FAILED: Event.RUN_FAILED,
    RunStatus.TIMEOUT: Event.RUN_TIMEOUT,
    RunStatus.CANCELLED: Event.RUN_CANCELLED,
}


def _require(user: UserLike | None, perm: str) -> None:
    if user is None or not user.has_perm(perm):
        raise PermissionDenied(f"Managing webhooks needs the {perm} permission.")


# -- registration ---------------------------------------------------------------------------------


def _text_problem(value: Any, max_chars: int, *, blank: bool = False) -> str | None:
    if not isinstance(value, str):
        return "Expected a string."
    if not value.strip() and not blank:
        return "This field may not be blank."
    if len(value) > max_chars:
        return f"At most {max_chars} characters."
    if UNSTORABLE.search(value):
        return "Must not contain NUL characters or unpaired surrogates."
    return None


def _clean_events(events: Any, errors: dict[str, list[str]]) -> list[str]:
    if not isinstance(events, list | tuple) or not events:
        errors["events"] = [f"Expected a non-empty list of: {', '.join(Event.values)}."]
        return []
    if len(events) > len(Event.values):
        errors["events"] = [f"At most {len(Event.values)} events, each once."]
        return []
    unknown = [str(e)[:50] for e in events if e not in Event.values]
    if unknown:
        errors["events"] = [
            f"Unknown event {unknown[0]!r}; expected some of: {', '.join(Event.values)}."
        ]
        return []
    # Stored in the order of Event, each once.
    return [e for e in Event.values if e in events]


def _clean_thresholds(thresholds: Any, errors: dict[str, list[str]]) -> list[str]:
    if not isinstance(thresholds, list | tuple):
        errors["thresholds"] = ["Expected a list of conditions such as `loss < 0.5`."]
        return []
    if len(thresholds) > MAX_THRESHOLDS:
        errors["thresholds"] = [f"At most {MAX_THRESHOLDS} conditions."]
        return []
    cleaned: list[str] = []
    for index, text in enumerate(thresholds):
        problem = _text_problem(text, MAX_THRESHOLD_CHARS)
        if problem is None:
            try:
                canonical = str(conditions.parse(text))
            except conditions.ConditionError as exc:
                problem = str(exc)
        if problem is not None:
            errors[f"thresholds.{index}"] = [problem]
        elif canonical not in cleaned:
            cleaned.append(canonical)
    return cleaned


def webhook_clean(
    *,
    name: Any,
    url: Any,
    events: Any,
    thresholds: Any = (),
    recipe: Any = "",
    pool: Any = "",
    user: Any = "",
    body_format: Any = BodyFormat.JSON,
) -> dict[str, Any]:
    """Check a hook's settings; InvalidInput names every field that is wrong.

    The URL must be http(s); unless TUNIX_WEBHOOKS_ALLOW_PRIVATE, its host must resolve to public
    addresses only (checked again at each delivery). `user` is a username (or a User).
    """
    errors: dict[str, list[str]] = {}
    for field, value, limit in (("name", name, MAX_NAME_CHARS), ("url", url, sender.MAX_URL_CHARS)):
        problem = _text_problem(value, limit)
        if problem:
            errors[field] = [problem]
    if "url" not in errors:
        try:
            sender.check(url, allow_private=settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE)
        except sender.UnsafeTarget as exc:
            errors["url"] = [str(exc)]
    cleaned_events = _clean_events(events, errors)
    cleaned_thresholds = _clean_thresholds(thresholds, errors)
    if "events" not in errors and not any(k.startswith("thresholds") for k in errors):
        wants = Event.METRIC_THRESHOLD in cleaned_events
        if wants and not cleaned_thresholds:
            errors["thresholds"] = ["metric.threshold needs at least one condition."]
        elif cleaned_thresholds and not wants:
            errors["thresholds"] = ["Conditions need the metric.threshold event."]
    problem = _text_problem(recipe, 100, blank=True)
    if problem is None and recipe and get_recipe(recipe) is None:
        problem = f"Unknown recipe {recipe!r}."
    if problem:
        errors["recipe"] = [problem]
    problem = _text_problem(pool, 100, blank=True)
    if problem is None and pool and not POOL_NAME.fullmatch(pool):
        problem = "A pool name: letters, digits, '.', '_' and '-', at most 100."
    if problem:
        errors["pool"] = [problem]
    filter_user: User | None = None
    if isinstance(user, User):
        filter_user = user
    elif user:
        problem = _text_problem(user, 150)
        filter_user = User.objects.filter(username=user).first() if problem is None else None
        if filter_user is None:
            errors["user"] = [problem or f"No user {user!r}."]
    elif user not in ("", None):
        errors["user"] = ["Expected a username."]
    if body_format not in BodyFormat.values:
        errors["body_format"] = [f"One of: {', '.join(BodyFormat.values)}."]
    if errors:
        raise InvalidInput("Invalid webhook.", fields=errors)
    return {
        "name": name.strip(),
        "url": url,
        "events": cleaned_events,
        "thresholds": cleaned_thresholds,
        "recipe": recipe,
        "pool": pool,
        "user": filter_user,
        "body_format": body_format,
    }


def webhook_create(*, created_by: UserLike | None, active: bool = True, **fields: Any) -> Webhook:
    """Register a hook with a new secret; the caller shows `secret` once."""
    _require(created_by, ADD)
    cleaned = webhook_clean(**fields)
    user = created_by if isinstance(created_by, User) else None
    return Webhook.objects.create(**cleaned, active=active, created_by=user)


def _get(webhook_id: int) -> Webhook:
    found = Webhook.objects.select_for_update().filter(pk=webhook_id).first()
    if found is None:
        raise NotFound("No such webhook.")
    return found


CLEANED = ("name", "url", "events", "thresholds", "recipe", "pool", "user", "body_format")


def webhook_update(*, webhook_id: int, actor: UserLike | None, **changes: Any) -> Webhook:
    """Change some of a hook's settings; the rest stay. The whole result is checked again.
    (`user` among the changes is the runs filter; `actor` is who changes the hook.)"""
    _require(actor, CHANGE)
    unknown = set(changes) - {*CLEANED, "active"}
    if unknown:
        raise InvalidInput("Invalid webhook.", fields={k: ["Unknown field."] for k in unknown})
    with transaction.atomic():
        hook = _get(webhook_id)
        current = {name: getattr(hook, name) for name in CLEANED}
        cleaned = webhook_clean(**{**current, **{k: v for k, v in changes.items() if k in CLEANED}})
        for name, value in cleaned.items():
            setattr(hook, name, value)
        if "active" in changes:
            hook.active = bool(changes["active"])
        hook.save()
    return hook


def webhook_rotate_secret(*, webhook_id: int, actor: UserLike | None) -> Webhook:
    """A new secret; deliveries sent from now on are signed with it."""
    _require(actor, CHANGE)
    with transaction.atomic():
        hook = _get(webhook_id)
        hook.secret = new_secret()
        hook.save(update_fields=["secret", "updated_at"])
    return hook


def webhook_delete(*, webhook_id: int, actor: UserLike | None) -> None:
    """Remove a hook with its delivery log; deliveries in flight finish, unrecorded."""
    _require(actor, DELETE)
    with transaction.atomic():
        _get(webhook_id).delete()


# -- the outbox -----------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def run_url(run_id: uuid.UUID) -> str:
    return f"{settings.TUNIX_PUBLIC_URL}/runs/{run_id}/"


def _run_payload(run: Run) -> dict[str, Any]:
    return {
        "id": str(run.pk),
        "name": run.name,
        "recipe": run.recipe,
        "pool": run.pool,
        "status": run.status,
        "status_reason": run.status_reason,
        "exit_code": run.exit_code,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "created_by": run.created_by.get_username() if run.created_by else None,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "url": run_url(run.pk),
    }


def _duration(run: Run) -> str:
    if run.started_at is None or run.finished_at is None:
        return ""
    seconds = int((run.finished_at - run.started_at).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (
        f"{hours}h {minutes}m" if hours else f"{minutes}m {seconds}s" if minutes else f"{seconds}s"
    )
    return f" after {text}"


def slack_text(event: str, run: Run, metric: dict[str, Any] | None) -> str:
    """One line for people: what happened to which run, with a link when TUNIX_PUBLIC_URL is set."""
    label = run.name or str(run.pk)
    url = run_url(run.pk)
    who = f"<{url}|{label}>" if url.startswith("http") else f"{label} ({url})"
    head = f"TunixOps run {who} [{run.recipe}]"
    reason = f": {run.status_reason}" if run.status_reason else ""
    if event == Event.RUN_QUEUED:
        return f"{head} queued{reason}"
    if event == Event.RUN_STARTED:
        return f"{head} started (attempt {run.attempt} of {run.max_attempts})"
    if event == Event.METRIC_THRESHOLD and metric:
        return (
            f"{head}: {metric['condition']} at step {metric['step']} "
            f"({metric['name']} = {metric['value']:g})"
        )
    if event == Event.METRIC_NONFINITE and metric:
        return f"{head}: non-finite {', '.join(metric['names'])} at step {metric['step']}"
    code = f" (exit code {run.exit_code})" if run.exit_code not in (None, 0) else ""
    return f"{head} {run.status}{_duration(run)}{code}{reason}"


def _delivery(
    hook: Webhook,
    run: Run,
    event: str,
    now: datetime,
    *,
    once_key: str = "",
    metric: dict[str, Any] | None = None,
) -> WebhookDelivery:
    delivery_id = uuid.uuid4()
    if hook.body_format == BodyFormat.SLACK:
        payload: dict[str, Any] = {"text": slack_text(event, run, metric)}
    else:
        payload = {
            "id": str(delivery_id),
            "event": event,
            "created_at": _iso(now),
            "run": _run_payload(run),
        }
        if metric is not None:
            payload["metric"] = metric
    return WebhookDelivery(
        delivery_id=delivery_id,
        webhook=hook,
        run_id=run.pk,
        event=event,
        once_key=once_key,
        body=storable(json.dumps(payload, ensure_ascii=False, allow_nan=False)),
        next_attempt_at=now,
        created_at=now,
    )


def _matches(hook: Webhook, run: Run, events: Collection[str]) -> bool:
    return (
        any(e in hook.events for e in events)
        and (not hook.recipe or hook.recipe == run.recipe)
        and (not hook.pool or hook.pool == run.pool)
        and (hook.user_id is None or hook.user_id == run.created_by_id)
    )


def _insert(deliveries: list[WebhookDelivery]) -> int:
    if not deliveries:
        return 0
    # A once-only event a concurrent writer already recorded is skipped, not an error.
    WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    transaction.on_commit(notify.webhooks_queued)
    return len(deliveries)


def run_event_record(*, run: Run, event: Event) -> int:
    """Queue `event` for every active hook that wants it for this run; returns how many.

    Called inside the transaction that changes the run, which holds the run's row lock (the
    state machine's), so a run's events get increasing ids in the order they happened.
    """
    hooks = [hook for hook in active_webhooks() if _matches(hook, run, (event,))]
    if not hooks:
        return 0
    now = timezone.now()
    return _insert([_delivery(hook, run, event, now) for hook in hooks])


def run_saved(
    sender: type[Run],
    instance: Run,
    created: bool,
    update_fields: Iterable[str] | None,
    **kwargs: Any,
) -> None:
    """`post_save` receiver for Run (connected in WebhooksConfig.ready): a new run, or a status
    written by runs/state_machine.transition, becomes an event in the same transaction."""
    if not created and (not update_fields or "status" not in update_fields):
        return
    event = STATUS_EVENTS.get(instance.status)
    if event is not None:
        run_event_record(run=instance, event=event)


def _first_crossings(
    hook: Webhook, steps: list[tuple[int, Values]], fired: set[tuple[int, str]]
) -> list[tuple[str, str, dict[str, Any]]]:
    found: list[tuple[str, str, dict[str, Any]]] = []
    if Event.METRIC_THRESHOLD in hook.events:
        for text in hook.thresholds:
            key = f"threshold:{text}"
            if (hook.pk, key) in fired:
                continue
            condition = conditions.parse(text)
            for step, values in steps:
                if condition.holds(dict(values)):
                    metric = {
                        "step": step,
                        "name": condition.name,
                        "value": values[condition.name],
                        "condition": text,
                    }
                    found.append((Event.METRIC_THRESHOLD, key, metric))
                    break
    if Event.METRIC_NONFINITE in hook.events and (hook.pk, "nonfinite") not in fired:
        for step, values in steps:
            names = sorted(name for name, value in values.items() if value is None)
            if names:
                found.append((Event.METRIC_NONFINITE, "nonfinite", {"step": step, "names": names}))
                break
    return found


def metric_events_record(*, run_id: uuid.UUID, steps: Mapping[int, Values]) -> int:
    """Queue threshold and non-finite events for a batch of stored training metrics.

    Call it inside the transaction that stores the batch (runs/execution/logsink.py; any other
    metric store path does the same). Each condition of each hook fires once per run, at the
    first step where it holds; `metric.nonfinite` fires once, at the first step reporting a
    non-finite value (stored as null). Costs one query when no hook wants metric events.
    """
    hooks = [h for h in active_webhooks() if METRIC_EVENTS & set(h.events)]
    if not steps or not hooks:
        return 0
    run = Run.objects.select_related("created_by").filter(pk=run_id).first()
    if run is None:
        return 0
    hooks = [hook for hook in hooks if _matches(hook, run, METRIC_EVENTS)]
    if not hooks:
        return 0
    fired = set(
        WebhookDelivery.objects.filter(run_id=run_id, webhook__in=hooks)
        .exclude(once_key="")
        .values_list("webhook_id", "once_key")
    )
    ordered = sorted(steps.items())
    crossings = [
        (hook, found) for hook in hooks for found in _first_crossings(hook, ordered, fired)
    ]
    # In step order, so a hook hears of step 3's NaN before step 5's threshold from one batch.
    crossings.sort(key=lambda crossing: int(crossing[1][2]["step"]))
    if not crossings:
        return 0
    # The run's row lock orders these after (or before) its status events, as they happened.
    Run.objects.select_for_update().filter(pk=run_id).values_list("pk").first()
    now = timezone.now()
    return _insert(
        [
            _delivery(hook, run, event, now, once_key=key, metric=metric)
            for hook, (event, key, metric) in crossings
        ]
    )


# -- delivery -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A delivery taken by one process until its lease ends: what it needs to send it."""

    pk: int
    delivery_id: uuid.UUID
    token: uuid.UUID
    webhook_id: int
    url: str
    secret: str
    event: str
    body: str
    attempts: int
    created_at: datetime


def deliveries_claim(
    *, worker_id: str, limit: int, in_flight: Mapping[int, int], per_hook: int
) -> list[Claim]:
    """Take up to `limit` due deliveries, each the oldest open event of its run for its hook.

    `in_flight` counts this process's deliveries per hook: a hook at `per_hook` gets no more, so
    a slow receiver holds at most that many threads. A delivery whose lease ran out (its process
    died) is due again. One short transaction: SELECT ... FOR UPDATE SKIP LOCKED, then UPDATE.
    """
    if limit <= 0:
        return []
    now = timezone.now()
    earlier = WebhookDelivery.objects.filter(
        webhook_id=OuterRef("webhook_id"),
        run_id=OuterRef("run_id"),
        id__lt=OuterRef("id"),
        state__in=OPEN_STATES,
    )
    full = [hook for hook, count in in_flight.items() if count >= per_hook]
    due = (
        WebhookDelivery.objects.filter(
            Q(state=DeliveryState.PENDING, next_attempt_at__lte=now)
            | Q(state=DeliveryState.DELIVERING, lease_until__lt=now)
        )
        .filter(webhook__active=True)
        .exclude(webhook_id__in=full)
        .filter(~Exists(earlier))
        .select_related("webhook")
        .order_by("next_attempt_at", "id")
    )
    token = uuid.uuid4()
    taken: list[WebhookDelivery] = []
    counts = dict(in_flight)
    with transaction.atomic():
        for row in due.select_for_update(skip_locked=True, of=("self",))[:limit]:
            if counts.get(row.webhook_id, 0) >= per_hook:
                continue
            counts[row.webhook_id] = counts.get(row.webhook_id, 0) + 1
            taken.append(row)
        if taken:
            WebhookDelivery.objects.filter(pk__in=[row.pk for row in taken]).update(
                state=DeliveryState.DELIVERING,
                claimed_by=worker_id[:200],
                claim_token=token,
                lease_until=now + timedelta(seconds=settings.TUNIX_WEBHOOKS_LEASE_SECONDS),
            )
    return [
        Claim(
            pk=row.pk,
            delivery_id=row.delivery_id,
            token=token,
            webhook_id=row.webhook_id,
            url=row.webhook.url,
            secret=row.webhook.secret,
            event=row.event,
            body=row.body,
            attempts=row.attempts,
            created_at=row.created_at,
        )
        for row in taken
    ]


def backoff_seconds(attempts: int, retry_after: float | None = None) -> float:
    """The wait after the `attempts`-th failure: doubling from the base, capped."""
    base: float = settings.TUNIX_WEBHOOKS_BACKOFF_SECONDS
    cap: float = settings.TUNIX_WEBHOOKS_BACKOFF_MAX_SECONDS
    delay = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 40))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def delivery_record(*, claim: Claim, result: sender.Result) -> str:
    """Store an attempt's outcome; returns it: delivered, failed (retried later), refused (the
    SSRF guard; retried too, DNS may change) or abandoned (given up). A claim whose lease was
    taken over meanwhile records nothing (`lost`)."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "attempts": F("attempts") + 1,
        "last_attempt_at": now,
        "last_status_code": result.status,
        "last_error": storable(result.error)[:2000],
        "last_response": storable(result.response)[: sender.RESPONSE_SNIPPET_BYTES],
        "last_duration_ms": round(result.seconds * 1000),
        "claimed_by": "",
        "claim_token": None,
        "lease_until": None,
    }
    if result.ok:
        outcome = "delivered"
        fields.update(state=DeliveryState.DELIVERED, delivered_at=now)
    elif (now - claim.created_at).total_seconds() >= settings.TUNIX_WEBHOOKS_GIVE_UP_SECONDS:
        outcome = "abandoned"
        fields.update(state=DeliveryState.FAILED)
    else:
        outcome = "refused" if result.refused else "failed"
        delay = backoff_seconds(claim.attempts + 1, result.retry_after)
        fields.update(state=DeliveryState.PENDING, next_attempt_at=now + timedelta(seconds=delay))
    updated = WebhookDelivery.objects.filter(pk=claim.pk, claim_token=claim.token).update(**fields)
    return outcome if updated else "lost"


def deliveries_retry(*, delivery_ids: Collection[int], actor: UserLike | None) -> int:
    """Send failed (or waiting) deliveries again now, from the admin; returns how many. A given
    up delivery gets one more attempt (it is past TUNIX_WEBHOOKS_GIVE_UP_SECONDS already)."""
    _require(actor, CHANGE)
    count = WebhookDelivery.objects.filter(
        pk__in=list(delivery_ids), state__in=[DeliveryState.FAILED, DeliveryState.PENDING]
    ).update(state=DeliveryState.PENDING, next_attempt_at=timezone.now())
    if count:
        transaction.on_commit(notify.webhooks_queued)
    return count


def deliveries_prune(*, older_than: datetime, batch: int = 1000, dry_run: bool = False) -> int:
    """Delete finished deliveries (delivered or failed) created before `older_than`, in batches
    of `batch` rows; open ones are never touched. Returns how many (would) go."""
    finished = WebhookDelivery.objects.filter(
        state__in=[DeliveryState.DELIVERED, DeliveryState.FAILED], created_at__lt=older_than
    )
    if dry_run:
        return finished.count()
    total = 0
    while True:
        ids = list(finished.order_by("id").values_list("id", flat=True)[:batch])
        if not ids:
            return total
        deleted, _ = WebhookDelivery.objects.filter(pk__in=ids).delete()
        total += deleted
