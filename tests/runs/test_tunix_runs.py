"""Real `peft` and `grpo` runs on TunixOps' tiny model, offline, through a real worker."""

import asyncio
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.execution.worker import Worker
from runs.models import Run, RunStatus
from runs.services import run_cancel, run_dir
from tests.runs.helpers import WorkerThread, log_text, status_of, wait_for
from tests.runs.test_api import post_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.tunix, pytest.mark.slow]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the first run builds the tiny model, the others reuse it."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def offline_cpu_runtime(settings: Any, monkeypatch: Any, model_cache: Path) -> None:
    pytest.importorskip("tunix", reason="needs the Tunix runtime (requirements-tunix.txt)")
    settings.TUNIX_MODEL_CACHE = model_cache
    # Passed on to the children: nothing may come from the Hugging Face Hub, and JAX uses the CPU.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def run_to_end(api: APIClient, body: dict[str, Any]) -> tuple[Run, float]:
    response = post_run(api, body)
    assert response.status_code == 202, response.content
    started = time.monotonic()
    Worker(once=True, poll_interval=0.05).run()
    wall = time.monotonic() - started
    run = Run.objects.get(pk=response.json()["run_id"])
    assert run.status == RunStatus.COMPLETED, run.status_reason + run.stderr_tail[-3000:]
    print(f"{body['recipe']} run: {wall:.1f} s wall")
    return run, wall


