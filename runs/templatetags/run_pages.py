"""Small formatting filters for the run pages."""

import math
from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def duration(value: timedelta | None) -> str:
    """`4.2 s`, `3 min 05 s`, `2 h 07 min`; empty when the run has not started."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@register.filter
def metric_value(value: float | None) -> str:
    """A metric as the charts print it (static/runs/metrics.mjs `formatValue`): four significant
    digits, exponent only for very small or large values; an en dash for none."""
    if value is None or not math.isfinite(value):
        return "\u2013"
    size = abs(value)
    if size != 0 and (size < 1e-3 or size >= 1e6):
        return f"{value:.2e}".replace("e-0", "e-").replace("e+0", "e+")
    return f"{float(f'{value:.4g}'):g}"
