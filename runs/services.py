"""Run workflows shared by the API, the pages, the admin and the worker."""

import json
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction

from runs import notify
from runs.models import TERMINAL_STATUSES, Run, RunStatus
from runs.recipes import ConfigError, Recipe, get_recipe
from runs.state_machine import IllegalTransition, transition
from traces.selectors import dataset_exists

# What the dry-run shows in place of real paths, which never leave the server.
DISPLAY_PYTHON = "python"
DISPLAY_RUN_DIR = "$RUN_DIR"

# The user model is Django's own; DRF and the admin hand us either kind.
UserLike = User | AnonymousUser


def _username(user: UserLike | None) -> str:
    if user is None or not user.is_authenticated:
        return "system"
    return str(user.get_username())


def recipe_or_error(name: str) -> Recipe:
    recipe = get_recipe(name)
    if recipe is None:
        raise ConfigError({"recipe": [f"unknown recipe {name!r}"]})
    return recipe


def run_dir(run_id: uuid.UUID) -> Path:
    return Path(settings.TUNIX_ARTIFACT_ROOT) / str(run_id)


def run_validate(
    *, recipe: str, config: Any, dataset_key: str | None = None
) -> tuple[Recipe, dict[str, Any]]:
    found = recipe_or_error(recipe)
    cleaned = found.clean_config(config)
    if dataset_key and not dataset_exists(dataset_key):
        raise ConfigError({"dataset_key": [f"unknown dataset {dataset_key!r}"]})
    return found, cleaned


def run_enqueue(
    *,
    recipe: str,
    created_by: UserLike | None,
    config: Any = None,
    name: str = "",
    model_id: str = "",
    dataset_key: str | None = None,
    priority: int = 0,
    timeout_seconds: int | None = None,
    max_attempts: int = 1,
    cancel_grace_seconds: float | None = None,
    requeued_from: Run | None = None,
) -> Run:
    found, cleaned = run_validate(recipe=recipe, config=config, dataset_key=dataset_key)
    with transaction.atomic():
        run = Run.objects.create(
            recipe=found.name,
            config=cleaned,
            name=name,
            model_id=model_id or found.default_model_id,
            dataset_key=dataset_key or None,
            priority=priority,
            timeout_seconds=timeout_seconds or settings.TUNIX_DEFAULT_TIMEOUT_SECONDS,
            max_attempts=max_attempts,
            cancel_grace_seconds=cancel_grace_seconds,
            created_by=created_by
            if created_by is not None and created_by.is_authenticated
            else None,
            requeued_from=requeued_from,
        )
        transaction.on_commit(lambda: notify.run_changed(run.pk, RunStatus.PENDING))
    return run


def run_dry_run(
    *, recipe: str, config: Any, model_id: str = "", dataset_key: str | None = None
) -> dict[str, Any]:
    """What the worker would execute, without storing anything."""
    found, cleaned = run_validate(recipe=recipe, config=config, dataset_key=dataset_key)
    argv = found.render_argv(
        python=DISPLAY_PYTHON,
        run_dir=DISPLAY_RUN_DIR,
        config=cleaned,
        dataset_file=f"{DISPLAY_RUN_DIR}/dataset.jsonl" if dataset_key else "",
        model_id=model_id,
        run_id="$RUN_ID",
    )
    return {
        "recipe": found.name,
        "argv": argv,
        "config": cleaned,
        "config_file": json.dumps(cleaned, indent=2, sort_keys=True),
        "env": dict(found.env),
    }


def run_cancel(*, run_id: uuid.UUID, user: UserLike | None, reason: str = "") -> Run:
    """Cancel a pending run at once, ask the worker to stop a running one; repeats are no-ops."""
    who = _username(user)
    suffix = f": {reason}" if reason else ""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status in (RunStatus.CANCEL_REQUESTED, RunStatus.CANCELLED):
            return run
        if run.status == RunStatus.PENDING:
            return transition(run.pk, RunStatus.CANCELLED, reason=f"cancelled by {who}{suffix}")
        if run.status == RunStatus.RUNNING:
            return transition(
                run.pk, RunStatus.CANCEL_REQUESTED, reason=f"cancel requested by {who}{suffix}"
            )
        raise IllegalTransition(run.pk, run.status, RunStatus.CANCELLED)


def run_requeue(*, run_id: uuid.UUID, user: UserLike | None) -> Run:
    """Copy a finished run into a new pending run linked to it; the original stays as it was.

    The copy goes through `run_enqueue`, so a recipe that has since been removed or tightened
    refuses it with the same field errors as a new run.
    """
    original = Run.objects.get(pk=run_id)
    if original.status not in TERMINAL_STATUSES:
        raise IllegalTransition(original.pk, original.status, RunStatus.PENDING)
    return run_enqueue(
        recipe=original.recipe,
        created_by=user,
        config=original.config,
        name=original.name,
        model_id=original.model_id,
        dataset_key=original.dataset_key,
        priority=original.priority,
        timeout_seconds=original.timeout_seconds,
        max_attempts=original.max_attempts,
        cancel_grace_seconds=original.cancel_grace_seconds,
        requeued_from=original,
    )


def run_wait(*, run_id: uuid.UUID, timeout: float, interval: float = 0.1) -> Run:
    """Poll until the run is terminal or `timeout` passes; return its latest state."""
    deadline = time.monotonic() + timeout
    while True:
        run = Run.objects.get(pk=run_id)
        if run.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
            return run
        time.sleep(interval)
