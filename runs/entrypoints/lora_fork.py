"""Starting `grpo` from a `peft` run's LoRA checkpoint (a fork), in the children.

A `peft` child records in each checkpoint step what its adapters are (model id, LoRA module path,
rank and alpha): Orbax keeps it as the step's custom metadata (`_CHECKPOINT_METADATA`), so the
step, copied alone into a fork's run directory, still says how to rebuild the model it belongs to.
Tunix's checkpoints hold only the adapter arrays, not the LoRA settings needed to place them.

A `grpo` child forked from such a step (the worker copies it under `parent/` of the run directory
and names it in `TUNIX_PARENT_CHECKPOINT`) builds the run's base model once, puts those adapters on
it twice with the parent's settings, and restores the parent's adapter arrays into both with
Tunix's own checkpoint restore (`tunix.sft.checkpoint_manager.CheckpointManager.maybe_restore`, as
`PeftTrainer` resumes): the actor (policy) goes on training the adapters, the reference keeps them
as they were, so the reference is the SFT model, as usual for GRPO after SFT. Both share the frozen
base weights. `tunix.cli.grpo_main` itself has no way to start from a checkpoint: its
`create_rl_cluster` always starts the actor from the base model (with fresh adapters when
`lora_config` is set).

Django-free; JAX, Orbax and Tunix are imported by the functions.
"""

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The key of TunixOps' entry in a checkpoint step's custom metadata.
METADATA_KEY = "tunixops_lora"
PARENT_ENV = "TUNIX_PARENT_CHECKPOINT"


class ForkError(Exception):
    """A parent step this run cannot start from: reported on stderr with exit status 2."""


