"""Server-side recipes: how a run becomes a command line.

Users name a recipe and give config values; they never send a command, a path or environment
variables. Built-in recipes live here; operators add their own in the TOML file named by
`TUNIX_RECIPES_FILE` (format in the README).
"""

import dataclasses
import functools
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from runs import retry_rules
from runs.entrypoints.specs import TINY_MODEL_ID, TINY_MODEL_NAME, TINY_SFT_KEYS
from tunixops.exceptions import InvalidInput

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
# The most devices any run may ask for; one host has no more accelerators than this.
MAX_DEVICES = 64
DEFAULT_POOL = "default"
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PLACEHOLDERS = frozenset(
    {
        "python",
        "run_dir",
        "config_file",
        "dataset_file",
        "model_id",
        "model_name",
        "model_cache",
        "tokenizer_path",
        "run_id",
        "project_dir",
    }
)
TUNIX_CONFIGS = Path(__file__).with_name("tunix_configs")

# Characters no string a user sends may hold: PostgreSQL cannot store NUL, an unpaired surrogate
# cannot be encoded into an argument, and control characters would change a YAML value.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
# OmegaConf resolves `${...}` in every string value (`${oc.env:SECRET_KEY}` reads the child's
# environment), and Tunix's CLI parses each `key=value` through OmegaConf.
INTERPOLATION = "${"
# Strings that reach a `key=value` argument as they are; anything else is single-quoted, so YAML
# (and OmegaConf) read back exactly the string sent, never a number, a list or a null.
_PLAIN_VALUE = re.compile(r"[A-Za-z_/$][A-Za-z0-9_./@+$-]*")
_YAML_WORDS = frozenset({"null", "true", "false", "yes", "no", "on", "off", "y", "n", "nan", "inf"})


def unsafe_string_problem(value: str) -> str | None:
    if _UNSAFE_CHARS.search(value):
        return "must not contain NUL, control characters or unpaired surrogates"
    return None


