"""The peft, peft_cli and grpo recipes: the exact commands they show, and what they refuse."""

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run
from runs.recipes import cli_value, get_recipe, load_base_config
from runs.services import run_dry_run
from tests.runs.test_api import post_run

pytestmark = pytest.mark.django_db

TUNIX_RECIPES = ("peft", "peft_cli", "grpo")


def dry_run(api: APIClient, body: dict[str, Any]) -> Any:
    response = post_run(api, body, mode="dry-run")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_dry_run_of_peft_shows_the_whole_command(api: APIClient) -> None:
    plan = dry_run(api, {"recipe": "peft", "config": {"training_config.max_steps": 7}})
    argv = plan["argv"]
    assert argv[:4] == [
        "python",
        "-m",
        "runs.entrypoints.peft",
        "$PROJECT_DIR/runs/tunix_configs/peft.yaml",
    ]
    assert "training_config.max_steps=7" in argv
    assert "training_config.checkpoint_root_directory=$RUN_DIR/checkpoints" in argv
    assert "training_config.metrics_logging_options.log_dir=$RUN_DIR/tb" in argv
    assert "model_config.model_id=tunixops/qwen3-tiny" in argv
    assert "model_config.model_name=qwen3-tiny" in argv
    assert "tokenizer_config.tokenizer_path=$MODEL_CACHE/qwen3-tiny" in argv
    assert "model_config.lora_config.rank=4" in argv
    assert not any(a.startswith("data_file=") for a in argv)
    assert plan["env"]["PYTHON_DOTENV_DISABLED"] == "1"
    assert plan["env"]["HF_TOKEN"] == "$HF_TOKEN"  # named, never its value
    assert plan["config"]["training_config.max_steps"] == 7
    assert Run.objects.count() == 0


def test_the_dry_run_of_grpo_shows_the_whole_command_with_the_dataset(
    api: APIClient, make_dataset: Any
) -> None:
    key = make_dataset()
    plan = dry_run(api, {"recipe": "grpo", "dataset_key": key})
    argv = plan["argv"]
    assert argv[:4] == [
        "python",
        "-m",
        "runs.entrypoints.grpo",
        "$PROJECT_DIR/runs/tunix_configs/grpo.yaml",
    ]
    assert "data_config.path=$RUN_DIR/dataset.jsonl" in argv
    assert "rl_training_config.checkpoint_root_directory=$RUN_DIR/checkpoints" in argv
    assert "rl_training_config.max_steps=6" in argv
    assert "grpo_config.num_generations=2" in argv


def test_the_dry_run_of_peft_cli_runs_tunix_peft_main_unchanged(api: APIClient) -> None:
    plan = dry_run(
        api,
        {
            "recipe": "peft_cli",
            "model_id": "google/gemma-3-1b-it",
            "config": {
                "model_config.model_source": "gcs",
                "model_config.model_path": "gs://gemma-data/checkpoints/gemma3-1b-it",
                "dataset_name": "mtnt/en-fr",
            },
        },
    )
    argv = plan["argv"]
    assert argv[:4] == [
        "python",
        "-m",
        "tunix.cli.peft_main",
        "$PROJECT_DIR/runs/tunix_configs/peft_cli.yaml",
    ]
    assert "model_config.model_name=gemma-3-1b-it" in argv
    assert "model_config.model_path='gs://gemma-data/checkpoints/gemma3-1b-it'" in argv
    assert "tokenizer_config.tokenizer_path=google/gemma-3-1b-it" in argv
    assert "dataset_name=mtnt/en-fr" in argv


def test_peft_cli_refuses_a_tunixops_dataset(api: APIClient, make_dataset: Any) -> None:
    response = post_run(api, {"recipe": "peft_cli", "dataset_key": make_dataset()})
    assert response.status_code == 400
    assert (
        "cannot train on a TunixOps dataset" in response.json()["error"]["fields"]["dataset_key"][0]
    )