def event_file_series(run: Run) -> dict[int, dict[str, float]]:
    """The scalars of the run's event files, read with TensorBoard's own loader, named as the
    worker names them (the `train` part dropped, JAX telemetry left out)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    series: dict[int, dict[str, float]] = {}
    files = sorted((run_dir(run.pk) / "tb").glob("events.out.tfevents.*"))
    assert files, "the run wrote no event file"
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag.startswith("jax/"):
                    continue
                name = "/".join(p for p in value.tag.split("/") if p != "train")
                number = float(tensor_util.make_ndarray(value.tensor))
                series.setdefault(event.step, {})[name] = number
    return series


def stored_series(api: APIClient, run: Run) -> dict[int, dict[str, float]]:
    body = api.get(f"/api/tunix/runs/{run.pk}/metrics").json()
    assert body["status"] == "completed"
    return {p["step"]: p["values"] for p in body["points"]}


async def _body(response: Any) -> bytes:
    # The zip is streamed by an async generator, as daphne serves it.
    return b"".join([chunk async for chunk in response.streaming_content])


def download_last_step(api: APIClient, run: Run) -> tuple[int, zipfile.ZipFile]:
    steps = [c["step"] for c in api.get(f"/api/tunix/runs/{run.pk}/checkpoints").json()]
    assert steps, "no committed checkpoint was registered"
    step = max(steps)
    response = api.get(f"/api/tunix/runs/{run.pk}/checkpoints/{step}/download")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(asyncio.run(_body(response))))
    assert archive.testzip() is None
    return step, archive


def test_a_peft_run_trains_lora_on_the_tiny_model_and_its_curves_match_the_event_files(
    api: APIClient,
) -> None:
    run, _ = run_to_end(api, {"recipe": "peft"})
    stdout = log_text(run, "stdout")
    assert re.search(r"peft: model tunixops/qwen3-tiny .* [\d,]+ LoRA parameters trained", stdout)

    step, archive = download_last_step(api, run)
    assert step == 20
    metadata = json.loads(archive.read(f"{step}/model_params/_METADATA"))
    names = list(metadata["tree_metadata"])
    # Only the adapters are trained, so only they are saved: LoRA really is applied.
    assert names and all("_lora_a" in n or "_lora_b" in n for n in names), names[:5]

    expected = event_file_series(run)
    stored = stored_series(api, run)
    assert sorted(stored) == sorted(expected) == list(range(1, 21))
    assert stored == expected
    assert {"loss", "perplexity", "learning_rate", "grad_norm"} <= set(stored[20])
    print("peft series:", sorted(stored[20]))


def test_a_grpo_run_on_the_tiny_model_completes_with_rewards_kl_and_checkpoints(
    api: APIClient,
) -> None:
    run, _ = run_to_end(api, {"recipe": "grpo"})
    stdout = log_text(run, "stdout")
    assert "grpo: 30 prompts with answers from built-in arithmetic questions" in stdout
    assert "grpo: done" in stdout

    step, archive = download_last_step(api, run)
    assert step == 6
    assert any(n.startswith(f"{step}/model_params/") for n in archive.namelist())

    expected = event_file_series(run)
    stored = stored_series(api, run)
    assert stored == expected
    assert sorted(stored) == list(range(0, 7))
    names = set().union(*stored.values())
    assert {"actor/loss", "actor/kl", "rewards/mean", "completions/mean_length"} <= names
    print("grpo series:", sorted(names))


def test_a_peft_run_with_a_dataset_trains_on_its_examples(
    api: APIClient, make_dataset: Any
) -> None:
    key = make_dataset(6)
    run, _ = run_to_end(
        api,
        {
            "recipe": "peft",
            "dataset_key": key,
            "config": {"training_config.max_steps": 4, "batch_size": 4},
        },
    )
    stdout = log_text(run, "stdout")
    assert "peft: 6 examples from dataset dataset.jsonl" in stdout
    summary = json.loads((run_dir(run.pk) / "data_summary.json").read_text())
    assert summary["source"] == "dataset dataset.jsonl"
    assert summary["examples"] == 6
    assert summary["distinct_examples_trained"] == 6
    assert summary["steps"] == 4


def test_a_grpo_run_with_a_dataset_rewards_completions_of_its_questions(
    api: APIClient, make_dataset: Any
) -> None:
    key = make_dataset(4)
    run, _ = run_to_end(
        api,
        {
            "recipe": "grpo",
            "dataset_key": key,
            "config": {"rl_training_config.max_steps": 2, "num_train_epochs": 2},
        },
    )
    stdout = log_text(run, "stdout")
    assert "grpo: 4 prompts with answers from dataset" in stdout
    summary = json.loads((run_dir(run.pk) / "data_summary.json").read_text())
    # Two steps of two prompts, two completions each: every question of the dataset was scored.
    assert summary == {"completions_scored": 8, "distinct_questions": 4}


def test_cancelling_a_running_grpo_run_ends_it_cancelled(alice: Any) -> None:
    from runs.services import run_enqueue

    run = run_enqueue(
        recipe="grpo",
        created_by=alice,
        config={"rl_training_config.max_steps": 1000, "num_train_epochs": 100},
        cancel_grace_seconds=5,
    )
    with WorkerThread():
        wait_for(lambda: "grpo: 30 prompts" in log_text(run, "stdout"), timeout=60, interval=0.2)
        run_cancel(run_id=run.pk, user=alice, reason="enough")
        wait_for(lambda: status_of(run) == RunStatus.CANCELLED, timeout=30, interval=0.1)
    run.refresh_from_db()
    assert run.status_reason == "cancelled by alice: enough"
    assert "sending SIGTERM" in log_text(run, "stderr")


def test_a_grpo_fork_of_a_peft_run_starts_its_actor_and_reference_from_the_peft_adapters(
    api: APIClient,
) -> None:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from runs.entrypoints.lora_fork import adapters_digest

    parent, _ = run_to_end(
        api,
        {
            "recipe": "peft",
            "config": {
                "training_config.max_steps": 4,
                "training_config.checkpointing_options.save_interval_steps": 2,
            },
        },
    )
    response = api.post(
        f"/api/tunix/runs/{parent.pk}/continue",
        {"recipe": "grpo", "config": {"rl_training_config.max_steps": 2}},
        format="json",
    )
    assert response.status_code == 202, response.content
    Worker(once=True, poll_interval=0.05).run()
    child = Run.objects.get(pk=response.json()["run_id"])
    assert child.status == RunStatus.COMPLETED, child.status_reason + child.stderr_tail[-3000:]
    assert (child.recipe, child.continued_from_id, child.continued_from_step) == (
        "grpo",
        parent.pk,
        4,
    )

    started = re.search(
        r"grpo: starting from the LoRA adapters of checkpoint step 4 \(.*/parent/checkpoints/4\): "
        r"rank 4, alpha 8.0, (\d+) arrays; actor sha256 (\w+), reference sha256 (\w+)",
        log_text(child, "stdout"),
    )
    assert started, log_text(child, "stdout")[-2000:]
    # What the parent saved at step 4, read back from its own files with Orbax.
    saved = ocp.PyTreeCheckpointer().restore(str(run_dir(parent.pk) / "checkpoints/4/model_params"))
    assert adapters_digest(saved) == (int(started[1]), started[2])
    assert started[3] == started[2], "the reference holds the same (SFT) adapters"
    # Trained adapters, so no fresh start could match them: qwix starts every LoRA B at zero.
    lora_b = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(saved) if "lora_b" in str(path)
    ]
    assert lora_b and all(np.abs(b).max() > 0 for b in lora_b)

    # GRPO went on training those adapters: its own steps hold the same LoRA arrays, changed.
    steps = [c["step"] for c in api.get(f"/api/tunix/runs/{child.pk}/checkpoints").json()]
    assert steps and max(steps) == 2 and 4 not in steps, steps
    own = ocp.PyTreeCheckpointer().restore(
        str(run_dir(child.pk) / "checkpoints/actor/2/model_params")
    )
    assert str(jax.tree_util.tree_structure(own)) == str(jax.tree_util.tree_structure(saved))
    assert adapters_digest(own)[1] != started[2]

    # A grpo fork keeps no SFT adapters of its own, so it cannot be continued: refused clearly.
    response = api.post(f"/api/tunix/runs/{child.pk}/continue", {}, format="json")
    assert response.status_code == 202, response.content
    Worker(once=True, poll_interval=0.05).run()
    again = Run.objects.get(pk=response.json()["run_id"])
    assert again.status == RunStatus.FAILED
    assert again.exit_code == 2
    assert "grpo run forked from a peft checkpoint, which cannot be continued" in log_text(
        again, "stderr"
    )
