"""Server-rendered run pages: list, new run, detail with live logs, cancel and run again.

They call the same selectors and services as the API; the live parts of the detail page are
static/runs/*.mjs reading the API (log snapshot and stream, status, metrics) and re-fetching the
panels below as HTML, so every piece of markup comes from one template.
"""

import json
import uuid
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from artifacts import selectors as artifact_selectors
from artifacts.models import Artifact
from runs import permissions as perms
from runs import selectors, services
from runs.forms import ContinueForm, RunFilterForm, RunForm
from runs.models import TERMINAL_STATUSES, Run, RunStatus
from runs.permissions import UserLike
from runs.recipes import ConfigError, Recipe, all_recipes
from runs.retention import last_prune
from runs.state_machine import IllegalTransition
from traces.selectors import dataset_keys_newest_first
from tunixops.exceptions import InvalidInput, LimitExceeded, NotFound, PermissionDenied

RUNS_PER_PAGE = 50
# A run page lists this many checkpoint files and as many other files; the API lists them all.
ARTIFACTS_SHOWN = 500
DATASETS_SUGGESTED = 200
DEFAULT_RECIPE = "tiny_sft"
CANCELLABLE = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
# A column header click sorts by it; a second click reverses the order.
SORT_TOGGLES = {
    "created": ("-created_at", "created_at"),
    "disk": ("-artifact_bytes", "artifact_bytes"),
}
# How often the compare page polls the metrics of runs still training.
COMPARE_POLL_MS = 2000


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    filters = RunFilterForm(request.GET)
    chosen = filters.cleaned_data if filters.is_valid() else {}
    sort = chosen.get("sort") or "-created_at"
    runs = selectors.run_list(
        user=request.user, status=chosen.get("status"), recipe=chosen.get("recipe"), sort=sort
    )
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    # Page links keep the filters and the order; sort links keep the filters.
    query = request.GET.copy()
    query.pop("page", None)
    unsorted = query.copy()
    unsorted.pop("sort", None)
    sorting = {}
    for column, (first, second) in SORT_TOGGLES.items():
        unsorted["sort"] = second if sort == first else first
        sorting[column] = {
            "query": unsorted.urlencode(),
            "aria": "descending" if sort == first else "ascending" if sort == second else "",
        }
    return render(
        request,
        "runs/list.html",
        {
            "filters": filters,
            "page": page,
            "query": query.urlencode(),
            "can_submit": perms.can_submit(request.user),
            "not_submitter": perms.NOT_SUBMITTER,
            "sorting": sorting,
            "max_compared": selectors.MAX_COMPARED,
        },
    )


def _refused(
    request: HttpRequest, message: str, status: int, run: Run | None = None
) -> HttpResponse:
    return render(request, "runs/refused.html", {"message": message, "run": run}, status=status)


def _default_recipe() -> Recipe:
    recipes = all_recipes()
    return recipes.get(DEFAULT_RECIPE) or recipes[min(recipes)]


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request: HttpRequest) -> HttpResponse:
    posted = request.method == "POST"
    wanted = (request.POST if posted else request.GET).get("recipe", "")
    recipe = all_recipes().get(wanted) or _default_recipe()
    if wanted and wanted != recipe.name and not posted:
        messages.warning(request, f"There is no recipe {wanted!r}; here is {recipe.name}.")
    if not perms.can_submit(request.user):
        return _refused(request, perms.NOT_SUBMITTER, 403)
    # A posted unknown recipe is refused by the form's choice field, in place.
    form = RunForm(request.POST if posted else None, recipe=recipe)
    status = 400
    if posted and form.is_valid():
        try:
            run = services.run_enqueue(
                recipe=recipe.name,
                created_by=request.user,
                config=form.config(),
                name=form.cleaned_data["name"],
                model_id=form.cleaned_data["model_id"],
                dataset_key=form.cleaned_data["dataset_key"] or None,
                pool=form.cleaned_data["pool"] or None,
                devices=form.cleaned_data["devices"],
            )
        except ConfigError as exc:
            for key, errors in exc.errors.items():
                form.add_error(key if key in form.fields else None, errors)
        except LimitExceeded as exc:
            form.add_error(None, exc.message)
            status = 429
        except PermissionDenied as exc:
            return _refused(request, exc.message, 403)
        else:
            messages.success(request, f"Run {run} is queued.")
            return redirect("run-detail", run_id=run.pk)
    # Suggestions for the dataset field; enqueue checks the key itself.
    datasets = dataset_keys_newest_first()
    return render(
        request,
        "runs/new.html",
        {"form": form, "recipe": recipe, "datasets": datasets[:DATASETS_SUGGESTED]},
        status=status if posted else 200,
    )


