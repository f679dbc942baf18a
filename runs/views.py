"""Server-rendered run pages: list, new run, detail with live logs, cancel and run again.

They call the same selectors and services as the API; the live parts of the detail page are
static/runs/*.mjs reading the API (log snapshot and stream, status, metrics) and re-fetching the
panels below as HTML, so every piece of markup comes from one template.
"""

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from artifacts import selectors as artifact_selectors
from artifacts.models import Artifact
from runs import selectors, services
from runs.forms import RunFilterForm, RunForm
from runs.models import Run, RunStatus
from runs.recipes import ConfigError, Recipe, all_recipes
from runs.state_machine import IllegalTransition
from traces.models import Dataset

RUNS_PER_PAGE = 50
# A run page lists this many checkpoint files and as many other files; the API lists them all.
ARTIFACTS_SHOWN = 500
DATASETS_SUGGESTED = 200
DEFAULT_RECIPE = "tiny_sft"
CANCELLABLE = frozenset({RunStatus.PENDING, RunStatus.RUNNING})


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    filters = RunFilterForm(request.GET)
    chosen = filters.cleaned_data if filters.is_valid() else {}
    runs = selectors.run_list(status=chosen.get("status"), recipe=chosen.get("recipe"))
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    # Page links keep the filters.
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "runs/list.html",
        {"filters": filters, "page": page, "query": query.urlencode()},
    )


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
    # A posted unknown recipe is refused by the form's choice field, in place.
    form = RunForm(request.POST if posted else None, recipe=recipe)
    if posted and form.is_valid():
        try:
            run = services.run_enqueue(
                recipe=recipe.name,
                created_by=request.user,
                config=form.config(),
                name=form.cleaned_data["name"],
                model_id=form.cleaned_data["model_id"],
                dataset_key=form.cleaned_data["dataset_key"] or None,
            )
        except ConfigError as exc:
            for key, errors in exc.errors.items():
                form.add_error(key if key in form.fields else None, errors)
        else:
            messages.success(request, f"Run {run} is queued.")
            return redirect("run-detail", run_id=run.pk)
    # Suggestions for the dataset field; enqueue checks the key itself.
    datasets = Dataset.objects.order_by("-created_at").values_list("key", flat=True)
    return render(
        request,
        "runs/new.html",
        {"form": form, "recipe": recipe, "datasets": datasets[:DATASETS_SUGGESTED]},
        status=400 if posted else 200,
    )


def _overview(run: Run) -> dict[str, Any]:
    recipe = all_recipes().get(run.recipe)
    config = [
        {
            "key": key,
            "value": value,
            "help": recipe.keys[key].help if recipe and key in recipe.keys else "",
        }
        for key, value in sorted(run.config.items())
    ]
    return {
        "run": run,
        "config": config,
        "requeues": list(run.requeues.order_by("-created_at").only("id", "status")[:20]),
        "can_cancel": run.status in CANCELLABLE,
    }


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
    run = selectors.run_get_or_404(run_id)
    context = {**_overview(run), **_artifacts(run)}
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
    return render(request, "runs/_overview.html", _overview(selectors.run_get_or_404(run_id)))


@login_required
@require_GET
def run_panel_artifacts(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    return render(request, "runs/_artifacts.html", _artifacts(selectors.run_get_or_404(run_id)))


@login_required
@require_http_methods(["GET", "POST"])
def run_cancel(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    """GET asks for confirmation (the page's dialog does that in place); POST cancels."""
    run = selectors.run_get_or_404(run_id)
    if request.method == "GET":
        context = {"run": run, "can_cancel": run.status in CANCELLABLE}
        return render(request, "runs/cancel.html", context)
    try:
        run = services.run_cancel(run_id=run.pk, user=request.user, reason="from the run page")
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
    run = selectors.run_get_or_404(run_id)
    try:
        again = services.run_requeue(run_id=run.pk, user=request.user)
    except IllegalTransition as exc:
        messages.error(request, f"Not requeued: the run is still {exc.current}.")
    except ConfigError as exc:
        problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.errors.items())
        messages.error(request, f"Not requeued: {problems}")
    else:
        messages.success(request, f"Requeued as run {again}.")
        return redirect("run-detail", run_id=again.pk)
    return redirect("run-detail", run_id=run.pk)