class ConfigError(InvalidInput):
    """Field-level validation errors: `{"config.max_steps": ["..."]}`."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("Invalid input.", fields=errors)


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
    # A string must match this whole (when set); `pattern_help` says what that means.
    pattern: str = ""
    pattern_help: str = ""

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
        if isinstance(value, str) and (problem := unsafe_string_problem(value)):
            raise ValueError(problem)
        if isinstance(value, str) and self.pattern and not re.fullmatch(self.pattern, value):
            raise ValueError(self.pattern_help or f"must match {self.pattern}")
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        return value


EXECUTORS = ("local", "ray")
# The keys of Ray's `runtime_env` a recipe may set (ray/runtime_env/runtime_env.py); anything
# else is a typo Ray would only report when the job is submitted.
RAY_RUNTIME_ENV_KEYS = frozenset(
    {
        "env_vars",
        "pip",
        "uv",
        "conda",
        "working_dir",
        "py_modules",
        "py_executable",
        "excludes",
        "container",
        "image_uri",
        "config",
        "nsight",
        "worker_process_setup_hook",
    }
)
RAY_FIELDS = frozenset({"num_cpus", "num_gpus", "resources", "runtime_env"})


@dataclass(frozen=True)
class RayOptions:
    """What a Ray run's job asks of the cluster: Ray's `entrypoint_num_cpus`,
    `entrypoint_num_gpus`, `entrypoint_resources` and `runtime_env`."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    runtime_env: Mapping[str, Any] = field(default_factory=dict)


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
    # False: the recipe cannot read a TunixOps dataset, and a run naming one is refused.
    accepts_dataset: bool = True
    # "cli" recipes over Tunix's config parser: the base config (under runs/tunix_configs/) and
    # the sections of it sent whole with every run, because Tunix replaces such a section when
    # any of its keys is overridden (tunix/cli/config.py, `replace_keys`).
    base_config: str = ""
    resend: tuple[str, ...] = ()
    # Variables handed from the worker's environment to the child when set there (credentials,
    # JAX's platform); the child gets nothing else of it.
    env_from_worker: tuple[str, ...] = ()
    # A model id must match this (when set), e.g. a Hugging Face id.
    model_id_pattern: str = ""
    # Accelerators a run asks for by default, and the most a run may ask for.
    devices: int = 0
    max_devices: int = MAX_DEVICES
    # A run's memory limit in MiB by default (None: the worker's default), and the largest a run
    # may set (None: no bound).
    memory_limit_mb: int | None = None
    max_memory_limit_mb: int | None = None
    # The pool a run goes to unless it names another (workers serve pools: `--pools`).
    pool: str = DEFAULT_POOL
    # Endings that start another attempt while attempts remain (runs/retry_rules.py), and the
    # backoff before the first retry (doubling after each).
    retry_on: tuple[str, ...] = retry_rules.DEFAULT
    retry_backoff_seconds: float = 10.0
    # Recipes whose checkpoints this one can start from (a fork); its own always can (continue).
    starts_from: tuple[str, ...] = ()
    # Where its runs execute: "local" (a child of the worker) or "ray" (a job on the Ray cluster
    # at the worker's RAY_ADDRESS, runs/execution/ray.py), and what a Ray job asks for.
    executor: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)

    def can_start_from(self, recipe: str) -> bool:
        return recipe == self.name or recipe in self.starts_from

    def clean_options(
        self,
        *,
        devices: int | None = None,
        memory_limit_mb: int | None = None,
        pool: str | None = None,
        retry_on: list[str] | None = None,
    ) -> dict[str, Any]:
        """The run's own options within this recipe's bounds, or this recipe's defaults."""
        errors: dict[str, list[str]] = {}
        devices = self.devices if devices is None else devices
        if not 0 <= devices <= self.max_devices:
            errors["devices"] = [f"recipe {self.name!r} takes 0 to {self.max_devices} devices"]
        memory = self.memory_limit_mb if memory_limit_mb is None else memory_limit_mb
        ceiling = self.max_memory_limit_mb
        if memory is not None and ceiling is not None and memory > ceiling:
            errors["memory_limit_mb"] = [f"recipe {self.name!r} allows at most {ceiling} MiB"]
        pool = pool or self.pool
        if not POOL_NAME.match(pool):
            errors["pool"] = ["a pool is a name of letters, digits, '.', '_' or '-'"]
        rules = list(self.retry_on) if retry_on is None else retry_on
        problem = retry_rules.invalid_rules(rules)
        if problem:
            errors["retry_on"] = [problem]
        if errors:
            raise ConfigError(errors)
        return {"devices": devices, "memory_limit_mb": memory, "pool": pool, "retry_on": rules}

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
                    if self.config_style == "cli" and isinstance(cleaned[key], str):
                        _refuse_interpolation(cleaned[key])
                except ValueError as exc:
                    errors[f"config.{key}"] = [str(exc)]
            elif spec.default is not None:
                cleaned[key] = spec.default
        if errors:
            raise ConfigError(errors)
        return cleaned

    def clean_model_id(self, model_id: str) -> str:
        """The model id to store (the recipe's default when empty), or a `model_id` field error."""
        value = model_id or self.default_model_id
        problem = unsafe_string_problem(value)
        if problem is None and self.config_style == "cli" and INTERPOLATION in value:
            problem = "must not contain '${' (OmegaConf would resolve it)"
        if problem is None and value.startswith("-") and self._places_alone("{model_id}"):
            problem = "must not start with '-' (it would be read as an option)"
        pattern = self.model_id_pattern
        if problem is None and value and pattern and not re.fullmatch(pattern, value):
            problem = "must be a model id such as Qwen/Qwen3-0.6B"
        if problem:
            raise ConfigError({"model_id": [problem]})
        return value

    def _places_alone(self, placeholder: str) -> bool:
        """Whether some argument starts with `placeholder`: there a leading '-' makes a flag."""
        return any(part.startswith(placeholder) for part in (*self.argv, *self.dataset_argv))

    def child_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The recipe's own environment for the child, on top of the worker's basics.

        Tunix calls `dotenv.load_dotenv()` at import, which looks for a `.env` upwards from the
        tunix package (a deployment's own `.env` above its virtualenv holds SECRET_KEY and the
        database password): `PYTHON_DOTENV_DISABLED` turns that off for every child.
        """
        passed = {name: environ[name] for name in self.env_from_worker if name in environ}
        return {"PYTHON_DOTENV_DISABLED": "1", **passed, **self.env}

    def render_argv(
        self,
        *,
        python: str,
        run_dir: str,
        config: Mapping[str, Any],
        dataset_file: str = "",
        model_id: str = "",
        run_id: str = "",
        project_dir: str = "",
        model_cache: str = "",
    ) -> list[str]:
        model_id = model_id or self.default_model_id
        model_cache = model_cache or str(settings.TUNIX_MODEL_CACHE)
        values = {
            "python": python,
            "run_dir": run_dir,
            "config_file": f"{run_dir}/config.json",
            "dataset_file": dataset_file,
            "model_id": model_id,
            "model_name": tunix_model_name(model_id),
            "model_cache": model_cache,
            "tokenizer_path": (
                f"{model_cache}/{TINY_MODEL_NAME}" if model_id == TINY_MODEL_ID else model_id
            ),
            "run_id": run_id,
            "project_dir": project_dir or str(settings.BASE_DIR),
        }
        argv = [part.format(**values) for part in self.argv]
        if dataset_file:
            argv += [part.format(**values) for part in self.dataset_argv]
        if self.config_style == "cli":
            merged: dict[str, Any] = dict(self.resent_defaults())
            merged.update({k: v.format(**values) for k, v in self.static_config.items()})
            merged.update(config)
            argv += [f"{k}={cli_value(v)}" for k, v in merged.items()]
        return argv

    def resent_defaults(self) -> dict[str, Any]:
        """Every leaf of the `resend` sections of the base config, as `dotted.key: value`."""
        if not self.resend:
            return {}
        data = load_base_config(self.base_config)
        leaves: dict[str, Any] = {}
        for section in self.resend:
            node: Any = data
            for part in section.split("."):
                node = node[part]
            leaves.update(_flatten(node, section))
        return leaves


def tunix_model_name(model_id: str) -> str:
    """Tunix's name of a model id: its last path part, lower-cased (tunix/models/naming.py)."""
    return model_id.rsplit("/", 1)[-1].lower()


