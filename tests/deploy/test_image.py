"""The image: what `COPY . .` leaves out (.dockerignore), who it runs as, and compose's token.

No Docker daemon is needed: .dockerignore is applied with Docker's rules (Go's filepath.Match per
pattern, `**` for any depth, a match on a directory excludes all below it, `!` re-includes, the
last matching line wins) to the paths a working copy holds.
"""

import fnmatch
import re

import pytest
import yaml

from tests.conftest import REPO


def _patterns() -> list[tuple[bool, list[re.Pattern[str]]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        # fnmatch's `*` also crosses `/`, close enough to `**` for these patterns; a leading
        # `**/` may also match nothing at all.
        variants = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        rules.append((include, [re.compile(fnmatch.translate(v)) for v in variants]))
    return rules


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative, with /) out of the build context."""
    parts = path.split("/")
    result = False
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for include, regexes in _patterns():
        # A pattern excludes a path if it matches the path or any of its parent directories.
        if any(regex.match(prefix) for regex in regexes for prefix in prefixes):
            result = not include
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "var/tunixops.sqlite3",
        "var/secret_key",
        "var/artifacts/5f0b/checkpoints/10/x",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        ".venv/bin/python",
        "runs/__pycache__/models.cpython-311.pyc",
        "__pycache__/x.pyc",
        "deploy/tls/privkey.pem",
        "staticfiles/runs/console.css",
        "test-output/e2e/run.png",
    ],
)
def test_secrets_state_and_history_stay_out_of_the_image(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "manage.py",
        ".env.example",
        "runs/models.py",
        "tunixops/settings.py",
        "deploy/tls_selfsigned.py",
        "deploy/nginx.conf",
        "static/runs/runpage.mjs",
        "templates/base.html",
        "requirements.txt",
    ],
)
def test_what_the_app_needs_goes_in(path: str) -> None:
    assert not ignored(path)


def test_the_image_runs_as_an_unprivileged_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), users


def test_compose_requires_a_metrics_token_for_every_app_process() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in ("migrate", "web", "worker"):
        token = compose["services"][service]["environment"]["TUNIX_METRICS_TOKEN"]
        # `${VAR:?message}`: compose refuses to start when .env does not set it.
        assert re.fullmatch(r"\$\{TUNIX_METRICS_TOKEN:\?.+\}", token), token
