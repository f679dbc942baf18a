"""Metric thresholds of webhooks: `loss < 0.5`, `grad_norm >= 100`.

Django-free: parsed when a hook is registered (a malformed one is refused, naming the field) and
evaluated where training metrics are stored. A condition is a metric name, a comparison and a
finite number; a non-finite value (stored as null) never satisfies one, it is the
`metric.nonfinite` event's business.
"""

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_NAME_CHARS = 100
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_NAME = rf"[A-Za-z_][A-Za-z0-9_./-]{{0,{MAX_NAME_CHARS - 1}}}"
_CONDITION = re.compile(rf"\s*(?P<name>{_NAME})\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>\S+)\s*")
SYNTAX = "Expected `<metric> <op> <number>`, e.g. `loss < 0.5`; op is one of < <= > >= == !=."


class ConditionError(ValueError):
    pass


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    value: float

    def __str__(self) -> str:
        # The canonical spelling, stored and shown: `loss < 0.5`.
        return f"{self.name} {self.op} {self.value:g}"

    def holds(self, values: dict[str, float | None]) -> bool:
        """Whether the step's `values` satisfy it; a missing or non-finite value never does."""
        found = values.get(self.name)
        if found is None or not math.isfinite(found):
            return False
        return OPERATORS[self.op](found, self.value)


def parse(text: str) -> Condition:
    match = _CONDITION.fullmatch(text)
    if match is None:
        raise ConditionError(SYNTAX)
    try:
        value = float(match["value"])
    except ValueError:
        raise ConditionError(f"{match['value']!r} is not a number. {SYNTAX}") from None
    if not math.isfinite(value):
        raise ConditionError("The threshold must be a finite number.")
    return Condition(name=match["name"], op=match["op"], value=value)