def _refuse_interpolation(value: str) -> None:
    if INTERPOLATION in value:
        raise ValueError("must not contain '${' (OmegaConf would resolve it)")


def cli_value(value: Any) -> str:
    """A value as the text after `key=`, read back by OmegaConf as exactly this value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        if value:
            raise TypeError("only an empty mapping can be sent as one value")
        return "{}"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"


@functools.cache
def load_base_config(name: str) -> dict[str, Any]:
    path = TUNIX_CONFIGS / name
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ImproperlyConfigured(f"{path}: not a mapping")
    return data


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    if isinstance(node, list):
        raise ImproperlyConfigured(f"{prefix}: a list cannot be re-sent as key=value")
    return {prefix: node}


def _yaml_default(base: str, dotted: str) -> Any:
    node: Any = load_base_config(base)
    for part in dotted.split("."):
        node = node[part]
    return node


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
        k.name: ConfigKey(
            name=k.name, type=k.type, default=k.default, min=k.min, max=k.max, help=k.help
        )
        for k in TINY_SFT_KEYS
    },
    env={"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    default_model_id="tiny-qwen3-random",
    dataset_argv=("--dataset", "{dataset_file}"),
)


def _tunix_key(
    base: str,
    name: str,
    type_: str,
    lo: float | None,
    hi: float | None,
    help_: str,
    choices: tuple[Any, ...] = (),
    pattern: str = "",
    pattern_help: str = "",
) -> ConfigKey:
    """A Tunix config key the user may set; its default is the base config's value."""
    return ConfigKey(
        name=name,
        type=type_,
        default=_yaml_default(base, name),
        min=lo,
        max=hi,
        choices=choices,
        max_length=500,
        help=help_,
        pattern=pattern,
        pattern_help=pattern_help,
    )


