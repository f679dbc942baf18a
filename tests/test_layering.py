"""The layers import downwards only: the worker and the domain know nothing of the web API."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Services, selectors, the state machine, the worker and the domain errors: none of them may
# import DRF, drf-spectacular or the API plumbing (tunixops/api/).
DOMAIN = [
    *REPO.glob("*/services.py"),
    *REPO.glob("*/selectors.py"),
    REPO / "runs" / "state_machine.py",
    REPO / "runs" / "recipes.py",
    REPO / "runs" / "retention.py",
    REPO / "runs" / "permissions.py",
    REPO / "tunixops" / "exceptions.py",
    *(REPO / "runs" / "execution").glob("*.py"),
    *(REPO / "runs" / "entrypoints").glob("*.py"),
    *(REPO / "webhooks" / name for name in ("delivery.py", "sender.py", "signing.py")),
    REPO / "webhooks" / "conditions.py",
]
WEB_ONLY = ("rest_framework", "drf_spectacular", "tunixops.api")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", DOMAIN, ids=lambda p: str(p.relative_to(REPO)))
def test_domain_and_worker_modules_do_not_import_the_web_layer(path: Path) -> None:
    web = sorted(m for m in imported_modules(path) if m.startswith(WEB_ONLY))
    assert not web, f"{path.relative_to(REPO)} imports {web}"


def test_the_entry_points_import_nothing_of_django() -> None:
    for path in (REPO / "runs" / "entrypoints").glob("*.py"):
        django = sorted(m for m in imported_modules(path) if m.split(".")[0] == "django")
        assert not django, f"{path.relative_to(REPO)} imports {django}"


def test_loading_the_worker_after_setup_adds_no_drf_module(process_env: dict[str, str]) -> None:
    probe = (
        "import django, sys; django.setup(); before = set(sys.modules);"
        "import runs.execution.worker, runs.management.commands.tunix_worker;"
        "print(sorted(m for m in set(sys.modules) - before"
        " if m.startswith(('rest_framework', 'drf_spectacular'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=process_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout
