from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from artifacts.admin import ArtifactInline
from runs import services
from runs.models import LogChunk, Run
from runs.state_machine import IllegalTransition

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


@admin.register(Run)
class RunAdmin(admin.ModelAdmin[Run]):
    list_display = (
        "id",
        "name",
        "status",
        "recipe",
        "dataset_key",
        "created_at",
        "duration_display",
    )
    list_filter = ("status", "recipe")
    search_fields = ("id", "name")
    readonly_fields = WORKER_FIELDS
    list_select_related = ("created_by",)
    actions = ("cancel_selected",)
    date_hierarchy = "created_at"
    inlines = (ArtifactInline,)

    @admin.display(description="duration")
    def duration_display(self, run: Run) -> str:
        duration = run.duration
        return "" if duration is None else f"{duration.total_seconds():.1f} s"

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


@admin.register(LogChunk)
class LogChunkAdmin(admin.ModelAdmin[LogChunk]):
    list_display = ("run", "seq", "stream", "created_at", "chunk")
    list_select_related = ("run",)
    list_filter = ("stream",)
    raw_id_fields = ("run",)
    readonly_fields = ("run", "seq", "stream", "chunk", "created_at")
    # Counting millions of rows for the paginator would stall the page.
    show_full_result_count = False
    list_per_page = 200

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LogChunk | None = None) -> bool:
        return False