# A Hugging Face id (`Qwen/Qwen3-0.6B`) or a bare Tunix model name: Tunix takes the model's family
# and size from its last part.
HUB_MODEL_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
# Worker variables a Tunix child may need: hub and Kaggle credentials, Google credentials for GCS
# checkpoints, and JAX's platform and XLA flags. (Which devices a run sees is the worker's
# `--devices` business: runs/execution/devices.py.)
TUNIX_ENV_FROM_WORKER = (
    "HF_TOKEN",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "JAX_PLATFORMS",
    "XLA_FLAGS",
)
_SOURCES = ("huggingface", "kaggle", "gcs")
# Never a local path: a user names where the checkpoint lives, not a file on the worker.
MODEL_PATH = r"|gs://[A-Za-z0-9._-]+(/[A-Za-z0-9._=-]+)*/?|[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+"


def _model_keys(base: str) -> list[ConfigKey]:
    return [
        _tunix_key(
            base,
            "model_config.model_source",
            "str",
            None,
            None,
            "Where Tunix loads the model from (Gemma 3 needs gcs, Gemma 2 kaggle).",
            _SOURCES,
        ),
        _tunix_key(
            base,
            "model_config.model_path",
            "str",
            None,
            None,
            "For kaggle and gcs: the Kaggle handle or gs:// path of the checkpoint.",
            pattern=MODEL_PATH,
            pattern_help=(
                "must be empty, a gs:// path or a Kaggle handle (owner/model/framework/variation)"
            ),
        ),
        _tunix_key(
            base,
            "model_config.mesh.shape",
            "str",
            None,
            None,
            "Devices along ('fsdp', 'tp'), e.g. (8,1) for 8 chips of data parallelism.",
            pattern=r"\(\d{1,4},\d{1,4}\)",
            pattern_help="must be two device counts, such as (1,1) or (4,2)",
        ),
    ]


def _model_statics(run_dir_keys: Mapping[str, str]) -> dict[str, str]:
    return {
        "model_config.model_name": "{model_name}",
        "model_config.model_id": "{model_id}",
        "model_config.model_download_path": "{model_cache}/{model_name}",
        "model_config.intermediate_ckpt_dir": "{model_cache}/{model_name}-nnx",
        "tokenizer_config.tokenizer_path": "{tokenizer_path}",
        **run_dir_keys,
    }


def _peft_keys(base: str) -> list[ConfigKey]:
    return [
        _tunix_key(base, "training_config.max_steps", "int", 1, 1_000_000, "Training steps."),
        _tunix_key(
            base,
            "training_config.checkpointing_options.save_interval_steps",
            "int",
            1,
            1_000_000,
            "Orbax checkpoint interval.",
        ),
        _tunix_key(base, "optimizer_config.learning_rate", "float", 1e-9, 1.0, "AdamW rate."),
        _tunix_key(base, "batch_size", "int", 1, 4096, "Sequences per step."),
        _tunix_key(base, "max_target_length", "int", 8, 32768, "Tokens per sequence."),
        _tunix_key(base, "model_config.lora_config.rank", "int", 1, 1024, "LoRA rank."),
        _tunix_key(base, "model_config.lora_config.alpha", "float", 0.0, 4096.0, "LoRA alpha."),
        *_model_keys(base),
    ]


_TUNIX_ENV = {"PYTHONUNBUFFERED": "1"}

