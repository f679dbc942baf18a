"""Server-side recipes: how a run becomes a command line.

Users name a recipe and give config values; they never send a command, a path or environment
variables. Built-in recipes live here; operators add their own in the TOML file named by
`TUNIX_RECIPES_FILE` (format in the README).
"""

import functools
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
PLACEHOLDERS = frozenset(
    {"python", "run_dir", "config_file", "dataset_file", "model_id", "run_id", "project_dir"}
)


class ConfigError(Exception):
    """Field-level validation errors: `{"config.max_steps": ["..."]}`."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__(json.dumps(errors))


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    max_length: int = 1000
    help: str = ""

    def clean(self, raw: object) -> Any:
        """Return the value in its declared type or raise ValueError with a human message."""
        value: Any = raw
        expected = _TYPES[self.type]
        # JSON has one number type: accept 3 for a float, refuse True for an int and 3.5 for an int.
        if isinstance(value, bool) and self.type != "bool":
            raise ValueError(f"must be of type {self.type}")
        if self.type == "float" and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected):
            raise ValueError(f"must be of type {self.type}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
            if self.min is not None and value < self.min:
                raise ValueError(f"must be >= {self.min:g}")
            if self.max is not None and value > self.max:
                raise ValueError(f"must be <= {self.max:g}")
        if isinstance(value, str) and len(value) > self.max_length:
            raise ValueError(f"must be at most {self.max_length} characters")
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        return value


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    argv: tuple[str, ...]
    keys: Mapping[str, ConfigKey]
    env: Mapping[str, str] = field(default_factory=dict)
    default_model_id: str = ""
    # "file": values reach the child only through config.json; "cli": also appended as key=value.
    config_style: str = "file"
    static_config: Mapping[str, str] = field(default_factory=dict)
    # Appended when the run names a dataset (written by the worker as `{dataset_file}`).
    dataset_argv: tuple[str, ...] = ()

    def clean_config(self, raw: Any) -> dict[str, Any]:
        """Validate user overrides and fill in defaults."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError({"config": ["must be a JSON object"]})
        errors: dict[str, list[str]] = {}
        for key in raw:
            if key not in self.keys:
                allowed = ", ".join(sorted(self.keys)) or "none"
                errors[f"config.{key}"] = [
                    f"unknown key for recipe {self.name!r} (allowed: {allowed})"
                ]
        cleaned: dict[str, Any] = {}
        for key, spec in self.keys.items():
            if key in raw:
                try:
                    cleaned[key] = spec.clean(raw[key])
                except ValueError as exc:
                    errors[f"config.{key}"] = [str(exc)]
            elif spec.default is not None:
                cleaned[key] = spec.default
        if errors:
            raise ConfigError(errors)
        return cleaned

    def render_argv(
        self,
        *,
        python: str,
        run_dir: str,
        config: Mapping[str, Any],
        dataset_file: str = "",
        model_id: str = "",
        run_id: str = "",
    ) -> list[str]:
        values = {
            "python": python,
            "run_dir": run_dir,
            "config_file": f"{run_dir}/config.json",
            "dataset_file": dataset_file,
            "model_id": model_id or self.default_model_id,
            "run_id": run_id,
            "project_dir": str(settings.BASE_DIR),
        }
        argv = [part.format(**values) for part in self.argv]
        if dataset_file:
            argv += [part.format(**values) for part in self.dataset_argv]
        if self.config_style == "cli":
            merged = {k: v.format(**values) for k, v in self.static_config.items()}
            merged.update({k: _cli_value(v) for k, v in config.items()})
            argv += [f"{k}={v}" for k, v in merged.items()]
        return argv


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _key(
    name: str, type_: str, default: Any, lo: float | None, hi: float | None, help_: str
) -> ConfigKey:
    return ConfigKey(name=name, type=type_, default=default, min=lo, max=hi, help=help_)


