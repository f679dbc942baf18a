"""Threshold conditions: parsed strictly, stored in one spelling, never satisfied by NaN."""

import math

import pytest

from webhooks.conditions import ConditionError, parse


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("loss < 0.5", "loss < 0.5"),
        ("loss<0.5", "loss < 0.5"),
        ("  eval/loss   >=  1e-3 ", "eval/loss >= 0.001"),
        ("grad_norm > 100", "grad_norm > 100"),
        ("accuracy == 1", "accuracy == 1"),
        ("lr != 0.003", "lr != 0.003"),
        ("reward <= -2.5", "reward <= -2.5"),
    ],
)
def test_a_condition_is_stored_in_one_spelling(text: str, canonical: str) -> None:
    assert str(parse(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "loss <",
        "< 0.5",
        "loss",
        "loss ~ 1",
        "loss < 1 2",
        "loss < abc",
        "loss < inf",
        "1loss < 2",
        "loss < nan",
        "a" * 101 + " < 1",
        "",
    ],
)
def test_a_malformed_condition_is_refused(text: str) -> None:
    with pytest.raises(ConditionError):
        parse(text)


def test_a_condition_holds_only_for_a_finite_value_that_satisfies_it() -> None:
    below = parse("loss < 0.5")
    assert below.holds({"loss": 0.4})
    assert not below.holds({"loss": 0.5})
    assert not below.holds({"loss": None})
    assert not below.holds({"loss": math.nan})
    assert not below.holds({"perplexity": 0.1})
    assert parse("loss != 1").holds({"loss": 2.0})
    assert not parse("loss != 1").holds({"loss": None})