def _actions(run: Run, user: UserLike) -> dict[str, Any]:
    """What the user may do with the run now, and why not where a button is shown disabled."""
    may_manage = perms.can_manage(user, run.created_by_id)
    may_requeue = perms.can_requeue(user, run.created_by_id)
    requeue_refusal = perms.NOT_SUBMITTER if not perms.can_submit(user) else perms.NOT_YOURS
    return {
        "can_cancel": run.status in CANCELLABLE and may_manage,
        "cancel_refusal": perms.NOT_YOURS if run.status in CANCELLABLE and not may_manage else "",
        "can_requeue": run.is_terminal and may_requeue,
        "requeue_refusal": requeue_refusal if run.is_terminal and not may_requeue else "",
    }


def _overview(run: Run, user: UserLike) -> dict[str, Any]:
    recipe = all_recipes().get(run.recipe)
    config = [
        {
            "key": key,
            "value": value,
            "help": recipe.keys[key].help if recipe and key in recipe.keys else "",
        }
        for key, value in sorted(run.config.items())
    ]
    requeues = run.requeues.filter(perms.visible_runs_q(user)).order_by("-created_at")
    return {
        "run": run,
        "config": config,
        "requeues": list(requeues.only("id", "status")[:20]),
        "continuations": list(
            run.continuations.filter(perms.visible_runs_q(user))
            .order_by("-created_at")
            .only("id", "status", "recipe")[:20]
        ),
        "attempts": list(run.attempts.order_by("number")),
        **_actions(run, user),
    }


def _pinning(request: HttpRequest, run: Run) -> dict[str, Any]:
    return {"can_pin": perms.can_manage(request.user, run.created_by_id)}


def _artifacts(run: Run) -> dict[str, Any]:
    """Checkpoint steps, each with its files, and the run's other files, up to a cap each."""
    listed = artifact_selectors.artifact_list(run=run)
    files = list(listed.filter(step__isnull=True)[:ARTIFACTS_SHOWN])
    step_files: dict[int, list[Artifact]] = {}
    for artifact in listed.filter(step__isnull=False)[:ARTIFACTS_SHOWN]:
        step_files.setdefault(artifact.step or 0, []).append(artifact)
    checkpoints = [
        {**checkpoint, "files": step_files.get(checkpoint["step"], [])}
        for checkpoint in artifact_selectors.checkpoint_list(run=run)
    ]
    return {
        "run": run,
        "checkpoints": checkpoints,
        "files": files,
        "files_total": (
            listed.filter(step__isnull=True).count()
            if len(files) == ARTIFACTS_SHOWN
            else len(files)
        ),
    }


def max_steps_of(config: dict[str, Any]) -> int | None:
    """The run's step budget: `max_steps`, or a recipe's nested `*.max_steps` override."""
    for key, value in config.items():
        named = key == "max_steps" or key.endswith(".max_steps")
        if named and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@login_required
