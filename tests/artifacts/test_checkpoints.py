"""Checkpoints of a real `tiny_sft` run: registered while it trains, pruned steps dropped, and a
downloaded step zip that Orbax restores after unzipping."""

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from artifacts.fs import ORBAX_TMP_MARKER
from artifacts.models import Artifact
from artifacts.services import artifacts_sync
from runs.models import Run
from tests.artifacts.servers import REPO, Daphne

pytestmark = [
    pytest.mark.tunix,
    # Restoring without sharding arguments reads them from the checkpoint, as a user would.
    pytest.mark.filterwarnings("ignore:Sharding info not provided"),
    pytest.mark.skipif(
        importlib.util.find_spec("tunix") is None,
        reason="Tunix runtime not installed (pip install -r requirements-tunix.txt)",
    ),
]

# Six saves with Orbax keeping three: three steps are pruned while the run goes on.
CONFIG = {"max_steps": 30, "save_every_steps": 5, "batch_size": 4, "seq_len": 16}


def start_tiny_sft(run_dir: Path) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(CONFIG))
    argv = [sys.executable, "-m", "runs.entrypoints.tiny_sft"]
    argv += ["--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        argv, cwd=run_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def committed_steps(run_dir: Path) -> set[int]:
    markers = ("commit_success.txt", "_CHECKPOINT_METADATA")
    return {
        int(p.name)
        for p in (run_dir / "checkpoints").iterdir()
        if p.name.isdigit() and any((p / marker).exists() for marker in markers)
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny_sft run directory, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("tiny_sft")
    proc = start_tiny_sft(run_dir)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    return run_dir


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_steps_register_while_training_and_pruned_ones_leave(
    make_run: Any, artifact_root: Path
) -> None:
    run: Run = make_run()
    run_dir = artifact_root / str(run.pk)
    proc = start_tiny_sft(run_dir)
    seen_steps: set[int] = set()
    steps_before_exit: set[int] = set()
    try:
        while proc.poll() is None:
            artifacts_sync(run_id=run.pk)
            names = list(Artifact.objects.filter(run=run).values_list("name", "step"))
            assert not any(ORBAX_TMP_MARKER in name for name, _ in names)
            steps = {step for _, step in names if step is not None}
            seen_steps |= steps
            steps_before_exit = steps or steps_before_exit
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode(errors="replace")

    artifacts_sync(run_id=run.pk)

    final = set(Artifact.objects.filter(run=run, step__isnull=False).values_list("step", flat=True))
    assert final == committed_steps(run_dir)
    assert len(final) == 3
    assert steps_before_exit, "no checkpoint could be listed before training finished"
    assert seen_steps - final, "no pruned step was ever listed, so none could leave the list"
    for artifact in Artifact.objects.filter(run=run):
        assert (run_dir / artifact.name).is_file()


@pytest.fixture
def live_run(trained: Path, make_run: Any, on_live_root: Path) -> Iterator[Run]:
    run: Run = make_run()
    shutil.copytree(trained, on_live_root / str(run.pk), symlinks=True)
    artifacts_sync(run_id=run.pk)
    yield run


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_downloaded_step_zip_restores_with_orbax(
    live_run: Run, daphne: Daphne, token: str, tmp_path: Path, on_live_root: Path
) -> None:
    orbax = pytest.importorskip("orbax.checkpoint", reason="orbax-checkpoint is not installed")
    import numpy as np

    listing = httpx.get(
        f"{daphne.base_url}/api/tunix/runs/{live_run.pk}/checkpoints",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    ).json()
    step = max(c["step"] for c in listing)
    assert len(listing) == 3

    response = httpx.get(
        f"{daphne.base_url}/api/tunix/runs/{live_run.pk}/checkpoints/{step}/download",
        headers={"Authorization": f"Token {token}"},
        timeout=120,
    )
    assert response.status_code == 200
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        archive.extractall(unzipped)
    step_files = Artifact.objects.filter(run=live_run, step=step)
    assert len(archive.namelist()) == step_files.count()

    checkpointer = orbax.PyTreeCheckpointer()
    restored = checkpointer.restore(unzipped / str(step) / "model_params")
    original = checkpointer.restore(
        on_live_root / str(live_run.pk) / "checkpoints" / str(step) / "model_params"
    )
    flat_restored = _leaves(restored)
    flat_original = _leaves(original)
    assert flat_restored.keys() == flat_original.keys()
    assert len(flat_restored) > 5
    for key, value in flat_original.items():
        np.testing.assert_array_equal(np.asarray(flat_restored[key]), np.asarray(value))


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}/{key}"))
        return out
    return {prefix: tree}
