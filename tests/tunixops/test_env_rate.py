import pytest
from django.core.exceptions import ImproperlyConfigured

from tunixops.env import envrate


@pytest.mark.parametrize("value", ["10/minute", "1/s", "300/hour", "5/day", " 7/min "])
def test_a_throttle_rate_is_taken_as_given(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TUNIX_TEST_RATE", value)
    assert envrate("TUNIX_TEST_RATE", "1/day") == value.strip()


def test_an_unset_or_empty_rate_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_TEST_RATE", " ")
    assert envrate("TUNIX_TEST_RATE", "10/minute") == "10/minute"


@pytest.mark.parametrize("value", ["10", "0/minute", "ten/minute", "10/fortnight", "-1/s"])
def test_a_malformed_rate_stops_the_process_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TUNIX_TEST_RATE", value)
    with pytest.raises(ImproperlyConfigured, match="TUNIX_TEST_RATE="):
        envrate("TUNIX_TEST_RATE", "1/day")
