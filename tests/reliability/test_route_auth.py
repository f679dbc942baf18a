"""Every route refuses anonymous users, checked against the URL configuration itself.

A new route cannot slip through untested: the list of paths comes from the resolver, and only the
public allowlist below may answer an anonymous request with anything but 401/403 or a redirect to
a login page.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

PUBLIC = {
    "healthz",
    "readyz",
    "metrics",  # public unless TUNIX_METRICS_TOKEN is set (tested in tests/metrics)
    "accounts/login/",
    "accounts/logout/",
    "admin/login/",
    "admin/logout/",
}
SAMPLES = {
    "run_id": str(uuid.uuid4()),
    "artifact_id": "1",
    "step": "1",
    "key": "missing-v1",
    "trace_id": "1",
    "object_id": "1",
    "app_label": "runs",
    "content_type_id": "1",
    "url": "x",
}


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + _concrete(entry))
        elif isinstance(entry, URLPattern):
            yield prefix + _concrete(entry)


def _concrete(entry: URLPattern | URLResolver) -> str:
    pattern = entry.pattern
    route = str(pattern)
    if hasattr(pattern, "converters") and pattern.converters:
        for name in pattern.converters:
            route = route.replace(f"<str:{name}>", SAMPLES.get(name, "x"))
            route = route.replace(f"<int:{name}>", SAMPLES.get(name, "1"))
            route = route.replace(f"<uuid:{name}>", SAMPLES["run_id"])
            route = route.replace(f"<path:{name}>", SAMPLES.get(name, "x"))
            route = route.replace(f"<{name}>", SAMPLES.get(name, "x"))
    # Regex routes (the admin's) become a plausible literal.
    return (
        route.replace("^", "")
        .replace("$", "")
        .replace("(?P<app_label>runs|artifacts|traces|auth|authtoken)/", "runs/")
    )


ROUTES = sorted(set(_routes(get_resolver().url_patterns)))


def test_the_route_list_covers_the_api_pages_and_admin() -> None:
    assert "api/tunix/run" in ROUTES
    assert any(r.startswith("api/tunix/runs/") and r.endswith("/logs") for r in ROUTES)
    assert any(r.startswith("admin/") for r in ROUTES)
    assert any(r.startswith("runs/") for r in ROUTES)


@pytest.mark.parametrize("route", [r for r in ROUTES if r not in PUBLIC])
@pytest.mark.parametrize("method", ["get", "post"])
def test_every_route_refuses_anonymous_users(route: str, method: str) -> None:
    client = Client()
    response = getattr(client, method)(f"/{route}")
    hops = 0
    while response.status_code in (301, 302) and "login" not in response["Location"] and hops < 3:
        # A redirect to another protected page (`/` -> `/runs/`) is fine if that one asks to log in.
        response, hops = client.get(response["Location"]), hops + 1
    if response.status_code in (301, 302):
        assert "login" in response["Location"], f"/{route} redirects to {response['Location']}"
        return
    # 405 means the method does not exist for anyone; the other method proves the auth.
    assert response.status_code in (401, 403, 405), (
        f"{method.upper()} /{route}: {response.status_code}"
    )


def test_the_public_routes_are_only_the_health_metrics_and_login_pages() -> None:
    public = [r for r in ROUTES if r in PUBLIC]
    assert set(public) <= PUBLIC
