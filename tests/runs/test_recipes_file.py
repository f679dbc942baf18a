"""The operators' recipes file: every field checked on load; a bad file stops processes."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from runs.recipes import ConfigError, load_recipes_file
from tests.conftest import CHILD_RECIPES, REPO

GOOD = """
[recipes.mine]
argv = ["{python}", "-m", "mine", "{config_file}"]

[recipes.mine.config.steps]
type = "int"
min = 1
max = 100
default = 10

[recipes.mine.config.mode]
type = "str"
choices = ["fast", "slow"]
default = "fast"
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "recipes.toml"
    path.write_text(text)
    return load_recipes_file(path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ImproperlyConfigured) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "recipes.toml") in message
    return message


def test_a_well_formed_file_loads_with_its_defaults(tmp_path: Path) -> None:
    recipe = load(tmp_path, GOOD)["mine"]
    assert recipe.clean_config({}) == {"steps": 10, "mode": "fast"}
    with pytest.raises(ConfigError):
        recipe.clean_config({"mode": "medium"})


def test_the_test_suites_own_recipes_file_is_valid() -> None:
    assert "child" in load_recipes_file(CHILD_RECIPES)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("default = 10", "default = 0"), "config key 'steps': default 0 must be >= 1"),
        (
            ("default = 10", 'default = "ten"'),
            "config key 'steps': default 'ten' must be of type int",
        ),
        (
            ("default = 10", "default = 10.5"),
            "config key 'steps': default 10.5 must be of type int",
        ),
        (("max = 100", 'max = "100"'), "config key 'steps': max must be a number"),
        (("max = 100", "max = 0"), "config key 'steps': min 1 is greater than max 0"),
        (('choices = ["fast", "slow"]', 'choices = ["fast", 2]'), "config key 'mode': choice 2"),
        (('default = "fast"', 'default = "medium"'), "config key 'mode': default 'medium'"),
        (('type = "str"', 'type = "string"'), "config key 'mode': unknown type 'string'"),
        (("min = 1", "minimum = 1"), "config key 'steps': unknown field(s) minimum"),
        (("argv =", "argvs ="), "recipe 'mine': unknown field(s) argvs"),
        (('"{config_file}"', '"{config}"'), "recipe 'mine': bad placeholder in '{config}'"),
    ],
)
def test_a_mistake_is_refused_naming_the_file_recipe_and_key(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    old, new = edit
    assert old in GOOD
    assert expected in refused(tmp_path, GOOD.replace(old, new, 1))


def test_a_bool_key_cannot_have_bounds(tmp_path: Path) -> None:
    text = GOOD + '\n[recipes.mine.config.flag]\ntype = "bool"\nmin = 0\n'
    assert "config key 'flag': min must be a number and only an int or float key" in refused(
        tmp_path, text
    )


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    assert "TUNIX_RECIPES_FILE" in refused(tmp_path, "[recipes.mine\nargv = 1")


def _start(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "manage.py", "tunix_worker", "--once"],
        [sys.executable, "-m", "daphne", "-p", "0", "tunixops.asgi:application"],
    ],
    ids=["worker", "web"],
)
def test_a_bad_recipes_file_stops_the_worker_and_the_web_at_start(
    tmp_path: Path, process_env: dict[str, str], command: list[str]
) -> None:
    path = tmp_path / "recipes.toml"
    path.write_text(GOOD.replace("default = 10", "default = 0", 1))
    done = _start(command, {**process_env, "TUNIX_RECIPES_FILE": str(path)})
    assert done.returncode != 0
    assert f"TUNIX_RECIPES_FILE {path}, recipe 'mine', config key 'steps'" in done.stderr
