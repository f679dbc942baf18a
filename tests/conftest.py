from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs.models import Run, RunStatus


@pytest.fixture(autouse=True)
def artifact_root(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.TUNIX_ARTIFACT_ROOT = root
    return root


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="alice", password="alice-password-1")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="bob", password="bob-password-1")


@pytest.fixture
def api(alice: Any) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=alice)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def make_run(alice: Any) -> Any:
    def make(status: str = RunStatus.PENDING, **fields: Any) -> Run:
        fields.setdefault("recipe", "tiny_sft")
        fields.setdefault("timeout_seconds", 600)
        fields.setdefault("config", {"max_steps": 5})
        fields.setdefault("created_by", alice)
        return Run.objects.create(status=status, **fields)

    return make


def needs_postgres() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)"
    )
