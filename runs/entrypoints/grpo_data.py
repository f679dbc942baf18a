"""GRPO prompts with verifiable answers, for `tunix.cli.grpo_main`'s `data_module` hook.

Tunix calls `create_dataset(**data_config)` (tunix/cli/utils/data.py `get_dataset_from_module`)
and, with `apply_chat_template_to_dataset`, turns each record's `prompt` messages into the
`prompts` text the model sees through the tokenizer's chat template. The other fields reach the
reward functions as keyword arguments (runs/entrypoints/grpo_rewards.py reads `answer`).

`path` is the run's dataset in TunixOps' `tunix_sft` export (one `{"prompt", "completion"}` per
line): the prompt is the question and the answer is what follows the completion's last
`Answer: ` (traces/formats.py writes it there). Without a path, built-in arithmetic questions.
"""

import sys
from pathlib import Path
from typing import Any

from runs.entrypoints.dataset import DatasetError, read_examples

ANSWER_MARKER = "\nAnswer: "


def builtin_records() -> list[dict[str, str]]:
    return [
        {"question": f"What is {a} + {b}?", "answer": str(a + b)}
        for a in range(2, 12)
        for b in range(1, 4)
    ]


def read_records(path: Path) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    for example in read_examples(path):
        _, marker, answer = ("\n" + example.completion).rpartition(ANSWER_MARKER)
        if not marker:
            raise DatasetError(
                f"dataset line {example.lineno}: the completion has no 'Answer: ' line"
            )
        records.append({"question": example.prompt, "answer": answer.strip()})
    return records


def create_dataset(path: str = "", **_: Any) -> Any:
    import grain

    records = read_records(Path(path)) if path else builtin_records()
    source = f"dataset {path}" if path else "built-in arithmetic questions"
    print(f"grpo: {len(records)} prompts with answers from {source}", file=sys.stdout, flush=True)
    return grain.MapDataset.source(
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "question": r["question"],
                "answer": r["answer"],
            }
            for r in records
        ]
    )
