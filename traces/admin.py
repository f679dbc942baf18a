from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from traces.models import Dataset, Trace


@admin.register(Trace)
class TraceAdmin(admin.ModelAdmin[Trace]):
    list_display = ("id", "trace_version", "step_count", "size_bytes", "created_by", "created_at")
    list_filter = ("trace_version",)
    search_fields = ("=id",)
    list_select_related = ("created_by",)
    readonly_fields = (
        "trace_version",
        "prompt",
        "steps",
        "final_answer",
        "meta",
        "step_count",
        "size_bytes",
        "created_by",
        "created_at",
    )
    # Counting a large table for the paginator would stall the page.
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Trace]:
        # The list shows none of the large columns; a trace's own page loads them when shown.
        return super().get_queryset(request).defer("prompt", "steps", "final_answer")

    # Traces arrive through the API, which validates them; datasets cite them by id, so they are
    # never edited afterwards. Deleting one a dataset holds is refused (PROTECT).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Trace | None = None) -> bool:
        return False


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin[Dataset]):
    list_display = ("key", "selection", "seed", "limit", "trace_count", "created_by", "created_at")
    list_filter = ("selection",)
    search_fields = ("key", "name")
    list_select_related = ("created_by",)
    readonly_fields = (
        "key",
        "name",
        "version",
        "filters",
        "selection",
        "seed",
        "limit",
        "trace_count",
        "stats",
        "created_by",
        "created_at",
    )
    date_hierarchy = "created_at"

    # Built through the API; a dataset is frozen once built so that runs can be repeated.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Dataset | None = None) -> bool:
        return False
