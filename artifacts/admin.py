from django.contrib import admin
from django.http import HttpRequest

from artifacts.models import Artifact

READONLY = ("run", "name", "size_bytes", "sha256", "step", "created_at", "updated_at")


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin[Artifact]):
    list_display = ("name", "run", "step", "size_bytes", "created_at")
    list_select_related = ("run",)
    search_fields = ("name", "run__id", "sha256")
    readonly_fields = READONLY
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Artifact | None = None) -> bool:
        return False
