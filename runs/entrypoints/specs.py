"""Config keys of the built-in entry points: one source for both sides of the process boundary.

`runs/recipes.py` turns these into the server's validation (the API, the form, the dry-run), and
the entry point validates its config.json against the same bounds, so a config the server
accepted is never refused by the child. Django-free, like every module in this package.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpec:
    name: str
    type: str  # "int", "float", "str" or "bool"
    default: int | float | str | bool
    min: float | None
    max: float | None
    help: str


TINY_SFT_KEYS: tuple[KeySpec, ...] = (
    KeySpec("max_steps", "int", 50, 1, 1_000_000, "Training steps."),
    KeySpec("learning_rate", "float", 3e-3, 1e-7, 1.0, "AdamW learning rate."),
    KeySpec("batch_size", "int", 8, 1, 256, "Sequences per step."),
    KeySpec("seq_len", "int", 32, 4, 1024, "Tokens per sequence."),
    KeySpec("save_every_steps", "int", 10, 1, 1_000_000, "Orbax checkpoint interval."),
    KeySpec("lora_rank", "int", 0, 0, 64, "0 trains every weight; >0 trains LoRA adapters."),
    KeySpec("seed", "int", 0, 0, 2**31 - 1, "Random seed for weights and batches."),
)


# The tiny model TunixOps builds for the `peft` and `grpo` recipes (runs/entrypoints/tiny_model.py):
# their default `model_id`. Tunix names a model by the last part of its id, so this one is the
# Qwen3 family's `tiny` size (config id `qwen3_tiny`, which runs/entrypoints/tunix_runtime.py adds).
TINY_MODEL_ID = "tunixops/qwen3-tiny"
TINY_MODEL_NAME = "qwen3-tiny"
