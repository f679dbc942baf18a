import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs.models import Run, RunStatus
from runs.permissions import OPERATORS, SUBMITTERS
from runs.services import role_groups_ensure
from traces.models import Dataset


@pytest.fixture(scope="session", autouse=True)
def flush_by_delete() -> Iterator[None]:
    """A transactional test ends with Django's flush of every table: on PostgreSQL one TRUNCATE,
    which takes ~0.28 s here however little the tables hold (it gives each table new files),
    while DELETE of the few rows a test leaves takes ~3 ms; over ~380 transactional tests that
    is minutes. Django's foreign keys are DEFERRABLE INITIALLY DEFERRED and the flush runs its
    statements in one transaction, so the tables empty in any order. A flush that resets
    sequences keeps Django's own statements."""
    if connection.vendor != "postgresql":
        yield
        return
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def delete(
        self: DatabaseOperations,
        style: Any,
        tables: Sequence[str],
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences or not tables:
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        # Table names from Django's own introspection, quoted.
        return [f"DELETE FROM {self.quote_name(table)};" for table in tables]  # noqa: S608

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", delete)
        yield


@pytest.fixture(autouse=True)
def artifact_root(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.TUNIX_ARTIFACT_ROOT = root
    return root


@pytest.fixture(autouse=True)
def fresh_rate_counts() -> None:
    """The API's throttles count in the process's cache: each test starts with a clean slate."""
    cache.clear()


@pytest.fixture
def make_user(django_user_model: Any) -> Any:
    """`make_user("carol", roles=["operators"], is_staff=True, perms=["runs.view_run"])`.

    The role groups come from a data migration, which a transactional test's flush removes, so
    they are made again (as `manage.py tunix_role` would) when missing.
    """

    def make(
        username: str, *, roles: Sequence[str] = (), perms: Sequence[str] = (), **flags: Any
    ) -> Any:
        user = django_user_model.objects.create_user(
            username=username, password=f"{username}-password-1", **flags
        )
        if roles:
            role_groups_ensure()
            user.groups.add(*Group.objects.filter(name__in=roles))
        for perm in perms:
            app_label, _, codename = perm.partition(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return user

    return make


@pytest.fixture
def alice(make_user: Any) -> Any:
    """A submitter: may submit runs, upload traces and build datasets (the common user)."""
    return make_user("alice", roles=[SUBMITTERS])


@pytest.fixture
def bob(make_user: Any) -> Any:
    """Another submitter."""
    return make_user("bob", roles=[SUBMITTERS])


@pytest.fixture
def operator(make_user: Any) -> Any:
    """May cancel and requeue anyone's run, set priorities, and use the admin console."""
    return make_user("olga", roles=[OPERATORS], is_staff=True)


def api_client(user: Any) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


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
        key = fields.pop("dataset_key", None)
        if key:
            name, _, version = key.rpartition("-")
            Dataset.objects.get_or_create(
                key=key,
                defaults={
                    "name": name,
                    "version": version,
                    "selection": "latest",
                    "limit": 1,
                    "trace_count": 0,
                },
            )
            fields["dataset_id"] = key
        return Run.objects.create(status=status, **fields)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if connection.vendor == "postgresql":
        return
    # Tests marked `postgres` skip on SQLite (`DATABASE_URL= scripts/test`).
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(skip)


CHILD_RECIPES = Path(__file__).parent / "children" / "recipes.toml"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def child_recipes(settings: Any) -> Path:
    settings.TUNIX_RECIPES_FILE = str(CHILD_RECIPES)
    return CHILD_RECIPES


def database_url() -> str:
    """The URL of the database the tests run against, for processes the tests start."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def process_env(artifact_root: Path, child_recipes: Path) -> dict[str, str]:
    """Environment for a worker or server process sharing this test's database and files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=database_url(),
        SECRET_KEY="test-only",
        TUNIX_ARTIFACT_ROOT=str(artifact_root),
        TUNIX_RECIPES_FILE=str(child_recipes),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def spawn_worker(process_env: dict[str, str]) -> Iterator[Any]:
    """Start real `manage.py tunix_worker` processes; all are killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "tunix_worker", *args],
            env={**process_env, **env},
            cwd=REPO,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def make_dataset() -> Any:
    """A stored dataset of `count` arithmetic traces (tests/traces/helpers.py); returns its key."""
    from tests.traces.helpers import make_traces
    from traces.services import dataset_build

    def make(count: int = 4, name: str = "arith") -> str:
        make_traces(count)
        return dataset_build(name=name, version="v1", created_by=None, limit=count).key

    return make
