"""Run workflows shared by the API, the pages, the admin and the worker."""

import json
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.utils import timezone

from artifacts.selectors import checkpoint_list
from runs import permissions as perms
from runs.live import notify
from runs.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Run,
    RunMetric,
    RunStatus,
    WorkerHeartbeat,
)
from runs.permissions import UserLike
from runs.recipes import ConfigError, Recipe, get_recipe
from runs.state_machine import IllegalTransition, transition
from traces.selectors import dataset_exists
from tunixops.exceptions import InvalidInput, LimitExceeded, NotFound
from webhooks.services import metric_events_record

# What the dry-run shows in place of real paths, which never leave the server.
DISPLAY_PYTHON = "python"
DISPLAY_RUN_DIR = "$RUN_DIR"
DISPLAY_PROJECT_DIR = "$PROJECT_DIR"
DISPLAY_ARTIFACT_ROOT = "$TUNIX_ARTIFACT_ROOT"
DISPLAY_MODEL_CACHE = "$MODEL_CACHE"

# A user's runs that count against TUNIX_MAX_ACTIVE_RUNS_PER_USER: queued or still running.
QUOTA_STATUSES = frozenset({RunStatus.PENDING, *ACTIVE_STATUSES})


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
    *, recipe: str, config: Any, dataset_key: str | None = None, model_id: str = ""
) -> tuple[Recipe, dict[str, Any], str]:
    """The recipe, the cleaned config and the model id to store; field errors as ConfigError."""
    found = recipe_or_error(recipe)
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    try:
        cleaned = found.clean_config(config)
    except ConfigError as exc:
        errors.update(exc.errors)
    try:
        model_id = found.clean_model_id(model_id)
    except ConfigError as exc:
        errors.update(exc.errors)
    if dataset_key and not found.accepts_dataset:
        errors["dataset_key"] = [f"recipe {found.name!r} cannot train on a TunixOps dataset"]
    elif dataset_key and not dataset_exists(dataset_key):
        errors["dataset_key"] = [f"unknown dataset {dataset_key!r}"]
    if errors:
        raise ConfigError(errors)
    return found, cleaned, model_id


def _check_submit(user: UserLike, priority: int) -> None:
    perms.require(perms.can_submit(user), perms.NOT_SUBMITTER)
    if priority != 0:
        perms.require(user.has_perm(perms.SET_RUN_PRIORITY), perms.NO_PRIORITY, field="priority")


def _check_quota(user: User) -> None:
    """Refuse a run past the user's quota of active runs.

    Called inside the enqueue's transaction after locking the user's row, so two concurrent
    enqueues by one user count one after the other and cannot both take the last place.
    """
    limit = settings.TUNIX_MAX_ACTIVE_RUNS_PER_USER
    if not limit:
        return
    User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True).get()
    active = Run.objects.filter(created_by=user, status__in=QUOTA_STATUSES).count()
    if active >= limit:
        raise LimitExceeded(
            f"You have {active} runs pending or running, the most one user may have "
            f"(TUNIX_MAX_ACTIVE_RUNS_PER_USER={limit}); wait for some to finish or cancel some.",
            code="too_many_active_runs",
        )


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
    devices: int | None = None,
    memory_limit_mb: int | None = None,
    pool: str | None = None,
    retry_on: list[str] | None = None,
    continued_from: Run | None = None,
    continued_from_step: int | None = None,
) -> Run:
    """Validate and store a pending run, for a user (checked: permission, priority, quota) or
    for the system (`created_by=None`: the quickstart, scripts; nothing checked)."""
    if created_by is not None:
        _check_submit(created_by, priority)
    found, cleaned, model_id = run_validate(
        recipe=recipe, config=config, dataset_key=dataset_key, model_id=model_id
    )
    options = found.clean_options(
        devices=devices, memory_limit_mb=memory_limit_mb, pool=pool, retry_on=retry_on
    )
    with transaction.atomic():
        if isinstance(created_by, User):
            _check_quota(created_by)
        run = Run.objects.create(
            recipe=found.name,
            config=cleaned,
            name=name,
            model_id=model_id,
            dataset_id=dataset_key or None,
            priority=priority,
            timeout_seconds=timeout_seconds or settings.TUNIX_DEFAULT_TIMEOUT_SECONDS,
            max_attempts=max_attempts,
            cancel_grace_seconds=cancel_grace_seconds,
            created_by=created_by if isinstance(created_by, User) else None,
            requeued_from=requeued_from,
            continued_from=continued_from,
            continued_from_step=continued_from_step,
            executor=found.executor,
            **options,
        )
        transaction.on_commit(lambda: notify.run_changed(run.pk, RunStatus.PENDING))
    return run