PEFT = Recipe(
    name="peft",
    description=(
        "Tunix PEFT: LoRA (qwix) on a model loaded by Tunix, trained by Tunix's PeftTrainer on "
        "the run's dataset or a built-in corpus. Defaults to a tiny model TunixOps builds, which "
        "needs no download."
    ),
    argv=("{python}", "-m", "runs.entrypoints.peft", "{project_dir}/runs/tunix_configs/peft.yaml"),
    keys={k.name: k for k in _peft_keys("peft.yaml")},
    env=_TUNIX_ENV,
    default_model_id=TINY_MODEL_ID,
    config_style="cli",
    static_config=_model_statics(
        {
            "training_config.checkpoint_root_directory": "{run_dir}/checkpoints",
            "training_config.metrics_logging_options.log_dir": "{run_dir}/tb",
        }
    ),
    dataset_argv=("data_file={dataset_file}",),
    base_config="peft.yaml",
    resend=("training_config", "optimizer_config", "model_config.lora_config"),
    env_from_worker=TUNIX_ENV_FROM_WORKER,
    model_id_pattern=HUB_MODEL_ID,
)

PEFT_CLI = Recipe(
    name="peft_cli",
    description=(
        "`python -m tunix.cli.peft_main` unchanged with TunixOps' base config: LoRA on a Hugging "
        "Face, Kaggle or GCS model with one of the translation datasets peft_main downloads "
        "(mtnt/en-fr, Helsinki-NLP/opus-100). Needs network access; cannot read a TunixOps "
        "dataset."
    ),
    argv=(
        "{python}",
        "-m",
        "tunix.cli.peft_main",
        "{project_dir}/runs/tunix_configs/peft_cli.yaml",
    ),
    keys={
        k.name: k
        for k in (
            *_peft_keys("peft_cli.yaml"),
            _tunix_key(
                "peft_cli.yaml",
                "dataset_name",
                "str",
                None,
                None,
                "A dataset tunix.cli.peft_main knows.",
                ("Helsinki-NLP/opus-100", "mtnt/en-fr"),
            ),
            _tunix_key("peft_cli.yaml", "num_train_epochs", "int", 1, 1000, "Epochs."),
        )
    },
    env=_TUNIX_ENV,
    default_model_id="Qwen/Qwen3-0.6B",
    config_style="cli",
    static_config=_model_statics(
        {
            "training_config.checkpoint_root_directory": "{run_dir}/checkpoints",
            "training_config.metrics_logging_options.log_dir": "{run_dir}/tb",
        }
    ),
    accepts_dataset=False,
    base_config="peft_cli.yaml",
    resend=("training_config", "optimizer_config", "model_config.lora_config"),
    env_from_worker=TUNIX_ENV_FROM_WORKER,
    model_id_pattern=HUB_MODEL_ID,
)