@pytest.mark.parametrize("recipe", TUNIX_RECIPES)
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_id": "${oc.env:SECRET_KEY}"}, "model_id"),
        ({"model_id": "Qwen/${oc.env:SECRET_KEY}"}, "model_id"),
        ({"model_id": "-Qwen3"}, "model_id"),
        ({"model_id": "Qwen/Qwen3 0.6B"}, "model_id"),
        ({"model_id": "../../etc"}, "model_id"),
        (
            {"config": {"model_config.model_path": "gs://b/${oc.env:SECRET_KEY}"}},
            "config.model_config.model_path",
        ),
        ({"config": {"model_config.model_path": "/etc/passwd"}}, "config.model_config.model_path"),
        (
            {"config": {"model_config.model_path": "gs://b/a\u0000"}},
            "config.model_config.model_path",
        ),
        (
            {"config": {"model_config.model_path": "gs://b/\ud800"}},
            "config.model_config.model_path",
        ),
        ({"config": {"model_config.model_source": "local"}}, "config.model_config.model_source"),
    ],
)
def test_interpolation_paths_and_flags_are_refused_with_the_field_named(
    api: APIClient, recipe: str, body: dict[str, Any], field: str
) -> None:
    for mode in ("async", "dry-run"):
        # Sent as JSON text, where an unpaired surrogate is a plain \\ud800 escape.
        response = api.post(
            f"/api/tunix/run?mode={mode}",
            json.dumps({"recipe": recipe, **body}),
            content_type="application/json",
        )
        assert response.status_code == 400, response.content
        assert field in response.json()["error"]["fields"], response.json()
    assert Run.objects.count() == 0


def test_an_operator_recipe_with_the_model_id_as_its_own_argument_refuses_a_leading_dash(
    api: APIClient, settings: Any, tmp_path: Path
) -> None:
    recipes = tmp_path / "recipes.toml"
    recipes.write_text(
        '[recipes.hf]\nargv = ["{python}", "-m", "trainer", "--model", "{model_id}"]\n'
        '[recipes.hf_cli]\nargv = ["{python}", "-m", "trainer"]\nconfig_style = "cli"\n'
        '[recipes.hf_cli.config.note]\ntype = "str"\n'
    )
    settings.TUNIX_RECIPES_FILE = str(recipes)
    refused = post_run(api, {"recipe": "hf", "model_id": "--config=/etc/passwd"}, mode="dry-run")
    assert refused.status_code == 400
    assert "option" in refused.json()["error"]["fields"]["model_id"][0]
    fine = dry_run(api, {"recipe": "hf", "model_id": "org/model-1"})
    assert fine["argv"][-2:] == ["--model", "org/model-1"]
    # In a key=value argument a dash is harmless, but a cli recipe's strings never carry ${.
    assert dry_run(api, {"recipe": "hf_cli", "config": {"note": "-x"}})["argv"][-1] == "note='-x'"
    interpolated = post_run(api, {"recipe": "hf_cli", "config": {"note": "a${b}"}})
    assert interpolated.status_code == 400
    assert "config.note" in interpolated.json()["error"]["fields"]


@pytest.mark.parametrize(
    "text",
    [
        "plain/path-1.0",
        "a: b",
        "[1, 2]",
        "{a: 1}",
        "null",
        "True",
        "yes",
        "1e5",
        "0x1F",
        "it's",
        "'quoted'",
        '"double"',
        "#comment",
        "- item",
        "",
        " padded ",
        "$HOME/x",
        "a=b",
        "ünïcode ✓",
        "~",
    ],
)
def test_a_string_value_reaches_omegaconf_as_exactly_that_string(text: str) -> None:
    omegaconf = pytest.importorskip("omegaconf", reason="needs the Tunix runtime")
    parsed = omegaconf.OmegaConf.to_container(
        omegaconf.OmegaConf.from_cli([f"key={cli_value(text)}"]), resolve=True
    )
    assert parsed == {"key": text}


@pytest.mark.parametrize("value", [0, 7, -3, 0.003, 1e-06, 2.5e10, True, False, None])
def test_numbers_booleans_and_null_reach_omegaconf_as_themselves(value: Any) -> None:
    omegaconf = pytest.importorskip("omegaconf", reason="needs the Tunix runtime")
    parsed = omegaconf.OmegaConf.to_container(
        omegaconf.OmegaConf.from_cli([f"k={cli_value(value)}"])
    )
    assert parsed == {"k": value}
    assert type(parsed["k"]) is type(value)


