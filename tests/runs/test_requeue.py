from typing import Any

import pytest

from runs.models import Run, RunStatus
from runs.recipes import ConfigError
from runs.services import run_requeue
from runs.state_machine import IllegalTransition
from traces.models import Dataset

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED]
)
def test_a_finished_run_is_copied_into_a_new_pending_run_linked_to_it(
    make_run: Any, operator: Any, status: RunStatus
) -> None:
    # An operator: the run is alice's and has a priority, which only operators may give.
    Dataset.objects.create(
        key="support-v2", name="support", version="v2", selection="latest", limit=10, trace_count=0
    )
    original = make_run(
        status=status,
        name="nightly",
        config={"max_steps": 7, "learning_rate": 0.01},
        model_id="tiny-qwen3-random",
        dataset_key="support-v2",
        priority=5,
        timeout_seconds=321,
        max_attempts=3,
        cancel_grace_seconds=2.5,
        attempt=2,
        exit_code=1,
        worker_id="w-1",
        status_reason="exit 1",
    )
    copy = run_requeue(run_id=original.pk, user=operator)
    assert copy.pk != original.pk
    assert copy.status == RunStatus.PENDING
    assert copy.requeued_from == original
    assert copy.created_by == operator
    assert (copy.name, copy.recipe, copy.model_id, copy.dataset_id) == (
        "nightly",
        "tiny_sft",
        "tiny-qwen3-random",
        "support-v2",
    )
    assert copy.config["max_steps"] == 7 and copy.config["learning_rate"] == 0.01
    assert (copy.priority, copy.timeout_seconds, copy.max_attempts) == (5, 321, 3)
    assert copy.cancel_grace_seconds == 2.5
    assert (copy.attempt, copy.exit_code, copy.worker_id, copy.status_reason) == (0, None, "", "")
    original.refresh_from_db()
    assert original.status == status
    assert list(original.requeues.all()) == [copy]


@pytest.mark.parametrize(
    "status", [RunStatus.PENDING, RunStatus.RUNNING, RunStatus.CANCEL_REQUESTED]
)
def test_a_run_that_is_not_finished_is_refused(make_run: Any, status: RunStatus) -> None:
    run = make_run(status=status)
    with pytest.raises(IllegalTransition) as refused:
        run_requeue(run_id=run.pk, user=None)
    assert refused.value.current == status
    assert Run.objects.count() == 1


def test_a_run_whose_recipe_is_gone_is_refused_with_the_recipe_error(make_run: Any) -> None:
    run = make_run(status=RunStatus.FAILED, recipe="retired_recipe")
    with pytest.raises(ConfigError) as refused:
        run_requeue(run_id=run.pk, user=None)
    assert "recipe" in refused.value.errors
    assert Run.objects.count() == 1
