from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_it_lists_every_recipe_by_name_with_typed_config_keys(api: APIClient) -> None:
    response = api.get("/api/tunix/recipes")
    assert response.status_code == 200
    recipes = {r["name"]: r for r in response.json()}
    assert list(recipes) == sorted(recipes)
    tiny = recipes["tiny_sft"]
    assert tiny["default_model_id"] == "tiny-qwen3-random"
    keys = {k["name"]: k for k in tiny["config"]}
    assert keys["max_steps"] == {
        "name": "max_steps",
        "type": "int",
        "default": 50,
        "min": 1.0,
        "max": 1_000_000.0,
        "choices": [],
        "max_length": 1000,
        "help": "Training steps.",
    }
    assert keys["learning_rate"]["type"] == "float"
    # Keys come in their declared order, as the pages show them.
    assert [k["name"] for k in tiny["config"]][:2] == ["max_steps", "learning_rate"]
    # The Tunix recipes' defaults come from their base configs.
    assert recipes["peft"]["default_model_id"] == "tunixops/qwen3-tiny"
    assert recipes["peft"]["config"][0]["name"] == "training_config.max_steps"
    assert recipes["peft"]["config"][0]["default"] == 20
    assert recipes["grpo"]["config"][0]["default"] == 6


def test_operator_recipes_from_the_recipes_file_are_listed(
    api: APIClient, child_recipes: Any
) -> None:
    names = [r["name"] for r in api.get("/api/tunix/recipes").json()]
    assert {"child", "missing_program", "tiny_sft", "peft"} <= set(names)
    child = next(r for r in api.get("/api/tunix/recipes").json() if r["name"] == "child")
    types = {k["name"]: k["type"] for k in child["config"]}
    assert types["ignore_sigterm"] == "bool" and types["partial"] == "str"


def test_anonymous_requests_are_refused(anon: APIClient) -> None:
    response = anon.get("/api/tunix/recipes")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