TINY_SFT = Recipe(
    name="tiny_sft",
    description=(
        "Real Tunix SFT (PeftTrainer) of a tiny Qwen3-style model with random weights on CPU; "
        "trains on the run's dataset or a built-in corpus. Needs no download."
    ),
    argv=(
        "{python}",
        "-m",
        "runs.entrypoints.tiny_sft",
        "--config",
        "{config_file}",
        "--run-dir",
        "{run_dir}",
    ),
    keys={
        k.name: k
        for k in (
            _key("max_steps", "int", 50, 1, 1_000_000, "Training steps."),
            _key("learning_rate", "float", 3e-3, 1e-7, 1.0, "AdamW learning rate."),
            _key("batch_size", "int", 8, 1, 256, "Sequences per step."),
            _key("seq_len", "int", 32, 4, 1024, "Tokens per sequence."),
            _key("save_every_steps", "int", 10, 1, 1_000_000, "Orbax checkpoint interval."),
            _key("lora_rank", "int", 0, 0, 64, "0 trains every weight; >0 trains LoRA adapters."),
            _key("seed", "int", 0, 0, 2**31 - 1, "Random seed for weights and batches."),
        )
    },
    env={"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    default_model_id="tiny-qwen3-random",
    dataset_argv=("--dataset", "{dataset_file}"),
)

PEFT = Recipe(
    name="peft",
    description=(
        "The Tunix CLI (`python -m tunix.cli.peft_main`) with the run's overrides; for deployments "
        "with model access and accelerators."
    ),
    argv=("{python}", "-m", "tunix.cli.peft_main", "base_config.yaml"),
    keys={
        k.name: k
        for k in (
            _key("model_config.model_name", "str", None, None, None, "Tunix model name."),
            _key("model_config.model_id", "str", None, None, None, "Model id to load."),
            _key("training_config.max_steps", "int", None, 1, 10_000_000, "Training steps."),
            _key(
                "training_config.eval_every_n_steps", "int", None, 1, 10_000_000, "Eval interval."
            ),
            _key("optimizer_config.learning_rate", "float", None, 1e-9, 1.0, "Learning rate."),
            _key("batch_size", "int", None, 1, 4096, "Global batch size."),
            _key("lora_config.rank", "int", None, 0, 1024, "LoRA rank."),
            _key("lora_config.alpha", "float", None, 0.0, 4096.0, "LoRA alpha."),
        )
    },
    env={"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    config_style="cli",
    static_config={"training_config.checkpoint_root_directory": "{run_dir}/checkpoints"},
)

BUILTIN_RECIPES: dict[str, Recipe] = {r.name: r for r in (TINY_SFT, PEFT)}


def load_recipes_file(path: Path) -> dict[str, Recipe]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImproperlyConfigured(f"TUNIX_RECIPES_FILE {path}: {exc}") from exc
    recipes: dict[str, Recipe] = {}
    for name, spec in data.get("recipes", {}).items():
        recipes[name] = _parse_recipe(path, name, spec)
    return recipes


def _parse_recipe(path: Path, name: str, spec: dict[str, Any]) -> Recipe:
    where = f"TUNIX_RECIPES_FILE {path}, recipe {name!r}"
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ImproperlyConfigured(f"{where}: argv must be a non-empty list of strings")
    for part in [*argv, *spec.get("dataset_argv", [])]:
        try:
            part.format(**{p: "" for p in PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as exc:
            raise ImproperlyConfigured(f"{where}: bad placeholder in {part!r}: {exc}") from exc
    keys: dict[str, ConfigKey] = {}
    for key_name, key_spec in spec.get("config", {}).items():
        type_ = key_spec.get("type", "str")
        if type_ not in _TYPES:
            raise ImproperlyConfigured(
                f"{where}: config key {key_name!r} has unknown type {type_!r}"
            )
        keys[key_name] = ConfigKey(
            name=key_name,
            type=type_,
            default=key_spec.get("default"),
            min=key_spec.get("min"),
            max=key_spec.get("max"),
            choices=tuple(key_spec.get("choices", ())),
            help=key_spec.get("help", ""),
        )
    env = spec.get("env", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ImproperlyConfigured(f"{where}: env must map strings to strings")
    style = spec.get("config_style", "file")
    if style not in ("file", "cli"):
        raise ImproperlyConfigured(f"{where}: config_style must be 'file' or 'cli'")
    dataset_argv = spec.get("dataset_argv", [])
    if not isinstance(dataset_argv, list) or not all(isinstance(a, str) for a in dataset_argv):
        raise ImproperlyConfigured(f"{where}: dataset_argv must be a list of strings")
    return Recipe(
        name=name,
        description=spec.get("description", ""),
        argv=tuple(argv),
        dataset_argv=tuple(dataset_argv),
        keys=keys,
        env=env,
        default_model_id=spec.get("default_model_id", ""),
        config_style=style,
    )


@functools.cache
def _registry(recipes_file: str) -> dict[str, Recipe]:
    recipes = dict(BUILTIN_RECIPES)
    if recipes_file:
        recipes.update(load_recipes_file(Path(recipes_file)))
    return recipes


def all_recipes() -> dict[str, Recipe]:
    return _registry(settings.TUNIX_RECIPES_FILE)


def get_recipe(name: str) -> Recipe | None:
    return all_recipes().get(name)
