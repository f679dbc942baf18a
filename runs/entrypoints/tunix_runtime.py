"""What TunixOps adds inside a `peft` or `grpo` child, around Tunix 0.1.7's own CLI pieces.

Each addition answers a limit of google-tunix 0.1.7 found by running it here; everything else
(config parsing, model loading from safetensors, LoRA, tokenizer, trainers, rewards) is Tunix's.

1. Model sizes. `AutoModel.from_pretrained` takes a model's architecture from a classmethod of
   the family's `ModelConfig` named after the model (tunix/models/automodel.py,
   `call_model_config`), never from its `config.json`. `install()` adds `qwen3_tiny`, the size of
   the model TunixOps builds (runs/entrypoints/tiny_model.py), read from that model's config.
2. Offline loading. The `huggingface` source always asks the Hub for the file list
   (tunix/oss/utils.py `hf_pipeline`: `hf.list_repo_files(model_id)`), even for files already
   on disk. `install()` routes only the tiny model's id to its local directory (built on first
   use); every other id goes to Tunix's download unchanged.
3. Meshes without device coordinates. `grpo_main` allocates each role's devices by physical
   coordinates only (tunix/utils/mesh.py `_allocate_devices_from_pool`: "coord-based allocation
   could not construct a valid box"), which CPU devices do not have. `role_meshes()` builds the
   configured mesh over all devices and shares it between the roles when the devices have no
   coordinates; with coordinates (TPU) it defers to Tunix.

Django-free; JAX and Tunix are imported by the functions, after the caller set up the process.
"""

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runs.entrypoints import tiny_model


def install() -> None:
    """Teach this process's Tunix the tiny model's size and where to find its files."""
    from tunix.models import automodel
    from tunix.models.qwen3 import model as qwen3

    kwargs = tiny_model.tunix_config_kwargs(tiny_model.HF_CONFIG)
    setattr(qwen3.ModelConfig, tiny_model.CONFIG_ID, classmethod(lambda cls: cls(**kwargs)))

    download: Callable[..., str] = automodel.download_model
    if getattr(download, "tunixops_wrapped", False):
        return

    def download_model(model_id_or_path: str, model_download_path: str | None, source: Any) -> str:
        if model_id_or_path == tiny_model.MODEL_ID:
            return str(tiny_model.ensure(_download_dir(model_download_path)))
        return download(model_id_or_path, model_download_path, source)

    download_model.tunixops_wrapped = True  # type: ignore[attr-defined]
    automodel.download_model = download_model


def _download_dir(path: str | None) -> Path:
    if not path:
        raise ValueError(
            f"model_config.model_download_path must name a directory for {tiny_model.MODEL_ID}"
        )
    return Path(path)


def prepare_models(config: Mapping[str, Any]) -> None:
    """Build the tiny model before anything reads it (GRPO reads the tokenizer first)."""
    model_config = config.get("model_config") or {}
    if model_config.get("model_id") == tiny_model.MODEL_ID:
        tiny_model.ensure(_download_dir(model_config.get("model_download_path")))


def role_meshes(pipeline: Any) -> Any:
    """`GrpoPipeline.create_role_to_mesh`, or one shared mesh when devices have no coordinates."""
    import jax
    from tunix.rl import rl_cluster
    from tunix.utils import mesh as mesh_lib

    devices = list(jax.devices())
    if mesh_lib.get_coord_topology(devices) is not None:
        return None
    shape, names = pipeline.parse_mesh_config("model_config")
    mesh = mesh_lib.create_mesh(shape, names, devices=devices)
    return {
        role: mesh
        for role in (rl_cluster.Role.ACTOR, rl_cluster.Role.REFERENCE, rl_cluster.Role.ROLLOUT)
    }


def lora_summary(model: Any) -> tuple[int, int]:
    """(adapter parameters, all other parameters) of an NNX model."""
    import jax
    import numpy as np
    from flax import nnx

    def count(kind: Any) -> int:
        return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(nnx.state(model, kind)))

    adapters = count(nnx.LoRAParam)
    return adapters, count(nnx.Param) - adapters


def as_plain(value: Any) -> Any:
    """An OmegaConf or dataclass config section as plain dicts and lists, for printing."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain(v) for v in value]
    return value