def checkpoint_metadata(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What a `peft` child records in each checkpoint step about its adapters."""
    lora = model_config["lora_config"]
    return {
        METADATA_KEY: {
            "model_id": str(model_config["model_id"]),
            "lora_config": {
                "module_path": str(lora["module_path"]),
                "rank": int(lora["rank"]),
                "alpha": float(lora["alpha"]),
            },
        }
    }


def record_in_every_step(trainer: Any, metadata: dict[str, Any]) -> None:
    """Have `trainer` save `metadata` with every step, the last one included.

    `PeftTrainer` passes its `custom_checkpoint_metadata()` to the steps of its loop but not to the
    step `close()` forces at the end (tunix/sft/peft_trainer.py `_save_last_checkpoint`), which is
    the one a fork usually starts from; so the checkpoint manager's `save` gets it as a default.
    """
    manager = trainer.checkpoint_manager
    save = manager.save

    def save_with_metadata(*args: Any, **kwargs: Any) -> bool:
        kwargs["custom_metadata"] = {**metadata, **(kwargs.get("custom_metadata") or {})}
        return bool(save(*args, **kwargs))

    manager.save = save_with_metadata


@dataclass(frozen=True)
class ParentStep:
    step_dir: Path
    step: int
    model_id: str
    lora_config: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.step_dir.parent


def parent_step(own_checkpoints: str) -> ParentStep | None:
    """The step this run forks from, or None for a fresh start or a continuation (whose step is
    in the run's own checkpoint directory, where Tunix resumes from it by itself)."""
    value = os.environ.get(PARENT_ENV, "")
    if not value:
        return None
    step_dir = Path(value)
    if not step_dir.name.isdigit() or not step_dir.is_dir():
        raise ForkError(f"{PARENT_ENV}={value} is not a checkpoint step directory")
    step = int(step_dir.name)
    recorded = _recorded(step_dir)
    if own_checkpoints and step_dir.resolve().is_relative_to(Path(own_checkpoints).resolve()):
        if recorded is not None:
            # Its steps hold the adapters GRPO trained, not the SFT adapters of its reference.
            raise ForkError(
                f"checkpoint step {step} is of a grpo run forked from a peft checkpoint, which "
                "cannot be continued: fork the peft run again with more "
                "rl_training_config.max_steps"
            )
        return None
    if recorded is None:
        raise ForkError(
            f"checkpoint step {step} does not say which LoRA adapters it holds (no "
            f"{METADATA_KEY!r} metadata): only steps written by a `peft` run can start a `grpo` run"
        )
    return ParentStep(
        step_dir=step_dir,
        step=step,
        model_id=str(recorded.get("model_id", "")),
        lora_config=dict(recorded["lora_config"]),
    )


def _recorded(step_dir: Path) -> dict[str, Any] | None:
    """TunixOps' entry in a step's custom metadata, when it has one."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        step_dir.parent, options=ocp.CheckpointManagerOptions(read_only=True)
    )
    try:
        metadata = manager.metadata(int(step_dir.name))
    except (OSError, ValueError):
        return None
    recorded = (getattr(metadata, "custom_metadata", None) or {}).get(METADATA_KEY)
    if not isinstance(recorded, dict):
        return None
    lora = recorded.get("lora_config")
    if not (
        isinstance(lora, dict)
        and isinstance(lora.get("module_path"), str)
        and type(lora.get("rank")) is int
        and type(lora.get("alpha")) in (int, float)
    ):
        return None
    return dict(recorded)


def restore_adapters(model: Any, parent: ParentStep) -> None:
    """Load the parent's adapter arrays into `model` (which carries the same LoRA layers)."""
    import orbax.checkpoint as ocp
    from tunix.sft import checkpoint_manager

    manager = checkpoint_manager.CheckpointManager(
        str(parent.root), options=ocp.CheckpointManagerOptions(read_only=True)
    )
    manager.maybe_restore(model, step=parent.step, restore_only_lora_params=True)


def adapters_digest(tree: Any) -> tuple[int, str]:
    """(number of arrays, SHA-256 over each array's path, dtype, shape and bytes in path order)
    of a state or nested dict of LoRA arrays: equal digests mean equal adapters."""
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    digest = hashlib.sha256()
    rows = sorted(
        (_path_name(path), np.asarray(leaf)) for path, leaf in leaves if "lora" in _path_name(path)
    )
    for name, array in rows:
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return len(rows), digest.hexdigest()


def _path_name(path: Any) -> str:
    parts = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        if str(key) != "value":
            parts.append(str(key))
    return "/".join(parts)


def rl_cluster(pipeline: Any, tokenizer: Any, parent: ParentStep) -> Any:
    """`GrpoPipeline.create_rl_cluster` for a fork: actor and reference start from the parent's
    adapters on the run's base model (see the module docstring)."""
    from flax import nnx
    from tunix.cli.utils import model as model_lib
    from tunix.rl import rl_cluster as rl_cluster_lib

    model_id = str(pipeline.config["model_config"]["model_id"])
    if parent.model_id and parent.model_id != model_id:
        raise ForkError(
            f"checkpoint step {parent.step} holds LoRA adapters of {parent.model_id}, "
            f"not of this run's model {model_id}"
        )
    role_to_mesh = pipeline.create_role_to_mesh()
    rollout_config = pipeline.create_rollout_config(role_to_mesh=role_to_mesh)
    reference_config = dict(pipeline._mutable_config_mapping("reference_model_config"))
    reference_config.pop("lora_config", None)
    base, _ = model_lib.create_model(
        reference_config,
        pipeline._config_mapping("tokenizer_config"),
        role_to_mesh[rl_cluster_lib.Role.REFERENCE],
    )
    lora = parent.lora_config
    reference = model_lib.apply_lora_to_model(
        base, role_to_mesh[rl_cluster_lib.Role.REFERENCE], lora
    )
    actor = model_lib.apply_lora_to_model(base, role_to_mesh[rl_cluster_lib.Role.ACTOR], lora)
    for model in (reference, actor):
        restore_adapters(model, parent)
    count, digest = adapters_digest(nnx.state(actor, nnx.LoRAParam))
    if not count:
        raise ForkError(f"LoRA module_path {lora['module_path']!r} matched no layer of {model_id}")
    _, reference_digest = adapters_digest(nnx.state(reference, nnx.LoRAParam))
    # The digests let anyone check the restored adapters against the parent's files.
    print(
        f"grpo: starting from the LoRA adapters of checkpoint step {parent.step} "
        f"({parent.step_dir}): rank {lora['rank']}, alpha {lora['alpha']}, {count} arrays; "
        f"actor sha256 {digest}, reference sha256 {reference_digest}",
        flush=True,
    )
    cluster_config = pipeline.create_cluster_config(
        role_to_mesh=role_to_mesh, rollout_config=rollout_config
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=actor,
        reference=reference,
        tokenizer=tokenizer,
        cluster_config=cluster_config,
        perf_config=pipeline.create_perf_config(cluster_config),
    )
    # The fork's own steps say so too: a continuation of it is refused clearly (`parent_step`).
    forked = {"model_id": model_id, "lora_config": lora, "forked_from_step": parent.step}
    record_in_every_step(cluster.actor_trainer, {METADATA_KEY: forked})
    return cluster
