from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from artifacts.admin import ArtifactInline
from runs import services
from runs.models import LogChunk, Run, RunMetric, WorkerHeartbeat
from runs.recipes import ConfigError
from runs.state_machine import IllegalTransition
from runs.templatetags.run_pages import duration

CHUNK_PREVIEW_CHARS = 300

# Written by the worker and the state machine only; editing them by hand would bypass both.
WORKER_FIELDS = (
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
class RunAdmin(admin.ModelAdmin[Run]):
    list_display = (
        "id",
        "name",
        "status_badge",
        "recipe",
        "dataset_key",
        "worker_id",
        "attempt_display",
        "created_at",
        "duration_display",
        "links",
    )
    list_filter = ("status", "recipe", "created_by")
    search_fields = ("id", "name", "recipe", "dataset_key", "worker_id", "created_by__username")
    readonly_fields = ("links", *WORKER_FIELDS)
    list_select_related = ("created_by",)
    actions = ("cancel_selected", "requeue_selected")
    date_hierarchy = "created_at"
    inlines = (ArtifactInline,)

    class Media:
        css = {"all": ("runs/admin.css",)}

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

    @admin.display(description="pages")
    def links(self, run: Run) -> SafeString:
        if run.pk is None:
            return format_html("")
        chunks = reverse("admin:runs_logchunk_changelist") + f"?run__id__exact={run.pk}"
        return format_html('{} · <a href="{}">log chunks</a>', run_page_links(run), chunks)

    @admin.action(description="Cancel selected runs")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        done, refused = 0, []
        for run in queryset:
            try:
                services.run_cancel(run_id=run.pk, user=request.user, reason="from the admin")
                done += 1
            except IllegalTransition as exc:
                refused.append(f"{run.pk} is {exc.current}")
        if done:
            self.message_user(request, f"Cancelled or asked to cancel {done} run(s).")
        if refused:
            self.message_user(
                request, "Not cancelled: " + "; ".join(refused), level=messages.WARNING
            )

    @admin.action(description="Requeue selected finished runs (as new runs)")
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


@admin.register(LogChunk)
class LogChunkAdmin(admin.ModelAdmin[LogChunk]):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LogChunk | None = None) -> bool:
        return False


@admin.register(RunMetric)
class RunMetricAdmin(admin.ModelAdmin[RunMetric]):
    """Read-only: the worker writes these from the run's metric lines."""

    list_display = ("run", "step", "values", "created_at")
    list_select_related = ("run",)
    raw_id_fields = ("run",)
    search_fields = ("run__id",)
    readonly_fields = ("run", "step", "values", "created_at")
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RunMetric | None = None) -> bool:
        return False


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin[WorkerHeartbeat]):
    """Read-only: each worker renews its own row; a clean stop deletes it."""

    list_display = ("worker_id", "hostname", "pid", "started_at", "last_seen", "is_fresh")
    search_fields = ("worker_id", "hostname")
    readonly_fields = ("worker_id", "hostname", "pid", "started_at", "last_seen")

    @admin.display(description="alive", boolean=True)
    def is_fresh(self, beat: WorkerHeartbeat) -> bool:
        age = (timezone.now() - beat.last_seen).total_seconds()
        return age <= settings.TUNIX_LEASE_SECONDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: WorkerHeartbeat | None = None
    ) -> bool:
        return False
