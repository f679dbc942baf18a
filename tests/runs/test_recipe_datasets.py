"""The Tunix recipes' one dataset reader (runs/entrypoints/dataset.py) and grpo's answers on top
of it: each bad file or line is refused with the line it is on, never half-read."""

import json
from pathlib import Path

import pytest

from runs.entrypoints.dataset import DatasetError, read_examples
from runs.entrypoints.grpo_data import read_records


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "dataset.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(prompt: str, completion: str) -> str:
    return json.dumps({"prompt": prompt, "completion": completion})


def test_every_non_blank_line_is_an_example_with_its_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, row("2+2?", "4"), "", "   ", row("", "free text \u00e9"))
    examples = read_examples(path)
    assert [(e.lineno, e.prompt, e.completion) for e in examples] == [
        (1, "2+2?", "4"),
        (4, "", "free text \u00e9"),
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ((row("a", "b"), "{not json"), "dataset line 2: not valid JSON"),
        (("[" * 100_000,), "dataset line 1: not valid JSON"),
        (
            (json.dumps({"prompt": "a"}),),
            "dataset line 1: expected string 'prompt' and 'completion'",
        ),
        ((json.dumps({"prompt": 1, "completion": "b"}),), "expected string 'prompt'"),
        ((json.dumps(["a", "b"]),), "expected string 'prompt' and 'completion'"),
        (("", "  "), "has no record"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(
    tmp_path: Path, lines: tuple[str, ...], message: str
) -> None:
    with pytest.raises(DatasetError, match=message.replace("[", r"\[")):
        read_examples(write(tmp_path, *lines))


def test_an_unreadable_or_non_utf8_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read dataset"):
        read_examples(tmp_path / "missing.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DatasetError, match="cannot read dataset"):
        read_examples(latin)


def test_grpo_takes_the_answer_after_the_last_answer_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        row("What is 2 + 3?", "Two plus three.\nAnswer: 4\nno, wait\nAnswer: 5 "),
        row("What is 1 + 1?", "Answer: 2"),
    )
    assert read_records(path) == [
        {"question": "What is 2 + 3?", "answer": "5"},
        {"question": "What is 1 + 1?", "answer": "2"},
    ]


def test_grpo_refuses_a_completion_without_an_answer_naming_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, row("q", "Answer: 1"), row("q2", "no answer here"))
    with pytest.raises(DatasetError, match="dataset line 2: the completion has no 'Answer: ' line"):
        read_records(path)