GRPO = Recipe(
    name="grpo",
    description=(
        "Tunix GRPO (tunix.cli.grpo_main's pipeline): rollouts, a verifiable answer reward and "
        "policy updates on prompts with answers from the run's dataset (or built-in arithmetic). "
        "Defaults to a tiny model TunixOps builds, which needs no download."
    ),
    argv=("{python}", "-m", "runs.entrypoints.grpo", "{project_dir}/runs/tunix_configs/grpo.yaml"),
    keys={
        k.name: k
        for k in (
            _tunix_key("grpo.yaml", "rl_training_config.max_steps", "int", 1, 1_000_000, "Steps."),
            _tunix_key(
                "grpo.yaml",
                "rl_training_config.checkpointing_options.save_interval_steps",
                "int",
                1,
                1_000_000,
                "Orbax checkpoint interval.",
            ),
            _tunix_key(
                "grpo.yaml",
                "rl_training_config.actor_optimizer_config.learning_rate",
                "float",
                1e-9,
                1.0,
                "Actor AdamW rate.",
            ),
            _tunix_key("grpo.yaml", "batch_size", "int", 1, 1024, "Prompts per step."),
            _tunix_key("grpo.yaml", "num_train_epochs", "int", 1, 1000, "Passes over the data."),
            _tunix_key(
                "grpo.yaml", "grpo_config.num_generations", "int", 2, 64, "Completions a prompt."
            ),
            _tunix_key("grpo.yaml", "grpo_config.beta", "float", 0.0, 10.0, "KL penalty."),
            _tunix_key("grpo.yaml", "grpo_config.epsilon", "float", 0.0, 1.0, "Clipping."),
            _tunix_key(
                "grpo.yaml",
                "rollout_config.total_generation_steps",
                "int",
                1,
                32768,
                "Tokens generated per completion.",
            ),
            _tunix_key(
                "grpo.yaml",
                "rollout_config.max_prompt_length",
                "int",
                1,
                32768,
                "Longer prompts are left out.",
            ),
            _tunix_key("grpo.yaml", "rollout_config.temperature", "float", 0.0, 10.0, "Sampling."),
            *_model_keys("grpo.yaml"),
        )
    },
    env=_TUNIX_ENV,
    default_model_id=TINY_MODEL_ID,
    config_style="cli",
    static_config=_model_statics(
        {
            "rl_training_config.checkpoint_root_directory": "{run_dir}/checkpoints",
            "rl_training_config.metrics_logging_options.log_dir": "{run_dir}/tb",
        }
    ),
    dataset_argv=("data_config.path={dataset_file}",),
    base_config="grpo.yaml",
    resend=("rl_training_config",),
    env_from_worker=TUNIX_ENV_FROM_WORKER,
    model_id_pattern=HUB_MODEL_ID,
    # A fork starts the actor and the reference from the parent's LoRA adapters, which a `peft`
    # step describes in its metadata (runs/entrypoints/lora_fork.py). Not `peft_cli`:
    # tunix.cli.peft_main, run unchanged, records no LoRA settings with its steps.
    starts_from=("peft",),
)

BUILTIN_RECIPES: dict[str, Recipe] = {r.name: r for r in (TINY_SFT, PEFT, PEFT_CLI, GRPO)}


def load_recipes_file(path: Path) -> dict[str, Recipe]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImproperlyConfigured(f"TUNIX_RECIPES_FILE {path}: {exc}") from exc
    unknown = sorted(set(data) - {"recipes"})
    if unknown:
        raise ImproperlyConfigured(
            f"TUNIX_RECIPES_FILE {path}: unknown top-level key(s) {', '.join(unknown)}; "
            "recipes go under [recipes.NAME]"
        )
    recipes = data.get("recipes", {})
    if not isinstance(recipes, dict):
        raise ImproperlyConfigured(f"TUNIX_RECIPES_FILE {path}: [recipes] must be a table")
    return {name: _parse_recipe(path, name, spec) for name, spec in recipes.items()}


# What a recipe table and a config-key table may hold; anything else is a typo to report.
RECIPE_FIELDS = frozenset(
    {
        "description",
        "argv",
        "dataset_argv",
        "config_style",
        "env",
        "default_model_id",
        "config",
        "devices",
        "max_devices",
        "memory_limit_mb",
        "max_memory_limit_mb",
        "pool",
        "retry_on",
        "retry_backoff_seconds",
        "starts_from",
        "executor",
        "ray",
    }
)
KEY_FIELDS = frozenset({"type", "default", "min", "max", "choices", "help", "max_length"})


