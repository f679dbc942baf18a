from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from artifacts.admin import ArtifactInline
from runs import permissions as perms
from runs import selectors, services
from runs.models import LogChunk, RetentionPrune, Run, RunMetric, WorkerHeartbeat
from runs.permissions import RunVisibilityAdminMixin
from runs.recipes import ConfigError
from runs.state_machine import IllegalTransition
from runs.templatetags.run_pages import duration
from tunixops.admin import ReadOnlyAdminMixin
from tunixops.exceptions import ApplicationError, PermissionDenied

CHUNK_PREVIEW_CHARS = 300

# Every field, shown read-only: a run is created only through `run_enqueue` (the API and the run
# form), its status moves only through the state machine, and the worker owns the rest. The admin
# acts on runs through the same services (the Cancel and Requeue actions).
RUN_FIELDS = (
    "name",
    "recipe",
    "model_id",
    "dataset_id",
    "config",
    "priority",
    "timeout_seconds",
    "cancel_grace_seconds",
    "max_attempts",
    "devices",
    "device_ids",
    "memory_limit_mb",
    "status",
    "status_reason",
    "exit_code",
    "attempt",
    "started_at",
    "finished_at",
    "cancel_requested_at",
    "worker_id",
    "heartbeat_at",
    "stdout_tail",
    "stderr_tail",
    "log_bytes",
    "log_truncated",
    "created_at",
    "created_by",
    "requeued_from",
    "pinned",
    "pinned_at",
    "pinned_by",
    "artifact_bytes",
    "log_pruned_at",
    "artifacts_pruned_at",
)