def _server_paths() -> list[tuple[str, str]]:
    """Real paths a recipe may have written out literally, longest first, with their stand-in."""
    paths = [
        (settings.TUNIX_PYTHON, DISPLAY_PYTHON),
        (sys.executable, DISPLAY_PYTHON),
        (str(settings.TUNIX_ARTIFACT_ROOT), DISPLAY_ARTIFACT_ROOT),
        (str(settings.TUNIX_MODEL_CACHE), DISPLAY_MODEL_CACHE),
        (str(settings.BASE_DIR), DISPLAY_PROJECT_DIR),
        (sys.prefix, "$PYTHON_PREFIX"),
    ]
    return sorted(((p, d) for p, d in paths if p and p != "/"), key=lambda pd: -len(pd[0]))


def _redact(text: str, paths: list[tuple[str, str]]) -> str:
    for path, display in paths:
        text = text.replace(path, display)
    return text


def run_dry_run(
    *,
    recipe: str,
    config: Any,
    user: UserLike | None,
    model_id: str = "",
    dataset_key: str | None = None,
) -> dict[str, Any]:
    """What the worker would execute, without storing anything.

    Paths are shown as placeholders (`$RUN_DIR`, `$PROJECT_DIR`, ...): the server's own paths
    never leave it, even where an operator's recipe spells one out.
    """
    if user is not None:
        perms.require(perms.can_submit(user), perms.NOT_SUBMITTER)
    found, cleaned, model_id = run_validate(
        recipe=recipe, config=config, dataset_key=dataset_key, model_id=model_id
    )
    argv = found.render_argv(
        python=DISPLAY_PYTHON,
        run_dir=DISPLAY_RUN_DIR,
        config=cleaned,
        dataset_file=f"{DISPLAY_RUN_DIR}/dataset.jsonl" if dataset_key else "",
        model_id=model_id,
        run_id="$RUN_ID",
        project_dir=DISPLAY_PROJECT_DIR,
        model_cache=DISPLAY_MODEL_CACHE,
    )
    paths = _server_paths()
    return {
        "recipe": found.name,
        "argv": [_redact(part, paths) for part in argv],
        "config": cleaned,
        "config_file": json.dumps(cleaned, indent=2, sort_keys=True),
        # Variables passed on from the worker are named, never shown: they hold credentials.
        "env": {
            key: _redact(value, paths)
            for key, value in found.child_env(
                {name: f"${name}" for name in found.env_from_worker}
            ).items()
        },
    }


def _run_for(user: UserLike | None, run_id: uuid.UUID, *, lock: bool = False) -> Run:
    """The run as `user` may act on it: unknown or invisible is NotFound; not theirs to manage
    is PermissionDenied. `user=None` is the system, which may act on any run."""
    runs = Run.objects.select_for_update() if lock else Run.objects.all()
    if user is not None:
        runs = runs.filter(perms.visible_runs_q(user))
    try:
        run = runs.get(pk=run_id)
    except Run.DoesNotExist as exc:
        raise NotFound("No such run.") from exc
    if user is not None:
        perms.require(perms.can_manage(user, run.created_by_id), perms.NOT_YOURS)
    return run


def run_cancel(*, run_id: uuid.UUID, user: UserLike | None, reason: str = "") -> Run:
    """Cancel a pending run at once, ask the worker to stop a running one; repeats are no-ops.

    The run's owner, an operator (`runs.manage_any_run`) or the system (`user=None`) may.
    """
    who = _username(user)
    suffix = f": {reason}" if reason else ""
    with transaction.atomic():
        run = _run_for(user, run_id, lock=True)
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
    original = _run_for(user, run_id)
    if user is not None:
        perms.require(perms.can_submit(user), perms.NOT_SUBMITTER)
    if original.status not in TERMINAL_STATUSES:
        raise IllegalTransition(original.pk, original.status, RunStatus.PENDING)
    return run_enqueue(
        recipe=original.recipe,
        created_by=user,
        config=original.config,
        name=original.name,
        model_id=original.model_id,
        dataset_key=original.dataset_id,
        priority=original.priority,
        timeout_seconds=original.timeout_seconds,
        max_attempts=original.max_attempts,
        cancel_grace_seconds=original.cancel_grace_seconds,
        requeued_from=original,
        devices=original.devices,
        memory_limit_mb=original.memory_limit_mb,
        pool=original.pool,
        retry_on=original.retry_on,
    )