@require_GET
def run_detail(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    run = selectors.run_get_or_404(run_id, user=request.user)
    context = {**_overview(run, request.user), **_artifacts(run), **_pinning(request, run)}
    context["page_config"] = {
        "runId": str(run.pk),
        "status": run.status,
        "apiBase": "/api/tunix",
        "maxSteps": max_steps_of(run.config),
        "panels": {
            "overview": reverse("run-panel-overview", kwargs={"run_id": run.pk}),
            "artifacts": reverse("run-panel-artifacts", kwargs={"run_id": run.pk}),
        },
    }
    return render(request, "runs/detail.html", context)


@login_required
@require_GET
def run_panel_overview(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    run = selectors.run_get_or_404(run_id, user=request.user)
    context = {**_overview(run, request.user), **_pinning(request, run)}
    return render(request, "runs/_overview.html", context)


@login_required
@require_GET
def run_panel_artifacts(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    run = selectors.run_get_or_404(run_id, user=request.user)
    return render(request, "runs/_artifacts.html", _artifacts(run))


@login_required
@require_http_methods(["GET", "POST"])
def run_cancel(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    """GET asks for confirmation (the page's dialog does that in place); POST cancels."""
    run = selectors.run_get_or_404(run_id, user=request.user)
    if request.method == "GET":
        return render(request, "runs/cancel.html", {"run": run, **_actions(run, request.user)})
    try:
        run = services.run_cancel(run_id=run.pk, user=request.user, reason="from the run page")
    except PermissionDenied as exc:
        return _refused(request, exc.message, 403, run)
    except IllegalTransition as exc:
        messages.error(request, f"Not cancelled: the run is already {exc.current}.")
    else:
        if run.status == RunStatus.CANCELLED:
            messages.success(request, "The run is cancelled.")
        else:
            messages.success(request, "Cancel requested: the worker is stopping the run.")
    return redirect("run-detail", run_id=run.pk)


@login_required
@require_POST
def run_requeue(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    run = selectors.run_get_or_404(run_id, user=request.user)
    try:
        again = services.run_requeue(run_id=run.pk, user=request.user)
    except PermissionDenied as exc:
        return _refused(request, exc.message, 403, run)
    except LimitExceeded as exc:
        return _refused(request, exc.message, 429, run)
    except IllegalTransition as exc:
        messages.error(request, f"Not requeued: the run is still {exc.current}.")
    except ConfigError as exc:
        problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.errors.items())
        messages.error(request, f"Not requeued: {problems}")
    else:
        messages.success(request, f"Requeued as run {again}.")
        return redirect("run-detail", run_id=again.pk)
    return redirect("run-detail", run_id=run.pk)


@login_required
@require_POST
def run_pin(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    """Pin (`pinned=1`) or unpin (`pinned=0`) the run; its owner or an operator may."""
    run = selectors.run_get_or_404(run_id, user=request.user)
    pinned = request.POST.get("pinned") != "0"
    try:
        services.run_pin(run_id=run.pk, user=request.user, pinned=pinned)
    except PermissionDenied as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            "Pinned: retention keeps this run's log and checkpoints."
            if pinned
            else "Unpinned: retention may prune this run once it is old enough.",
        )
    return redirect("run-detail", run_id=run.pk)


def _compared(request: HttpRequest) -> list[Run]:
    ids = selectors.parse_run_ids(request.GET.getlist("ids"))
    return selectors.runs_for_compare(ids, user=request.user)


def _comparison_context(runs: list[Run]) -> dict[str, Any]:
    comparison = selectors.run_comparison(runs, max_points=None)
    columns = [
        {"run": run, "index": i, "title": selectors.run_title(run)} for i, run in enumerate(runs)
    ]
    metrics = [
        {
            "name": name,
            "goal": comparison.goals[name],
            "cells": [
                {
                    "run": run,
                    "present": name in comparison.final[run.pk],
                    "value": comparison.final[run.pk].get(name),
                    "best": run.pk in comparison.best.get(name, []),
                }
                for run in runs
            ],
        }
        for name in comparison.names
    ]
    differences = [
        {
            "key": difference.key,
            "cells": [
                {
                    "present": run.pk in difference.values,
                    "value": json.dumps(difference.values.get(run.pk), sort_keys=True),
                }
                for run in runs
            ],
        }
        for difference in comparison.differences
    ]
    live = any(run.status not in TERMINAL_STATUSES for run in runs)
    return {"columns": columns, "metrics": metrics, "differences": differences, "live": live}


@login_required
@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    """Runs side by side: one chart per metric (drawn by compare.mjs from the compare API and,
    for runs still training, the metrics API), the final metrics and the config differences."""
    picked = request.GET.getlist("ids")
    if len(picked) > 1:
        # The run list's checkboxes send `ids` once per run; the page's own address lists them.
        query = urlencode({"ids": ",".join(picked)}, safe=",")
        return redirect(f"{reverse('run-compare')}?{query}")
    try:
        runs = _compared(request)
    except (InvalidInput, NotFound) as exc:
        status = 404 if isinstance(exc, NotFound) else 400
        return render(request, "runs/compare.html", {"error": exc.message}, status=status)
    context = _comparison_context(runs)
    ids = ",".join(str(run.pk) for run in runs)
    context["page_config"] = {
        "apiBase": "/api/tunix",
        "ids": [str(run.pk) for run in runs],
        "runs": [
            {
                "id": str(run.pk),
                "title": selectors.run_title(run),
                "status": run.status,
                "url": reverse("run-detail", kwargs={"run_id": run.pk}),
            }
            for run in runs
        ],
        "metrics": [{"name": m["name"], "goal": m["goal"]} for m in context["metrics"]],
        "finalPanel": f"{reverse('run-compare-final')}?ids={ids}",
        "pollMs": COMPARE_POLL_MS,
        "terminal": sorted(TERMINAL_STATUSES),
    }
    return render(request, "runs/compare.html", context)


@login_required
@require_GET
def run_compare_final(request: HttpRequest) -> HttpResponse:
    """The compare page's final-metrics table, re-fetched while runs are still training."""
    try:
        runs = _compared(request)
    except (InvalidInput, NotFound) as exc:
        status = 404 if isinstance(exc, NotFound) else 400
        return HttpResponse(exc.message, status=status, content_type="text/plain")
    return render(request, "runs/_compare_final.html", _comparison_context(runs))


@login_required
@require_GET
def storage(request: HttpRequest) -> HttpResponse:
    """Operators only: disk used by artifacts, in total, per user and by the largest runs."""
    if not perms.is_operator(request.user):
        return render(request, "runs/storage.html", {"refused": perms.OPERATORS_ONLY}, status=403)
    return render(
        request,
        "runs/storage.html",
        {"usage": selectors.storage_usage(), "last_prune": last_prune()},
    )


@login_required
@require_http_methods(["GET", "POST"])
def run_continue(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    """Continue a finished run from a checkpoint step, or fork it into a recipe that can start
    from it (`?recipe=grpo`, carried by the form)."""
    parent = selectors.run_get_or_404(run_id, user=request.user)
    if not perms.can_requeue(request.user, parent.created_by_id):
        refusal = perms.NOT_SUBMITTER if not perms.can_submit(request.user) else perms.NOT_YOURS
        return _refused(request, refusal, 403, parent)
    recipes = all_recipes()
    posted = request.method == "POST"
    wanted = (request.POST if posted else request.GET).get("recipe") or parent.recipe
    recipe = recipes.get(wanted)
    steps = [row["step"] for row in artifact_selectors.checkpoint_list(run=parent)]
    if (recipe is None and wanted == parent.recipe) or not parent.is_terminal or not steps:
        why = (
            f"the run is {parent.status}"
            if not parent.is_terminal
            else "it has no committed checkpoint step"
            if not steps
            else f"the recipe {parent.recipe!r} no longer exists"
        )
        messages.error(request, f"This run cannot be continued: {why}.")
        return redirect("run-detail", run_id=parent.pk)
    if recipe is None or not recipe.can_start_from(parent.recipe):
        message = f"Recipe {wanted!r} cannot start from a {parent.recipe!r} checkpoint."
        return _refused(request, message, 400, parent)
    same = recipe.name == parent.recipe
    form = ContinueForm(
        request.POST if posted else None,
        recipe=recipe,
        steps=steps,
        config=parent.config if same else {},
    )
    if posted and form.is_valid():
        try:
            run = services.run_continue(
                run_id=parent.pk,
                user=request.user,
                step=form.cleaned_data["step"],
                recipe=recipe.name,
                config=form.config(),
                name=form.cleaned_data["name"],
            )
        except ConfigError as exc:
            for key, errors in exc.errors.items():
                form.add_error(key if key in form.fields else None, errors)
        except PermissionDenied as exc:
            return _refused(request, exc.message, 403, parent)
        except LimitExceeded as exc:
            return _refused(request, exc.message, 429, parent)
        else:
            verb = "Continuing" if same else f"Forking into {recipe.name}"
            messages.success(request, f"{verb} as run {run}.")
            return redirect("run-detail", run_id=run.pk)
    forks = sorted(
        r.name
        for r in recipes.values()
        if r.name != parent.recipe and r.can_start_from(parent.recipe)
    )
    return render(
        request,
        "runs/continue.html",
        {"form": form, "run": parent, "recipe": recipe, "same": same, "forks": forks},
        status=400 if posted else 200,
    )
