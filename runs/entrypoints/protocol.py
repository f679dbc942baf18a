"""The line protocol between a recipe and the worker: training metrics on stdout.

Django-free: the recipes' entry points (which run in the Tunix interpreter) and the worker's log
sink both import this module, so the prefix and the format are written once.

A recipe reports each optimizer step on stdout as one line:

    tunixops.metric {"step": 12, "loss": 3.0595, "perplexity": 21.32, "learning_rate": 0.003}

`step` (an int) and `loss` are always there, other keys are optional numbers, and a non-finite
value is null. The worker's log sink feeds the raw output to `MetricLineReader`, which finds these
lines however the pipe split them, and stores what it parsed as `RunMetric` rows in the same
transaction as the log chunks; `runs.selectors.metric_series` reads them back for the API.
"""

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from tunixops.text import storable

log = logging.getLogger(__name__)

PREFIX = "tunixops.metric "
_LINE_PREFIX = "\n" + PREFIX
# A metric line is short; a longer one is somebody's log output that happens to start alike.
MAX_LINE_CHARS = 16 * 1024
MAX_NAMES = 64
MAX_NAME_CHARS = 100
MAX_STEP = 2_147_483_647

Values = dict[str, float | None]


@dataclass(frozen=True)
class MetricPoint:
    step: int
    values: Values


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    number = float(value)
    return number if math.isfinite(number) else None


def parse_metric_line(payload: str) -> MetricPoint | None:
    """The point a line's JSON (after the prefix) describes, or None when it is not one."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    step = data.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return None
    if "loss" not in data or len(data) > MAX_NAMES + 1:
        return None
    values: Values = {}
    for name, value in data.items():
        if name == "step":
            continue
        if value is None:
            if len(name) <= MAX_NAME_CHARS:
                values[storable(name)] = None
            continue
        try:
            number = _number(value)
        except ValueError:
            if name == "loss":
                return None
            continue  # an optional key of another type is not a metric
        if len(name) <= MAX_NAME_CHARS:
            # A JSON escape can spell a NUL or a lone surrogate in a name; jsonb refuses both.
            values[storable(name)] = number
    return MetricPoint(step=step, values=values)


class MetricLineReader:
    """Finds metric lines in a stream of text that arrives in arbitrary pieces.

    Only complete lines are parsed (and, at `finish()`, the unterminated last one). The text
    between metric lines is scanned, never copied: the log hot path pays one substring search per
    piece.
    """

    def __init__(self) -> None:
        self._line = ""  # the start of the current line, while it may still be a metric line
        self._skipping = False  # the current line is known not to be one

    def feed(self, text: str) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        start = 0
        if self._skipping or self._line:
            newline = text.find("\n")
            if newline < 0:
                self._extend(text)
                return points
            if self._line:
                self._parse(self._line + text[:newline], points)
            self._line, self._skipping = "", False
            start = newline + 1
        end = text.rfind("\n") + 1  # past the last complete line
        if end > start:
            at = start if text.startswith(PREFIX, start) else text.find(_LINE_PREFIX, start, end)
            while at >= 0:
                if text[at] == "\n":
                    at += 1
                line_end = text.find("\n", at)
                self._parse(text[at:line_end], points)
                at = text.find(_LINE_PREFIX, line_end, end)
            start = end
        if start < len(text):
            self._extend(text[start:])
        return points

    def finish(self) -> list[MetricPoint]:
        """The output ended: its unterminated last line, if a metric line, is whole after all."""
        points: list[MetricPoint] = []
        if self._line:
            self._parse(self._line, points)
        self._line, self._skipping = "", False
        return points

    def _extend(self, piece: str) -> None:
        if self._skipping:
            return
        line = self._line + piece
        if len(line) > MAX_LINE_CHARS or not (line.startswith(PREFIX) or PREFIX.startswith(line)):
            self._line, self._skipping = "", True
        else:
            self._line = line

    def _parse(self, line: str, points: list[MetricPoint]) -> None:
        if len(line) > MAX_LINE_CHARS or not line.startswith(PREFIX):
            return
        point = parse_metric_line(line[len(PREFIX) :].rstrip("\r"))
        if point is None:
            log.debug("ignoring a malformed metric line: %.200s", line)
        else:
            points.append(point)


def metric_line(step: int, values: dict[str, float | None]) -> str:
    """The line a recipe prints for one step (without the newline); `values` must hold `loss`."""
    return PREFIX + json.dumps({"step": step, **values}, allow_nan=False)