def run_continue(
    *,
    run_id: uuid.UUID,
    user: UserLike | None,
    step: int | None = None,
    recipe: str | None = None,
    config: dict[str, Any] | None = None,
    name: str = "",
) -> Run:
    """A new run that starts from a finished run's checkpoint step (the last committed one by
    default): "continue" in the same recipe, with changed settings such as more `max_steps`, or
    "fork" into a recipe that declares it can start from the parent's (`starts_from`).

    The parent stays as it was; the worker copies the step into the new run's directory before
    it starts (artifacts.services.artifacts_copy_step), and Tunix resumes from it. A user needs
    what a requeue needs: `runs.add_run`, and the run or `runs.manage_any_run`.
    """
    parent = _run_for(user, run_id)
    if user is not None:
        perms.require(perms.can_submit(user), perms.NOT_SUBMITTER)
    if parent.status not in TERMINAL_STATUSES:
        raise IllegalTransition(parent.pk, parent.status, RunStatus.PENDING)
    steps = [row["step"] for row in checkpoint_list(run=parent)]
    if not steps:
        raise ConfigError({"step": ["the run has no committed checkpoint step to start from"]})
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
        raise ConfigError({"step": [f"no committed step {chosen}; committed: {steps}"]})
    target = recipe_or_error(recipe or parent.recipe)
    if not target.can_start_from(parent.recipe):
        raise ConfigError(
            {"recipe": [f"recipe {target.name!r} cannot start from a {parent.recipe!r} checkpoint"]}
        )
    same = target.name == parent.recipe
    return run_enqueue(
        recipe=target.name,
        created_by=user,
        config={**parent.config, **(config or {})} if same else config,
        name=name or parent.name,
        # A checkpoint belongs to its model: a fork goes on with the parent's, not the recipe's.
        model_id=parent.model_id,
        dataset_key=parent.dataset_id,
        timeout_seconds=parent.timeout_seconds,
        max_attempts=parent.max_attempts,
        cancel_grace_seconds=parent.cancel_grace_seconds,
        devices=parent.devices if same else None,
        memory_limit_mb=parent.memory_limit_mb if same else None,
        pool=parent.pool if same else None,
        continued_from=parent,
        continued_from_step=chosen,
    )


def run_pin(*, run_id: uuid.UUID, user: UserLike, pinned: bool = True) -> Run:
    """Pin a run (retention never prunes it) or unpin it; repeats change nothing.

    Its owner or an operator may. The row lock orders a pin with a prune's batches: once this
    commits, the prune deletes nothing more of the run.
    """
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        perms.require(perms.can_manage(user, run.created_by_id), perms.NOT_YOURS_TO_PIN)
        if run.pinned == pinned:
            return run
        run.pinned = pinned
        run.pinned_at = timezone.now() if pinned else None
        run.pinned_by = user if pinned and isinstance(user, User) else None
        run.save(update_fields=["pinned", "pinned_at", "pinned_by"])
    return run


def run_wait(*, run_id: uuid.UUID, timeout: float, interval: float = 0.1) -> Run:
    """Poll until the run is terminal or `timeout` passes; return its latest state."""
    deadline = time.monotonic() + timeout
    while True:
        run = Run.objects.get(pk=run_id)
        if run.status in TERMINAL_STATUSES or time.monotonic() >= deadline:
            return run
        time.sleep(interval)


def run_metrics_merge_tensorboard(
    *, run_id: uuid.UUID, steps: Mapping[int, Mapping[str, float | None]]
) -> None:
    """Store metrics read from a run's TensorBoard event files, one row per step.

    Names are merged into the step's `tb_values` (a name read again takes its new value); the
    step's `values` from `tunixops.metric` lines are left alone, and win where both name the
    same metric. Open live streams are woken to send the new steps.
    """
    if not steps:
        return
    with transaction.atomic():
        existing = dict(
            RunMetric.objects.select_for_update()
            .filter(run_id=run_id, step__in=list(steps))
            .values_list("step", "tb_values")
        )
        RunMetric.objects.bulk_create(
            [
                RunMetric(run_id=run_id, step=step, tb_values={**existing.get(step, {}), **new})
                for step, new in sorted(steps.items())
            ],
            update_conflicts=True,
            unique_fields=["run", "step"],
            update_fields=["tb_values"],
        )
        # Threshold and non-finite webhook events, in the same transaction as the metrics.
        metric_events_record(run_id=run_id, steps={k: dict(v) for k, v in steps.items()})
        transaction.on_commit(lambda: notify.metrics_recorded(run_id))


