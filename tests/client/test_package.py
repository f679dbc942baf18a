"""The client installs on its own: a fresh venv, `pip install ./client`, no Django."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("django", "rest_framework", "tunixops", "runs", "artifacts", "traces", "psycopg")


@pytest.mark.slow
def test_the_package_installs_alone_in_a_fresh_venv_and_imports_no_django(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # From a copy: pip builds in the source tree and would leave client/build/ in the checkout.
    source = tmp_path / "client"
    shutil.copytree(REPO / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    probe = (
        "import json, sys\n"
        "import tunixops_client, tunixops_client.cli\n"
        "from tunixops_client import Client\n"
        "Client('http://127.0.0.1:1', 'token').close()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # Run from an empty directory, so that nothing of the repository is importable.
    modules = json.loads(
        subprocess.run(
            [python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
        ).stdout
    )
    assert "tunixops_client.cli" in modules and "httpx_sse" in modules
    server_side = [m for m in modules if m.split(".")[0] in SERVER_PACKAGES]
    assert server_side == []
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"tunixops-client", "httpx", "httpx-sse"} <= names
    assert not names & {"django", "djangorestframework", "daphne", "psycopg"}
    version = subprocess.run(
        [venv / "bin" / "tunixops", "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == "tunixops 0.1.0"
    usage = subprocess.run([venv / "bin" / "tunixops"], capture_output=True, text=True)
    assert usage.returncode == 64 and "usage: tunixops" in usage.stderr
