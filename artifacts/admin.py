from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from artifacts.models import Artifact
from runs.models import Run
from runs.permissions import RunVisibilityAdminMixin
from tunixops.admin import ReadOnlyAdminMixin

# The worker's sync writes the registry; an edit by hand would point a download at other bytes.
READONLY = ("run", "name", "size_bytes", "sha256", "step", "created_at", "updated_at")


class ArtifactDisplay:
    @admin.display(description="size", ordering="size_bytes")
    def size_display(self, artifact: Artifact) -> str:
        return filesizeformat(artifact.size_bytes)

    @admin.display(description="download")
    def download_link(self, artifact: Artifact) -> str:
        if artifact.pk is None:
            return ""
        url = reverse(
            "api-artifact-download",
            kwargs={"run_id": artifact.run_id, "artifact_id": artifact.pk},
        )
        return format_html('<a href="{}">download</a>', url)


@admin.register(Artifact)
class ArtifactAdmin(
    RunVisibilityAdminMixin, ReadOnlyAdminMixin, ArtifactDisplay, admin.ModelAdmin[Artifact]
):
    run_prefix = "run__"

    list_display = ("name", "run", "step", "size_display", "created_at", "download_link")
    list_select_related = ("run",)
    list_filter = (("step", admin.EmptyFieldListFilter),)
    search_fields = ("name", "=run__id", "=sha256")
    readonly_fields = (*READONLY, "download_link")
    raw_id_fields = ("run",)
    date_hierarchy = "created_at"
    show_full_result_count = False
    list_per_page = 200


class ArtifactInline(ArtifactDisplay, admin.TabularInline[Artifact, Run]):
    """The run's files on its admin page, read-only; the next sync would undo any edit anyway."""

    model = Artifact
    fields = ("name", "step", "size_display", "sha256", "created_at", "download_link")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Artifact]:
        return super().get_queryset(request).select_related("run")

    def has_add_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False
