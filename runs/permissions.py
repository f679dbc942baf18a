"""Who may do what with runs, traces and datasets: Django's own permissions, decided here.

The services enforce these rules, so the API, the pages and the admin share them; the pages and
the admin also ask them to hide or disable what a user cannot do. Superusers have every
permission. The roles are groups a data migration creates (runs/migrations/0010_role_groups):

- anyone logged in: view runs, their logs, metrics and artifacts (all runs with
  TUNIX_RUN_VISIBILITY=team, only their own with `owner` unless they are an operator); read
  traces and datasets; cancel their own runs;
- `submitters`: also submit runs (`runs.add_run`) and requeue their own, upload traces
  (`traces.add_trace`), build datasets (`traces.add_dataset`);
- `operators`: also cancel, pin and requeue anyone's run (`runs.manage_any_run`), set a priority
  other than 0 (`runs.set_run_priority`), see every run in `owner` mode and everyone's disk usage,
  and read the admin console.
"""

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest

from tunixops.exceptions import PermissionDenied

# The user model is Django's own; DRF and the admin hand us either kind.
UserLike = User | AnonymousUser

ADD_RUN = "runs.add_run"
MANAGE_ANY_RUN = "runs.manage_any_run"
SET_RUN_PRIORITY = "runs.set_run_priority"
ADD_TRACE = "traces.add_trace"
ADD_DATASET = "traces.add_dataset"

# TUNIX_RUN_VISIBILITY: `team`, or `owner` (a non-operator sees only their own runs).
VISIBILITY_TEAM = "team"

SUBMITTERS = "submitters"
OPERATORS = "operators"
_SUBMIT = (ADD_RUN, ADD_TRACE, ADD_DATASET)
# What each group holds, as `app_label.codename`. Operators also read every table of the admin
# console (it needs a model's view permission to list it), but change nothing there: the admin
# writes only through the same services and their rules.
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    SUBMITTERS: _SUBMIT,
    OPERATORS: (
        *_SUBMIT,
        MANAGE_ANY_RUN,
        SET_RUN_PRIORITY,
        "runs.view_run",
        "runs.view_logchunk",
        "runs.view_runmetric",
        "runs.view_workerheartbeat",
        "runs.view_retentionprune",
        "artifacts.view_artifact",
        "traces.view_trace",
        "traces.view_dataset",
    ),
}


def sees_all_runs(user: UserLike) -> bool:
    return settings.TUNIX_RUN_VISIBILITY == VISIBILITY_TEAM or is_operator(user)


def visible_runs_q(user: UserLike, prefix: str = "") -> Q:
    """A filter for the runs `user` may see; `prefix` reaches a run from another model (`run__`)."""
    if sees_all_runs(user):
        return Q()
    if not user.is_authenticated:
        return Q(pk__in=[])
    return Q(**{f"{prefix}created_by": user})


def owns(user: UserLike, created_by_id: int | None) -> bool:
    return user.is_authenticated and created_by_id is not None and created_by_id == user.pk


def can_submit(user: UserLike) -> bool:
    return user.has_perm(ADD_RUN)


def can_manage(user: UserLike, created_by_id: int | None) -> bool:
    """Cancel or pin a run: your own needs nothing more, anyone else's `runs.manage_any_run`."""
    return owns(user, created_by_id) or is_operator(user)


def can_requeue(user: UserLike, created_by_id: int | None) -> bool:
    """Requeue submits a new run, so it also needs `runs.add_run`."""
    return can_submit(user) and can_manage(user, created_by_id)


NOT_SUBMITTER = (
    "Your account may not submit runs: it needs the runs.add_run permission "
    "(the submitters group); ask an operator."
)
NOT_YOURS = (
    "Only its owner or an operator (runs.manage_any_run permission) may cancel or requeue this run."
)
NO_PRIORITY = (
    "Only operators (runs.set_run_priority permission) may give a run a priority other than 0."
)
NOT_YOURS_TO_PIN = (
    "Only its owner or an operator (runs.manage_any_run permission) may pin this run."
)
OPERATORS_ONLY = "Only operators (runs.manage_any_run permission) may see everyone's storage."


def is_operator(user: UserLike) -> bool:
    """May manage any run, and so sees every run and everyone's disk usage."""
    return user.has_perm(MANAGE_ANY_RUN)


def require(allowed: bool, message: str, *, field: str | None = None) -> None:
    if not allowed:
        raise PermissionDenied(message, fields={field: [message]} if field else None)


class RunVisibilityAdminMixin:
    """For a ModelAdmin: lists and shows only rows of runs the user may see; another user's row
    is as absent as a deleted one. `run_prefix` reaches the run from the model (`run__`)."""

    run_prefix = ""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset: QuerySet[Model] = super().get_queryset(request)  # type: ignore[misc]
        return queryset.filter(visible_runs_q(request.user, self.run_prefix))
