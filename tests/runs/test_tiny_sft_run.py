"""A real Tunix run through a real worker: the smoke test CI runs end to end."""

import json
import re
from typing import Any

import pytest

from runs.execution.worker import Worker
from runs.models import RunStatus
from runs.services import run_dir, run_enqueue
from tests.runs.helpers import log_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.tunix]


@pytest.mark.slow
def test_a_tiny_sft_run_trains_streams_its_loss_and_commits_checkpoints(alice: Any) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    run = run_enqueue(
        recipe="tiny_sft", created_by=alice, config={"max_steps": 12, "save_every_steps": 5}
    )
    Worker(once=True, poll_interval=0.05).run()
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.status_reason + run.stderr_tail
    text = log_text(run, "stdout")
    losses = [float(m[2]) for m in re.finditer(r"^step (\d+) loss ([\d.]+)$", text, re.M)]
    steps = [int(m[1]) for m in re.finditer(r"^step (\d+) loss", text, re.M)]
    assert steps == list(range(1, 13))
    assert losses[-1] < losses[0]
    metrics = [
        json.loads(line.removeprefix("tunixops.metric "))
        for line in text.splitlines()
        if line.startswith("tunixops.metric ")
    ]
    assert [m["step"] for m in metrics] == steps
    checkpoints = run_dir(run.pk) / "checkpoints"
    committed = sorted(
        int(p.name)
        for p in checkpoints.iterdir()
        if p.name.isdigit()
        and ((p / "commit_success.txt").exists() or (p / "_CHECKPOINT_METADATA").exists())
    )
    assert 12 in committed
    assert not list(checkpoints.glob("*.orbax-checkpoint-tmp"))
    assert json.loads((run_dir(run.pk) / "config.json").read_text())["max_steps"] == 12
