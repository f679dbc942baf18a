"""Shared plumbing for the bench scripts: a throwaway PostgreSQL database, processes, stats."""

import os
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


@contextmanager
def scratch_database(tmp: Path) -> Iterator[dict[str, str]]:
    """A fresh, migrated database and artifact root; yields the environment for processes."""
    name = f"tunixops_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        **os.environ,
        "DATABASE_URL": f"{PG}/{name}",
        "SECRET_KEY": "bench-only",
        "TUNIX_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "TUNIX_RECIPES_FILE": str(REPO / "tests" / "children" / "recipes.toml"),
        "DJANGO_SETTINGS_MODULE": "tunixops.settings",
        "LOG_LEVEL": "WARNING",
        # The benches measure capacity with one user: the per-user request rates would measure
        # the throttle instead.
        "TUNIX_API_READ_RATE": "off",
        "TUNIX_API_WRITE_RATE": "off",
    }
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True
        )
        yield env
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "manage.py", "tunix_worker", *args], cwd=REPO, env=env)
