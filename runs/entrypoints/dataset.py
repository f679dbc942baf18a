"""The run's dataset as the Tunix recipes read it: TunixOps' `tunix_sft` export, one
`{"prompt": str, "completion": str}` object per line (traces/formats.py writes it).

Django-free: `tiny_sft`, `peft` and `grpo`'s data module (runs/entrypoints/grpo_data.py) run as
the run's child and all read the file through `read_examples`, so one bad line is reported the
same way whichever recipe meets it.
"""

import json
from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """The dataset file cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class DatasetExample:
    lineno: int
    prompt: str
    completion: str


def read_examples(path: Path) -> list[DatasetExample]:
    """Every non-blank line of `path` as an example; `DatasetError` for the first bad one, an
    unreadable file or a file with none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from exc
    examples: list[DatasetExample] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DatasetError(f"dataset line {lineno}: not valid JSON ({exc})") from exc
        if not (
            isinstance(row, dict)
            and isinstance(row.get("prompt"), str)
            and isinstance(row.get("completion"), str)
        ):
            raise DatasetError(f"dataset line {lineno}: expected string 'prompt' and 'completion'")
        examples.append(DatasetExample(lineno, row["prompt"], row["completion"]))
    if not examples:
        raise DatasetError(f"dataset {path} has no record")
    return examples
