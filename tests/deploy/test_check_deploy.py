"""deploy/production.env is what it says: Django's deployment checks find nothing with it."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PRODUCTION_ENV = REPO / "deploy" / "production.env"


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def check_deploy(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The project's own settings, not the tests' (the fast hasher is not a production setting).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNIX_", "PYTEST"))}
    env.update(
        DJANGO_SETTINGS_MODULE="tunixops.settings",
        # The secret comes from the secret store, never from the file.
        SECRET_KEY=secrets.token_urlsafe(50),
        **extra,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_nothing_with_the_production_env_file() -> None:
    values = read_env_file(PRODUCTION_ENV)
    assert "SECRET_KEY" not in values, "secrets do not belong in the committed file"
    done = check_deploy(values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout


def test_without_it_check_deploy_names_what_is_missing() -> None:
    done = check_deploy({})
    assert done.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in done.stderr + done.stdout