class _RecipeFileError(ImproperlyConfigured):
    def __init__(self, path: Path, recipe: str, message: str, key: str | None = None) -> None:
        where = f"TUNIX_RECIPES_FILE {path}, recipe {recipe!r}"
        if key is not None:
            where += f", config key {key!r}"
        super().__init__(f"{where}: {message}")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _parse_recipe(path: Path, name: str, spec: object) -> Recipe:
    def fail(message: str, key: str | None = None) -> _RecipeFileError:
        return _RecipeFileError(path, name, message, key)

    if not isinstance(spec, dict):
        raise fail("must be a table")
    unknown = sorted(set(spec) - RECIPE_FIELDS)
    if unknown:
        raise fail(
            f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(RECIPE_FIELDS))})"
        )
    argv = spec.get("argv")
    if not _strings(argv) or not argv:
        raise fail("argv must be a non-empty list of strings")
    dataset_argv = spec.get("dataset_argv", [])
    if not _strings(dataset_argv):
        raise fail("dataset_argv must be a list of strings")
    for part in [*argv, *dataset_argv]:
        try:
            part.format(**{p: "" for p in PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as exc:
            raise fail(f"bad placeholder in {part!r}: {exc}") from exc
    for text_field in ("description", "default_model_id"):
        if not isinstance(spec.get(text_field, ""), str):
            raise fail(f"{text_field} must be a string")
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise fail("env must map strings to strings")
    style = spec.get("config_style", "file")
    if style not in ("file", "cli"):
        raise fail("config_style must be 'file' or 'cli'")
    resources = _parse_run_defaults(spec, fail)
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise fail("config must be a table of keys")
    keys = {key: _parse_key(key, key_spec, fail) for key, key_spec in config.items()}
    return Recipe(
        name=name,
        description=spec.get("description", ""),
        argv=tuple(argv),
        dataset_argv=tuple(dataset_argv),
        keys=keys,
        env=env,
        default_model_id=spec.get("default_model_id", ""),
        config_style=style,
        **resources,
        **_parse_executor(spec, fail),
    )


def _parse_executor(spec: dict[str, Any], fail: Any) -> dict[str, Any]:
    executor = spec.get("executor", "local")
    if executor not in EXECUTORS:
        raise fail(f"executor must be one of {', '.join(EXECUTORS)}")
    table = spec.get("ray")
    if table is None:
        return {"executor": executor, "ray": RayOptions()}
    if executor != "ray":
        raise fail('a [ray] table needs executor = "ray"')
    if not isinstance(table, dict):
        raise fail("ray must be a table")
    unknown = sorted(set(table) - RAY_FIELDS)
    if unknown:
        raise fail(
            f"unknown ray field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(RAY_FIELDS))})"
        )
    amounts: dict[str, float | None] = {}
    for name in ("num_cpus", "num_gpus"):
        value = table.get(name)
        if value is not None and not (_number(value) and value >= 0):
            raise fail(f"ray.{name} must be a number >= 0")
        amounts[name] = None if value is None else float(value)
    resources = table.get("resources", {})
    if not isinstance(resources, dict) or not all(
        isinstance(k, str) and k and _number(v) and v >= 0 for k, v in resources.items()
    ):
        raise fail("ray.resources must map resource names to numbers >= 0, e.g. {TPU = 4}")
    runtime_env = table.get("runtime_env", {})
    if not isinstance(runtime_env, dict):
        raise fail("ray.runtime_env must be a table")
    unknown = sorted(set(runtime_env) - RAY_RUNTIME_ENV_KEYS)
    if unknown:
        raise fail(
            f"unknown ray.runtime_env field(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(RAY_RUNTIME_ENV_KEYS))})"
        )
    env_vars = runtime_env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise fail("ray.runtime_env.env_vars must map strings to strings")
    return {
        "executor": executor,
        "ray": RayOptions(
            num_cpus=amounts["num_cpus"],
            num_gpus=amounts["num_gpus"],
            resources={k: float(v) for k, v in resources.items()},
            runtime_env=runtime_env,
        ),
    }


def _whole(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _parse_run_defaults(spec: dict[str, Any], fail: Any) -> dict[str, Any]:
    devices = spec.get("devices", 0)
    max_devices = spec.get("max_devices", max(devices, 0) if "devices" in spec else MAX_DEVICES)
    if not _whole(devices, 0, MAX_DEVICES) or not _whole(max_devices, 0, MAX_DEVICES):
        raise fail(f"devices and max_devices must be whole numbers from 0 to {MAX_DEVICES}")
    if devices > max_devices:
        raise fail(f"devices {devices} is more than max_devices {max_devices}")
    memory = spec.get("memory_limit_mb")
    ceiling = spec.get("max_memory_limit_mb")
    for name, value in (("memory_limit_mb", memory), ("max_memory_limit_mb", ceiling)):
        if value is not None and not _whole(value, 1, 2**31 - 1):
            raise fail(f"{name} must be a positive whole number of MiB")
    if memory is not None and ceiling is not None and memory > ceiling:
        raise fail(f"memory_limit_mb {memory} is more than max_memory_limit_mb {ceiling}")
    pool = spec.get("pool", DEFAULT_POOL)
    if not isinstance(pool, str) or not POOL_NAME.match(pool):
        raise fail("pool must be a name of letters, digits, '.', '_' or '-'")
    retry_on = spec.get("retry_on", list(retry_rules.DEFAULT))
    problem = retry_rules.invalid_rules(retry_on)
    if problem:
        raise fail(f"retry_on {problem}")
    backoff = spec.get("retry_backoff_seconds", 10.0)
    if not _number(backoff) or not 0 <= backoff <= retry_rules.MAX_BACKOFF_SECONDS:
        raise fail(f"retry_backoff_seconds must be 0 to {retry_rules.MAX_BACKOFF_SECONDS:g}")
    starts_from = spec.get("starts_from", [])
    if not _strings(starts_from):
        raise fail("starts_from must be a list of recipe names")
    return {
        "devices": devices,
        "max_devices": max_devices,
        "memory_limit_mb": memory,
        "max_memory_limit_mb": ceiling,
        "pool": pool,
        "retry_on": tuple(retry_on),
        "retry_backoff_seconds": float(backoff),
        "starts_from": tuple(starts_from),
    }


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_key(name: str, spec: object, fail: Any) -> ConfigKey:
    if not isinstance(spec, dict):
        raise fail("must be a table", name)
    unknown = sorted(set(spec) - KEY_FIELDS)
    if unknown:
        raise fail(
            f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(KEY_FIELDS))})",
            name,
        )
    type_ = spec.get("type", "str")
    if type_ not in _TYPES:
        raise fail(f"unknown type {type_!r} (int, float, str or bool)", name)
    numeric = type_ in ("int", "float")
    for bound in ("min", "max"):
        if bound in spec and not (numeric and _number(spec[bound])):
            raise fail(f"{bound} must be a number and only an int or float key has one", name)
    if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
        raise fail(f"min {spec['min']} is greater than max {spec['max']}", name)
    max_length = spec.get("max_length", 1000)
    if type_ != "str" and "max_length" in spec:
        raise fail("only a str key has a max_length", name)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise fail("max_length must be a positive integer", name)
    if not isinstance(spec.get("help", ""), str):
        raise fail("help must be a string", name)
    choices = spec.get("choices", [])
    if not isinstance(choices, list):
        raise fail("choices must be a list", name)
    key = ConfigKey(
        name=name,
        type=type_,
        min=spec.get("min"),
        max=spec.get("max"),
        max_length=max_length,
        help=spec.get("help", ""),
    )
    # Each choice and the default must be values the key itself accepts.
    for choice in choices:
        try:
            key.clean(choice)
        except ValueError as exc:
            raise fail(f"choice {choice!r} {exc}", name) from exc
    key = dataclasses.replace(key, choices=tuple(key.clean(c) for c in choices))
    if "default" in spec:
        try:
            default = key.clean(spec["default"])
        except ValueError as exc:
            raise fail(f"default {spec['default']!r} {exc}", name) from exc
        key = dataclasses.replace(key, default=default)
    return key


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
