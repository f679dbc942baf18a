from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_the_schema_documents_every_trace_and_dataset_operation(api: APIClient) -> None:
    schema: dict[str, Any] = api.get("/api/schema/").json()
    operations = {
        op["operationId"]
        for path, item in schema["paths"].items()
        if path.startswith(("/api/traces", "/api/datasets"))
        for op in item.values()
    }
    assert operations == {
        "trace_create",
        "trace_list",
        "trace_batch_create",
        "trace_retrieve",
        "dataset_build",
        "dataset_retrieve",
        "dataset_export",
    }
    steps = schema["components"]["schemas"]["TraceInputRequest"]["properties"]["steps"]
    assert steps["maxItems"] == 1000
    assert steps["items"]["properties"]["content"]["maxLength"] == 20_000
