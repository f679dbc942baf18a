"""Training metrics: the recipe's machine-readable stdout lines, and the series they make.

A recipe reports each optimizer step on stdout as one line:

    tunixops.metric {"step": 12, "loss": 3.0595, "perplexity": 21.32, "learning_rate": 0.003}

`step` (an int) and `loss` are always there, other keys are optional numbers, and a non-finite
value is null. The worker's log sink feeds the raw output to `MetricLineReader`, which finds these
lines however the pipe split them, and stores what it parsed as `RunMetric` rows in the same
transaction as the log chunks; `metric_series` reads them back for the API.
"""

import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import F, Value, Window
from django.db.models.functions import Mod, RowNumber

from runs.models import RunMetric

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
            values[name] = None
            continue
        try:
            number = _number(value)
        except ValueError:
            if name == "loss":
                return None
            continue  # an optional key of another type is not a metric
        if len(name) <= MAX_NAME_CHARS:
            values[name] = number
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


# -- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSeries:
    run_id: uuid.UUID
    points: list[MetricPoint]
    total: int  # points after `since_step`, before downsampling
    downsampled: bool
    last_step: int | None


def metric_series(run_id: uuid.UUID, *, since_step: int = -1, max_points: int) -> MetricSeries:
    """The run's points after `since_step`, at most `max_points` of them, the last always kept.

    A longer series is thinned evenly in the database: every k-th point counted back from the
    last, with k the smallest stride that fits.
    """
    rows = RunMetric.objects.filter(run_id=run_id, step__gt=since_step).order_by("step")
    total = rows.count()
    downsampled = total > max_points
    if downsampled:
        stride = -(-total // max_points)
        rows = rows.annotate(
            position=Window(RowNumber(), order_by=F("step").asc()),
            keep=Mod(Value(total) - F("position"), Value(stride)),
        ).filter(keep=0)
    points = [MetricPoint(step, values) for step, values in rows.values_list("step", "values")]
    return MetricSeries(
        run_id=run_id,
        points=points,
        total=total,
        downsampled=downsampled,
        last_step=points[-1].step if points else None,
    )


def metric_points_after(run_id: uuid.UUID, after_step: int, limit: int = 500) -> list[MetricPoint]:
    """The next `limit` points after `after_step`, in step order (for live streams)."""
    rows = (
        RunMetric.objects.filter(run_id=run_id, step__gt=after_step)
        .order_by("step")
        .values_list("step", "values")[:limit]
    )
    return [MetricPoint(step, values) for step, values in rows]


def last_metric_step(run_id: uuid.UUID) -> int:
    """The run's latest step so far, or -1 before its first."""
    step = (
        RunMetric.objects.filter(run_id=run_id)
        .order_by("-step")
        .values_list("step", flat=True)
        .first()
    )
    return -1 if step is None else step
