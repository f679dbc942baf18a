"""The API's JSON parser refuses what it cannot read with a 400, never a 500."""

from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("opener", ["[", '{"a":'])
@pytest.mark.parametrize(
    "path", ["/api/tunix/run", "/api/traces/batch", "/api/datasets/build", "/api/auth/token"]
)
def test_json_nested_2000_deep_answers_400_on_every_json_operation(
    api: APIClient, opener: str, path: str
) -> None:
    closer = "]" if opener == "[" else "}"
    response = api.post(path, opener * 2000 + "1" + closer * 2000, content_type="application/json")
    assert response.status_code == 400
    # Refused before parsing, past TUNIX_MAX_JSON_DEPTH (100).
    assert response.json()["error"]["code"] == "nested_too_deep"


def test_json_nested_a_little_still_parses(api: APIClient, make_run: Any) -> None:
    response = api.post("/api/tunix/run", {"recipe": "tiny_sft", "config": {}}, format="json")
    assert response.status_code == 202