WAITING_FOR_POOL = "waiting: no live worker serves pool {pool!r}"
WAITING_FOR_DEVICES = "waiting: needs {needed} devices; the largest live worker has {largest}"
WAITING_FOR_RAY = (
    "waiting: no live worker of pool {pool!r} can submit to Ray (none has RAY_ADDRESS set)"
)
_WAITING_PREFIX = "waiting: "


def run_waiting_reasons_refresh(*, lease_seconds: float) -> int:
    """Say on each pending run that no live worker can take why it waits; clear it once one can.

    A live worker is one with a fresh heartbeat that is not draining. Not a status change (the
    run stays pending, so the state machine is not involved): the reason is what the run page and
    the admin show meanwhile. Returns how many runs changed.
    """
    largest: dict[str, int] = {}
    ray_pools: set[str] = set()
    live = WorkerHeartbeat.objects.fresh(timezone.now(), lease_seconds).filter(draining=False)
    for pools, devices, executors in live.values_list("pools", "devices_total", "executors"):
        for pool in pools:
            largest[pool] = max(largest.get(pool, 0), devices)
            if "ray" in executors:
                ray_pools.add(pool)
    pending = Run.objects.pending()
    changed = 0
    groups = pending.values_list("pool", "devices", "executor").distinct().order_by()
    for pool, needed, executor in groups:
        if pool not in largest:
            reason = WAITING_FOR_POOL.format(pool=pool)
        elif executor == "ray" and pool not in ray_pools:
            reason = WAITING_FOR_RAY.format(pool=pool)
        elif needed > largest[pool]:
            reason = WAITING_FOR_DEVICES.format(needed=needed, largest=largest[pool])
        else:
            reason = ""
        group = pending.filter(pool=pool, devices=needed, executor=executor)
        if reason:
            changed += group.exclude(status_reason=reason).update(status_reason=reason)
        else:
            changed += group.filter(status_reason__startswith=_WAITING_PREFIX).update(
                status_reason=""
            )
    return changed


def run_ray_job_record(*, run_id: uuid.UUID, submission_id: str) -> None:
    """A new Ray job of the run is about to be submitted: show its id, and follow its output from
    the start (`job_output_offset`, advanced by the log sink as it stores the output)."""
    Run.objects.filter(pk=run_id).update(ray_submission_id=submission_id, job_output_offset=0)


def worker_drain_request(*, worker_id: str) -> None:
    """Ask a running worker to drain; it acts on it at its next heartbeat (within
    TUNIX_HEARTBEAT_SECONDS)."""
    if not WorkerHeartbeat.objects.filter(worker_id=worker_id).update(drain_requested=True):
        raise NotFound(f"no running worker {worker_id!r}", code="no_such_worker")


# -- roles ---------------------------------------------------------------------------------------


def role_groups_ensure() -> list[Group]:
    """Create the role groups that are missing, with their permissions (the data migration made
    them at install; a transactional test's flush removes them). Existing groups are left as
    they are: an operator may have changed what they hold."""
    groups = []
    for name, codenames in perms.ROLE_PERMISSIONS.items():
        with transaction.atomic():
            group, created = Group.objects.get_or_create(name=name)
            if created:
                for codename in codenames:
                    app_label, _, code = codename.partition(".")
                    group.permissions.add(
                        Permission.objects.get(content_type__app_label=app_label, codename=code)
                    )
        groups.append(group)
    return groups


def role_set(*, username: str, roles: list[str]) -> User:
    """Make the user's role groups exactly `roles` (an empty list removes every role)."""
    unknown = sorted(set(roles) - set(perms.ROLE_PERMISSIONS))
    if unknown:
        raise InvalidInput(
            f"Unknown role {', '.join(unknown)}; roles are {', '.join(perms.ROLE_PERMISSIONS)}."
        )
    role_groups_ensure()
    with transaction.atomic():
        try:
            user = User.objects.select_for_update().get(username=username)
        except User.DoesNotExist as exc:
            raise NotFound(f"No user {username!r}.") from exc
        user.groups.remove(*Group.objects.filter(name__in=perms.ROLE_PERMISSIONS))
        user.groups.add(*Group.objects.filter(name__in=roles))
    return user
