"""Export formats: how one stored trace becomes one JSONL record.

`tunix_sft` gives `{"prompt": ..., "completion": ...}` for supervised fine-tuning. The prompt is the
trace's prompt unchanged. The completion is the reasoning and the answer as plain text::

    <newline>
    Step 1 (thought): <content of the step with the smallest i>
    Step 2 (calculation): <content of the next step>
    ...
    Answer: <final answer>

Steps are numbered 1, 2, ... by position in order of `i` (the stored `i` may start anywhere and
skip numbers). The completion opens with a newline because trainers, `tiny_sft` among them, train
on `prompt + completion`, and the prompt should end where the reasoning begins.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Record = dict[str, str]
Renderer = Callable[[str, Sequence[Mapping[str, Any]], str], Record]


def tunix_sft(prompt: str, steps: Sequence[Mapping[str, Any]], final_answer: str) -> Record:
    lines = [""]
    for n, step in enumerate(sorted(steps, key=lambda step: step["i"]), start=1):
        lines.append(f"Step {n} ({step['type']}): {step['content']}")
    lines.append(f"Answer: {final_answer}")
    return {"prompt": prompt, "completion": "\n".join(lines)}


FORMATS: dict[str, Renderer] = {"tunix_sft": tunix_sft}
