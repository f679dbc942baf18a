"""A verifiable GRPO reward: does the completion state the reference answer?

Tunix takes every public function of this module as a reward function
(`HyperParameters.obtain_reward_fn`), calling it with the batch's prompts, completions and the
dataset's other fields (`answer` from runs/entrypoints/grpo_data.py). Private helpers start with
an underscore for that reason.

Each question scored is also counted, and at exit the child prints how many distinct questions
and completions reached the rewards and writes that to `data_summary.json` in the run directory
(`TUNIX_RUN_DIR`): evidence that the run's data was trained on, not just loaded.
"""

import atexit
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_seen_questions: set[str] = set()
_scored = [0]


def answer_match(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's last number equals a numeric answer (or the text contains a
    non-numeric answer), else 0.0."""
    questions = kwargs.get("question")
    _record(prompts if questions is None else questions, len(completions))
    return [
        _score(completion, str(expected))
        for completion, expected in zip(completions, answer, strict=True)
    ]


def _score(completion: str, expected: str) -> float:
    expected = expected.strip()
    if _NUMBER.fullmatch(expected):
        numbers = _NUMBER.findall(completion)
        return 1.0 if numbers and float(numbers[-1]) == float(expected) else 0.0
    return 1.0 if expected and expected in completion else 0.0


def _record(questions: Sequence[Any], completions: int) -> None:
    _seen_questions.update(str(q) for q in questions)
    _scored[0] += completions


def _report() -> None:
    if not _scored[0]:
        return
    summary = {"distinct_questions": len(_seen_questions), "completions_scored": _scored[0]}
    print(
        f"grpo: rewards scored {_scored[0]} completions of {len(_seen_questions)} distinct "
        "questions",
        file=sys.stdout,
        flush=True,
    )
    run_dir = os.environ.get("TUNIX_RUN_DIR")
    if run_dir:
        (Path(run_dir) / "data_summary.json").write_text(json.dumps(summary, sort_keys=True))


atexit.register(_report)
