"""The webhook settings stop a process at start when they cannot work together."""

import subprocess
import sys

from tests.conftest import REPO


def start(**env: str) -> subprocess.CompletedProcess[str]:
    probe = (
        "import django; django.setup(); from django.conf import settings;"
        "print(settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE)"
    )
    return subprocess.run(
        [sys.executable, "-c", probe],
        env={"DJANGO_SETTINGS_MODULE": "tunixops.settings", "PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_lease_no_longer_than_the_timeout_is_refused() -> None:
    done = start(
        SECRET_KEY="x", TUNIX_WEBHOOKS_TIMEOUT_SECONDS="30", TUNIX_WEBHOOKS_LEASE_SECONDS="30"
    )
    assert done.returncode != 0
    assert "TUNIX_WEBHOOKS_LEASE_SECONDS must be longer" in done.stderr


def test_private_targets_are_refused_by_default_unless_debug() -> None:
    assert start(SECRET_KEY="x").stdout.strip() == "False"
    assert start(DEBUG="true").stdout.strip() == "True"
    assert start(SECRET_KEY="x", TUNIX_WEBHOOKS_ALLOW_PRIVATE="true").stdout.strip() == "True"
