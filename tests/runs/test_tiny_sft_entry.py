"""The tiny_sft entry point run as the worker runs it: a real child process doing real Tunix SFT."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP_RE = re.compile(r"^step (\d+) loss (\S+)$")
METRIC_PREFIX = "tunixops.metric "

pytestmark = [
    pytest.mark.tunix,
    pytest.mark.skipif(
        importlib.util.find_spec("tunix") is None,
        reason="Tunix runtime not installed (pip install -r requirements-tunix.txt)",
    ),
]


def run_entry(
    run_dir: Path, config: dict[str, Any], dataset: Path | None = None
) -> subprocess.CompletedProcess[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    config_path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "runs.entrypoints.tiny_sft"]
    argv += ["--config", str(config_path), "--run-dir", str(run_dir)]
    if dataset is not None:
        argv += ["--dataset", str(dataset)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        argv, cwd=run_dir, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def step_lines(stdout: str) -> list[tuple[int, float]]:
    return [
        (int(m.group(1)), float(m.group(2)))
        for line in stdout.splitlines()
        if (m := STEP_RE.match(line))
    ]


def metric_lines(stdout: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix(METRIC_PREFIX))
        for line in stdout.splitlines()
        if line.startswith(METRIC_PREFIX)
    ]


@pytest.fixture(scope="module")
def twelve_steps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    run_dir = tmp_path_factory.mktemp("tiny_sft") / "run"
    result = run_entry(run_dir, {"max_steps": 12, "save_every_steps": 5, "seed": 3})
    return run_dir, result


@pytest.mark.slow
def test_exits_zero_and_reports_every_step_once_in_order(twelve_steps: tuple[Path, Any]) -> None:
    _, result = twelve_steps
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny_sft: model params=")
    assert "steps=12" in lines[0]
    assert "data=builtin corpus" in lines[0]
    assert [step for step, _ in step_lines(result.stdout)] == list(range(1, 13))
    assert lines[-1].startswith("tiny_sft: done, final loss ")


def test_each_step_line_is_followed_by_its_metric_line(twelve_steps: tuple[Path, Any]) -> None:
    _, result = twelve_steps
    lines = result.stdout.splitlines()
    pairs = [(line, lines[i + 1]) for i, line in enumerate(lines[:-1]) if STEP_RE.match(line)]
    assert len(pairs) == 12
    for step_line, metric_line in pairs:
        assert metric_line.startswith(METRIC_PREFIX)
        metric = json.loads(metric_line.removeprefix(METRIC_PREFIX))
        match = STEP_RE.match(step_line)
        assert match is not None
        assert metric["step"] == int(match.group(1))
        assert isinstance(metric["step"], int)
        assert isinstance(metric["loss"], float)
        assert metric["loss"] == pytest.approx(float(match.group(2)), abs=1e-4)
        assert metric["learning_rate"] == pytest.approx(3e-3)
        assert all(isinstance(v, int | float) for v in metric.values())


def test_loss_falls(twelve_steps: tuple[Path, Any]) -> None:
    _, result = twelve_steps
    losses = [m["loss"] for m in metric_lines(result.stdout)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_checkpoints_are_committed_and_restorable(twelve_steps: tuple[Path, Any]) -> None:
    run_dir, result = twelve_steps
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt_root = run_dir / "checkpoints"
    assert not list(ckpt_root.glob("*.orbax-checkpoint-tmp*"))
    steps = sorted(int(p.name) for p in ckpt_root.iterdir() if p.name.isdigit())
    assert 12 in steps
    assert len(steps) <= 3  # max_to_keep
    for step in steps:
        step_dir = ckpt_root / str(step)
        assert (step_dir / "commit_success.txt").exists() or (
            step_dir / "_CHECKPOINT_METADATA"
        ).exists()
        assert (step_dir / "model_params").is_dir()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

    # Restored in a child so this test process never imports JAX.
    script = (
        "import json, sys, jax, orbax.checkpoint as ocp\n"
        "tree = ocp.PyTreeCheckpointer().restore(sys.argv[1])\n"
        "leaves = jax.tree_util.tree_leaves(tree)\n"
        "print(json.dumps({'leaves': len(leaves), 'size': sum(int(x.size) for x in leaves)}))\n"
    )
    restored = subprocess.run(
        [sys.executable, "-c", script, str(ckpt_root / "12" / "model_params")],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr[-3000:]
    summary = json.loads(restored.stdout.strip().splitlines()[-1])
    assert summary["leaves"] > 0
    assert 50_000 < summary["size"] < 200_000


@pytest.mark.slow
def test_rerun_with_more_steps_resumes(twelve_steps: tuple[Path, Any], tmp_path: Path) -> None:
    run_dir, first = twelve_steps
    assert first.returncode == 0, first.stderr[-3000:]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    result = run_entry(copy, {"max_steps": 14, "save_every_steps": 5, "seed": 3})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint step 12" in result.stdout
    assert [step for step, _ in step_lines(result.stdout)] == [13, 14]
    assert (copy / "checkpoints" / "14" / "commit_success.txt").exists()


@pytest.mark.slow
def test_dataset_jsonl_is_used(tmp_path: Path) -> None:
    dataset = tmp_path / "data.jsonl"
    records = [
        {"prompt": f"Q: what is {a} plus {a}? ", "completion": f"A: {a + a}.\n"} for a in range(40)
    ]
    dataset.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = run_entry(tmp_path / "run", {"max_steps": 3, "seq_len": 16}, dataset=dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert "data=dataset" in first
    assert "data.jsonl" in first
    assert "40 records" in first
    assert [step for step, _ in step_lines(result.stdout)] == [1, 2, 3]


def test_bad_config_exits_2_with_clear_message(tmp_path: Path) -> None:
    result = run_entry(tmp_path / "run", {"max_steps": 0})
    assert result.returncode == 2
    assert "max_steps" in result.stderr
    assert "between 1 and" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_lora_rank_4_trains(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_entry(run_dir, {"max_steps": 3, "lora_rank": 4, "save_every_steps": 2})
    assert result.returncode == 0, result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert "lora_rank=4" in first
    assert "trainable=" in first
    assert [step for step, _ in step_lines(result.stdout)] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "3" / "commit_success.txt").exists()
