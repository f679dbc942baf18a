"""Nothing answers an anonymous request but the few public routes, checked against the URL
configuration itself.

The list of paths comes from the resolver, so a new route cannot slip through: it is either
refused to anonymous users (401/403, or a redirect ending on a login page) or it must be added
to PUBLIC on purpose. Each public route is also checked to really answer an anonymous request.
Who may do what once logged in: tests/reliability/test_authorization_matrix.py.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

# Route -> the method that answers an anonymous request, and why it is public.
PUBLIC = {
    "healthz": "GET",  # liveness probe
    "readyz": "GET",  # readiness probe
    "metrics": "GET",  # Prometheus; needs a bearer token when TUNIX_METRICS_TOKEN is set
    "accounts/login/": "GET",
    "accounts/logout/": "POST",  # says "logged out" to anyone
    "admin/login/": "GET",
    # The token login itself (throttled per address and username, tests/tunixops/).
    "api/auth/token": "POST",
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
    "id": "1",
    "url": "x",
}
LOGIN_PAGES = ("/accounts/login/", "/admin/login/")


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
    route = route.replace("(?P<url>.*)$", "x")
    if route.startswith("^(?P<app_label>"):
        route = "runs/"
    return route.replace("^", "").replace("$", "")


ROUTES = sorted(set(_routes(get_resolver().url_patterns)))


def anonymous_answer(route: str, method: str) -> str:
    """`refused` (401, 403, or redirected until a login page), `no-method` (405), or
    `answered` (anything else: the route served an anonymous user)."""
    client = Client()
    response = getattr(client, method.lower())(f"/{route}")
    hops = 0
    while response.status_code in (301, 302) and hops < 3:
        location = response["Location"]
        if location.startswith(LOGIN_PAGES):
            return "refused"
        # A redirect to another protected page (`/` -> `/runs/`) counts as that page's answer.
        response, hops = client.get(location), hops + 1
    if response.status_code in (401, 403):
        return "refused"
    if response.status_code == 405:
        return "no-method"
    return "answered"


def test_the_route_list_covers_the_api_pages_and_admin() -> None:
    assert "api/tunix/run" in ROUTES
    assert any(r.startswith("api/tunix/runs/") and r.endswith("/logs") for r in ROUTES)
    assert any(r.startswith("admin/runs/run/") for r in ROUTES)
    assert any(r.startswith("runs/") for r in ROUTES)
    assert set(PUBLIC) <= set(ROUTES), set(PUBLIC) - set(ROUTES)


@pytest.mark.slow
def test_nothing_but_the_public_routes_answers_an_anonymous_request() -> None:
    answering = {
        route
        for route in ROUTES
        for method in ("GET", "POST")
        if anonymous_answer(route, method) == "answered"
    }
    assert answering == set(PUBLIC)


@pytest.mark.parametrize(("route", "method"), sorted(PUBLIC.items()))
def test_each_public_route_answers_an_anonymous_request(
    route: str, method: str, alice: Any
) -> None:
    client = Client()
    if route.startswith("api/"):
        # The token login answers with a token for the right password.
        body = {"username": "alice", "password": "alice-password-1"}
        response = client.post(f"/{route}", body, content_type="application/json")
    else:
        response = getattr(client, method.lower())(f"/{route}")
    assert response.status_code == 200, response.status_code
    assert response.content
