import itertools
from typing import Any

import pytest

from runs.models import TERMINAL_STATUSES, Run, RunStatus
from runs.state_machine import TRANSITIONS, IllegalTransition, transition

S = RunStatus
ALLOWED = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.CANCELLED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.CANCEL_REQUESTED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.PENDING),
    (S.CANCEL_REQUESTED, S.CANCELLED),
    (S.CANCEL_REQUESTED, S.COMPLETED),
    (S.CANCEL_REQUESTED, S.FAILED),
    (S.CANCEL_REQUESTED, S.TIMEOUT),
}
ALL_PAIRS = list(itertools.product(RunStatus, RunStatus))

pytestmark = pytest.mark.django_db


def test_the_table_is_exactly_the_documented_rules() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(RunStatus)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: str(s))
def test_every_transition_pair(make_run: Any, current: RunStatus, target: RunStatus) -> None:
    run = make_run(status=current, status_reason="before")
    if (current, target) in ALLOWED:
        moved = transition(run.pk, target, reason="why")
        stored = Run.objects.get(pk=run.pk)
        assert moved.status == stored.status == target
        assert stored.status_reason == "why"
        if target in TERMINAL_STATUSES:
            assert stored.finished_at is not None
        if target == S.RUNNING:
            assert stored.started_at is not None and stored.heartbeat_at is not None
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(run.pk, target, reason="why")
        assert info.value.current == current and info.value.target == target
        stored = Run.objects.get(pk=run.pk)
        assert stored.status == current
        assert stored.status_reason == "before"


def test_only_from_narrows_the_allowed_sources(make_run: Any) -> None:
    run = make_run(status=S.CANCEL_REQUESTED)
    with pytest.raises(IllegalTransition):
        transition(run.pk, S.COMPLETED, only_from={S.RUNNING})
    assert Run.objects.get(pk=run.pk).status == S.CANCEL_REQUESTED


def test_it_writes_other_fields_in_the_same_update(make_run: Any) -> None:
    run = make_run(status=S.RUNNING)
    transition(run.pk, S.FAILED, reason="exit code 3", exit_code=3, stderr_tail="boom")
    stored = Run.objects.get(pk=run.pk)
    assert (stored.status, stored.exit_code, stored.stderr_tail) == (S.FAILED, 3, "boom")


def test_going_back_to_pending_releases_the_worker_claim(make_run: Any) -> None:
    run = make_run(status=S.RUNNING, worker_id="w1")
    transition(run.pk, S.PENDING, reason="worker lost")
    stored = Run.objects.get(pk=run.pk)
    assert stored.worker_id == "" and stored.heartbeat_at is None