@pytest.mark.tunix
@pytest.mark.parametrize("recipe", TUNIX_RECIPES)
def test_tunix_parses_the_command_into_the_base_config_plus_the_run_s_values(
    recipe: str, settings: Any, monkeypatch: Any
) -> None:
    """Tunix replaces a section it gets any key of: every such section must arrive whole."""
    tunix_config = pytest.importorskip("tunix.cli.config", reason="needs the Tunix runtime")
    found = get_recipe(recipe)
    assert found is not None
    monkeypatch.setenv("HF_TOKEN", "not-a-real-token")  # Tunix checks that hub tokenizers have one
    monkeypatch.setenv("PYTHON_DOTENV_DISABLED", "1")
    steps_key = "rl_training_config.max_steps" if recipe == "grpo" else "training_config.max_steps"
    config = found.clean_config({steps_key: 3})
    argv = found.render_argv(
        python="python", run_dir="/runs/r1", config=config, run_id="r1", model_cache="/models"
    )
    program = "grpo_main" if recipe == "grpo" else "peft_main"
    parsed = tunix_config.HyperParameters([program, *argv[3:]]).config
    base = load_base_config(found.base_config)
    for section in found.resend:
        assert _leaves(_dig(parsed, section)) == _leaves(_dig(base, section)), section
    training = parsed["rl_training_config" if recipe == "grpo" else "training_config"]
    assert training["max_steps"] == 3
    assert training["checkpoint_root_directory"] == "/runs/r1/checkpoints"
    assert training["metrics_logging_options"]["log_dir"] == "/runs/r1/tb"
    assert parsed["model_config"]["model_id"] == found.default_model_id
    if recipe != "grpo":
        assert (
            parsed["model_config"]["lora_config"]["rank"]
            == base["model_config"]["lora_config"]["rank"]
        )


def _leaves(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, Mapping) and node:
        return set().union(*(_leaves(v, f"{prefix}.{k}") for k, v in node.items()))
    return {prefix}


def _dig(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = node[part]
    return node


DOTENV_PROBE = """
import os, sys
sys.path.insert(0, os.environ["PROBE_SITE"])
import probe_pkg.inner
print(os.environ.get("TUNIX_LEAKED_SECRET", "not loaded"))
"""


def test_a_child_does_not_load_a_dotenv_file_above_the_package_that_looks_for_one(
    tmp_path: Path,
) -> None:
    """Tunix calls `dotenv.load_dotenv()` at import, which searches upwards from the calling
    file, as this probe package does; the recipes' environment turns that search off."""
    pytest.importorskip("dotenv", reason="needs the Tunix runtime")
    site = tmp_path / "venv" / "site-packages"
    (site / "probe_pkg").mkdir(parents=True)
    (site / "probe_pkg" / "__init__.py").write_text("")
    (site / "probe_pkg" / "inner.py").write_text("import dotenv\ndotenv.load_dotenv()\n")
    (tmp_path / ".env").write_text("TUNIX_LEAKED_SECRET=from-the-dotenv-file\n")
    recipe = get_recipe("peft")
    assert recipe is not None
    base = {"PATH": os.environ["PATH"], "PROBE_SITE": str(site)}

    def probe(env: dict[str, str]) -> str:
        out = subprocess.run(
            [sys.executable, "-c", DOTENV_PROBE],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    assert probe(base) == "from-the-dotenv-file"  # the hazard is real
    assert probe({**base, **recipe.child_env({})}) == "not loaded"


def test_the_child_gets_only_the_named_variables_of_the_worker_s_environment() -> None:
    recipe = get_recipe("grpo")
    assert recipe is not None
    env = recipe.child_env(
        {
            "HF_TOKEN": "hf_x",
            "SECRET_KEY": "django",
            "DATABASE_URL": "postgres://x",
            "T_BATCH_SIZE": "9",
        }
    )
    assert env["HF_TOKEN"] == "hf_x"
    assert not {"SECRET_KEY", "DATABASE_URL", "T_BATCH_SIZE"} & set(env)


def test_the_stored_model_id_is_the_default_when_none_is_given(api: APIClient) -> None:
    for recipe in ("peft", "grpo"):
        response = post_run(api, {"recipe": recipe})
        assert response.status_code == 202
        run = Run.objects.get(pk=response.json()["run_id"])
        assert run.model_id == "tunixops/qwen3-tiny"
        assert json.dumps(run.config)


def test_the_dry_run_of_a_given_model_uses_the_hub_id_for_the_tokenizer() -> None:
    plan = run_dry_run(recipe="peft", config={}, model_id="Qwen/Qwen3-0.6B", user=None)
    assert "tokenizer_config.tokenizer_path=Qwen/Qwen3-0.6B" in plan["argv"]
    assert "model_config.model_download_path=$MODEL_CACHE/qwen3-0.6b" in plan["argv"]