class CappedCountPaginator(Paginator[Any]):
    """Counts at most CAP rows: `COUNT(*)` over millions of log chunks would stall the page.

    Past the cap the list offers CAP rows' worth of pages; filters (by run) reach the rest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        assert isinstance(queryset, QuerySet)
        return int(queryset.order_by()[: self.CAP].count())


def run_page_links(run: Run) -> SafeString:
    page = reverse("run-detail", kwargs={"run_id": run.pk})
    return format_html('<a href="{}">run page</a> · <a href="{}#logs">live log</a>', page, page)


@admin.register(Run)
class RunAdmin(RunVisibilityAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin[Run]):
    list_display = (
        "id",
        "name",
        "status_badge",
        "recipe",
        "dataset_id",
        "worker_id",
        "device_ids",
        "attempt_display",
        "created_at",
        "duration_display",
        "disk_display",
        "pinned",
        "links",
    )
    list_filter = ("status", "recipe", "pinned", "created_by")
    search_fields = ("id", "name", "recipe", "dataset__key", "worker_id", "created_by__username")
    fields = ("links", *RUN_FIELDS)
    readonly_fields = fields
    list_select_related = ("created_by",)
    actions = ("cancel_selected", "requeue_selected", "pin_selected", "unpin_selected")
    date_hierarchy = "created_at"
    inlines = (ArtifactInline,)

    class Media:
        css = {"all": ("runs/admin.css",)}

    def get_list_filter(self, request: HttpRequest) -> Any:
        # Filtering by creator would list every user's name to one who sees only their own runs.
        if perms.sees_all_runs(request.user):
            return self.list_filter
        return tuple(f for f in self.list_filter if f != "created_by")

    # The actions are offered to those who may use them on some run; the services then refuse,
    # row by row, a run that is not the user's to act on (runs/permissions.py).
    def has_manage_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return user.has_perm(perms.MANAGE_ANY_RUN) or user.has_perm(perms.ADD_RUN)

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return perms.can_submit(request.user)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> SafeString:
        return format_html(
            '<span class="tunix-status tunix-status-{}">{}</span>', run.status, run.status
        )

    @admin.display(description="attempt", ordering="attempt")
    def attempt_display(self, run: Run) -> str:
        return f"{run.attempt} of {run.max_attempts}"

    @admin.display(description="duration")
    def duration_display(self, run: Run) -> str:
        return duration(run.duration)

    @admin.display(description="disk", ordering="artifact_bytes")
    def disk_display(self, run: Run) -> str:
        return filesizeformat(run.artifact_bytes)

    @admin.display(description="pages")
    def links(self, run: Run) -> SafeString:
        if run.pk is None:
            return format_html("")
        chunks = reverse("admin:runs_logchunk_changelist") + f"?run__id__exact={run.pk}"
        return format_html('{} · <a href="{}">log chunks</a>', run_page_links(run), chunks)

    @admin.action(description="Cancel selected runs", permissions=["manage"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        done, refused = 0, []
        for run in queryset:
            try:
                services.run_cancel(run_id=run.pk, user=request.user, reason="from the admin")
                done += 1
            except IllegalTransition as exc:
                refused.append(f"{run.pk} is {exc.current}")
            except ApplicationError as exc:
                refused.append(f"{run.pk}: {exc.message}")
        if done:
            self.message_user(request, f"Cancelled or asked to cancel {done} run(s).")
        if refused:
            self.message_user(
                request, "Not cancelled: " + "; ".join(refused), level=messages.WARNING
            )

    @admin.action(
        description="Requeue selected finished runs (as new runs)", permissions=["requeue"]
    )
    def requeue_selected(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        copies: list[Run] = []
        refused: list[str] = []
        for run in queryset:
            try:
                copies.append(services.run_requeue(run_id=run.pk, user=request.user))
            except IllegalTransition as exc:
                refused.append(f"{run.pk} is {exc.current}")
            except ConfigError as exc:
                problems = ", ".join(f"{k}: {' '.join(v)}" for k, v in exc.errors.items())
                refused.append(f"{run.pk}: {problems}")
            except ApplicationError as exc:
                refused.append(f"{run.pk}: {exc.message}")
        if copies:
            links = format_html_join(
                ", ",
                '<a href="{}">{}</a>',
                ((reverse("admin:runs_run_change", args=[c.pk]), c.pk) for c in copies),
            )
            self.message_user(request, format_html("Requeued as new runs: {}", links))
        if refused:
            self.message_user(
                request, "Not requeued: " + "; ".join(refused), level=messages.WARNING
            )

    def _pin(self, request: HttpRequest, queryset: QuerySet[Run], pinned: bool) -> None:
        done, refused = 0, []
        for run in queryset:
            try:
                services.run_pin(run_id=run.pk, user=request.user, pinned=pinned)
                done += 1
            except PermissionDenied:
                refused.append(str(run.pk))
            except ApplicationError as exc:
                refused.append(f"{run.pk}: {exc.message}")
        verb = "Pinned" if pinned else "Unpinned"
        if done:
            self.message_user(request, f"{verb} {done} run(s).")
        if refused:
            self.message_user(
                request,
                f"Not {verb.lower()} (neither yours nor may you manage any run): "
                + ", ".join(refused),
                level=messages.WARNING,
            )

    @admin.action(description="Pin selected runs (retention keeps them)", permissions=["manage"])
    def pin_selected(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._pin(request, queryset, True)

    @admin.action(description="Unpin selected runs", permissions=["manage"])
    def unpin_selected(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._pin(request, queryset, False)


@admin.register(RetentionPrune)
class RetentionPruneAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[RetentionPrune]):
    """Read-only: each prune (the command or a worker's daily one) records what it did."""

    list_display = ("started_at", "finished_at", "trigger", "summary_display", "error")
    readonly_fields = ("started_at", "finished_at", "trigger", "summary", "error")
    date_hierarchy = "started_at"

    @admin.display(description="deleted")
    def summary_display(self, prune: RetentionPrune) -> str:
        s = prune.summary or {}
        return (
            f"{s.get('log_chunks', 0):,} log chunks, {s.get('checkpoint_steps', 0)} steps, "
            f"{filesizeformat(s.get('artifact_bytes', 0))}, {s.get('heartbeats', 0)} heartbeats"
        )


@admin.register(LogChunk)
class LogChunkAdmin(RunVisibilityAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin[LogChunk]):
    run_prefix = "run__"

    list_display = ("run", "seq", "stream", "created_at", "chunk_preview")
    list_select_related = ("run",)
    list_filter = ("stream",)
    raw_id_fields = ("run",)
    readonly_fields = ("run", "seq", "stream", "chunk", "created_at")
    # Counting millions of rows for the paginator would stall the page.
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 200

    @admin.display(description="chunk")
    def chunk_preview(self, chunk: LogChunk) -> str:
        # A chunk can hold hundreds of kilobytes; the change page shows all of it.
        text = chunk.chunk
        return text if len(text) <= CHUNK_PREVIEW_CHARS else text[:CHUNK_PREVIEW_CHARS] + "…"


@admin.register(RunMetric)
class RunMetricAdmin(RunVisibilityAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin[RunMetric]):
    """Read-only: the worker writes these from the run's metric lines and event files."""

    run_prefix = "run__"

    list_display = ("run", "step", "values", "tb_values", "created_at")
    list_select_related = ("run",)
    raw_id_fields = ("run",)
    search_fields = ("run__id",)
    readonly_fields = ("run", "step", "values", "tb_values", "created_at")
    show_full_result_count = False


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdminMixin, admin.ModelAdmin[WorkerHeartbeat]):
    """Read-only: each worker renews its own row; a clean stop deletes it."""

    list_display = (
        "worker_id",
        "hostname",
        "pid",
        "started_at",
        "last_seen",
        "is_fresh",
        "pools",
        "draining",
        "devices_total",
        "devices_busy",
        "stuck_reason",
    )
    search_fields = ("worker_id", "hostname")
    readonly_fields = (
        "worker_id",
        "hostname",
        "pid",
        "started_at",
        "last_seen",
        "pools",
        "draining",
        "drain_deadline",
        "devices_total",
        "devices_busy",
        "stuck_reason",
        "stuck_since",
    )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The pools, their live workers and queue depth, above the workers' list.
        pools = selectors.pool_summaries(lease_seconds=settings.TUNIX_LEASE_SECONDS)
        return super().changelist_view(request, {**(extra_context or {}), "pools": pools})

    @admin.display(description="alive", boolean=True)
    def is_fresh(self, beat: WorkerHeartbeat) -> bool:
        age = (timezone.now() - beat.last_seen).total_seconds()
        return age <= settings.TUNIX_LEASE_SECONDS
