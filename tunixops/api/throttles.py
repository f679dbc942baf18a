"""Per-user request rates for the API: one budget for reads, one for writes.

Writes (POST: enqueue, cancel, trace uploads, dataset builds) and reads (everything else) are
counted per user in a sliding window, in the process's cache, so each web process counts on its
own: with N processes behind a balancer a user gets up to N times the rate. A request past the
rate is a 429 in the API's error shape with `Retry-After`, the seconds until the oldest counted
request leaves the window. `off` turns that budget off.
"""

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _UserThrottle(UserRateThrottle):
    setting = ""
    reads = True

    def get_rate(self) -> str | None:
        # Read per request (DRF reads its own setting once, at import), so a test can change it.
        return str(getattr(settings, self.setting) or "") or None

    def allow_request(self, request: Request, view: Any) -> bool:
        if (request.method in SAFE_METHODS) != self.reads:
            return True
        return bool(super().allow_request(request, view))

    def wait(self) -> float:
        """Until the oldest request in the window leaves it: then one more is allowed."""
        duration = float(getattr(self, "duration", 0) or 0)
        history: list[float] = getattr(self, "history", [])
        if not history:
            return max(1.0, duration)
        return max(1.0, duration - (float(self.now) - history[-1]))


class UserReadThrottle(_UserThrottle):
    scope = "read"
    setting = "TUNIX_API_READ_RATE"
    reads = True


class UserWriteThrottle(_UserThrottle):
    scope = "write"
    setting = "TUNIX_API_WRITE_RATE"
    reads = False
