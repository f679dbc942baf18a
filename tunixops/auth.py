"""What a locked-out login sees (django-axes calls this; see AXES_* in settings.py)."""

from typing import Any

from axes.helpers import get_cool_off
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from tunixops.api.errors import error_body


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """429 with the login page's look, saying for how long, and Retry-After for scripts.

    Axes counts the cool-off from the last failure, and every attempt during the lockout is one,
    so the full cool-off is what is left after this attempt.
    """
    cool_off = get_cool_off(request)
    seconds = round(cool_off.total_seconds()) if cool_off else 0
    wait = f"{seconds} seconds" if seconds < 120 else f"{round(seconds / 60)} minutes"
    response: HttpResponse
    if request.path.startswith("/api/"):
        # The token login: the API's error shape.
        message = f"Too many failed logins for this username from this address; retry in {wait}."
        response = JsonResponse(error_body("locked_out", message), status=429)
    else:
        response = render(request, "registration/locked_out.html", {"wait": wait}, status=429)
    response["Retry-After"] = str(seconds)
    return response
