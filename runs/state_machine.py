"""The one place that changes a run's status.

Every status write goes through `transition()`, which locks the run's row, checks the move against
`TRANSITIONS` and stamps the timestamps that belong to it. Races (a cancel arriving as the child
exits, two workers reclaiming the same stale run) are settled here: whoever locks the row second
sees the new status and gets `IllegalTransition`.
"""

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.live import notify
from runs.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Run, RunAttempt, RunStatus
from tunixops.exceptions import Conflict

S = RunStatus

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.CANCELLED}),
    # RUNNING -> PENDING is a retry: the worker died or shut down and attempts remain.
    S.RUNNING: frozenset(
        {S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCEL_REQUESTED, S.CANCELLED, S.PENDING}
    ),
    # A cancel that loses the race to a child's own exit leaves that exit's outcome.
    S.CANCEL_REQUESTED: frozenset({S.CANCELLED, S.COMPLETED, S.FAILED, S.TIMEOUT}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.TIMEOUT: frozenset(),
    S.CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    def __init__(self, run_id: uuid.UUID, current: str, target: str) -> None:
        self.run_id = run_id
        self.current = current
        self.target = target
        super().__init__(
            f"The run is {current}; it cannot become {target}.", code="illegal_transition"
        )


def is_allowed(current: str, target: str) -> bool:
    return RunStatus(target) in TRANSITIONS[RunStatus(current)]


def transition(
    run_id: uuid.UUID,
    target: RunStatus,
    *,
    reason: str | None = None,
    only_from: Collection[RunStatus] | None = None,
    where: Mapping[str, Any] | None = None,
    **changes: Any,
) -> Run:
    """Move the run to `target`, or raise `IllegalTransition` and change nothing.

    `only_from` narrows the allowed sources further (a worker finishing a run only accepts
    `running` or `cancel_requested`); `where` names field values the locked row must still have
    (the worker and attempt that own the run, so a worker whose lease expired cannot overwrite
    the next attempt). `changes` are other fields written in the same UPDATE.
    """
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        current_status = run.status
        owned = all(getattr(run, name) == value for name, value in (where or {}).items())
        if (
            not is_allowed(run.status, target)
            or (only_from is not None and run.status not in only_from)
            or not owned
        ):
            raise IllegalTransition(run.pk, run.status, target)
        now = timezone.now()
        run.status = target
        fields = {"status", *changes}
        if reason is not None:
            run.status_reason = reason
            fields.add("status_reason")
        if target == S.RUNNING:
            run.started_at = now
            run.heartbeat_at = now
            run.finished_at = None
            fields |= {"started_at", "heartbeat_at", "finished_at"}
        elif target == S.PENDING:
            run.worker_id = ""
            run.heartbeat_at = None
            fields |= {"worker_id", "heartbeat_at"}
        elif target == S.CANCEL_REQUESTED:
            run.cancel_requested_at = now
            fields.add("cancel_requested_at")
        if target in TERMINAL_STATUSES:
            run.finished_at = now
            fields.add("finished_at")
        for name, value in changes.items():
            setattr(run, name, value)
        run.save(update_fields=sorted(fields))
        _record_attempt(run, current_status, target, now)
        transaction.on_commit(lambda: notify.run_changed(run.pk, target))
    return run


def _record_attempt(run: Run, source: str, target: RunStatus, now: datetime) -> None:
    """Each move into `running` opens an attempt; the move out of an active status closes it."""
    if target == S.RUNNING:
        RunAttempt.objects.create(
            run=run, number=run.attempt, worker_id=run.worker_id, started_at=now
        )
    elif source in ACTIVE_STATUSES and target not in ACTIVE_STATUSES:
        RunAttempt.objects.filter(run=run, number=run.attempt, finished_at__isnull=True).update(
            finished_at=now, ending=target, reason=run.status_reason, exit_code=run.exit_code
        )
