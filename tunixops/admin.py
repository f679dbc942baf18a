"""The admin site and admin helpers shared by the apps."""

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path


def _view_on_site(request: HttpRequest, content_type_id: str, object_id: str) -> HttpResponse:
    """Django's shortcut, with a malformed id (`/admin/r/<run type>/1/`, not a UUID) a 404
    rather than a 500: Django catches ValueError there but not the ValidationError of a UUID
    key."""
    from django.contrib.contenttypes.views import shortcut

    try:
        return shortcut(request, content_type_id, object_id)
    except ValidationError as exc:
        raise Http404("No such object.") from exc


class TunixAdminSite(admin.AdminSite):
    def get_urls(self) -> list[URLResolver | URLPattern]:
        urls = super().get_urls()
        for index, url in enumerate(urls):
            if isinstance(url, URLPattern) and url.name == "view_on_site":
                urls[index] = path(
                    "r/<path:content_type_id>/<path:object_id>/",
                    self.admin_view(_view_on_site),
                    name="view_on_site",
                )
        return urls


class TunixAdminConfig(AdminConfig):
    """INSTALLED_APPS names this instead of django.contrib.admin, so `admin.site` is ours."""

    default_site = "tunixops.admin.TunixAdminSite"


class ReadOnlyAdminMixin:
    """For rows the admin must never write: the worker, the state machine or a service owns them.

    The console lists them and shows each one; adding, changing and deleting are refused (a
    delete by hand would lose a run's log or metrics, or point a download at other bytes).
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
