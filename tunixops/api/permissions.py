"""DRF permission classes built from Django permissions, so a refused request stops before its
body is parsed. The services check the same rules again (runs/permissions.py): the pages and the
admin go through them too."""

from typing import Any

from rest_framework.permissions import SAFE_METHODS, IsAuthenticated
from rest_framework.request import Request


def writes_need(perm: str, refusal: str) -> type[IsAuthenticated]:
    """Any user may read; a write (POST, ...) needs `perm`, else 403 with `refusal`."""

    class WritesNeed(IsAuthenticated):
        message = refusal

        def has_permission(self, request: Request, view: Any) -> bool:
            if not super().has_permission(request, view):
                return False
            return request.method in SAFE_METHODS or bool(request.user.has_perm(perm))

    WritesNeed.__name__ = f"WritesNeed[{perm}]"
    return WritesNeed
