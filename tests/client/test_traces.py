"""`tunixops traces push` and `tunixops datasets build / export` against a live daphne."""

import json
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import Cli
from traces.models import Dataset, Trace
from tunixops_client import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def trace(i: int, **meta: Any) -> dict[str, Any]:
    return {
        "prompt": f"What is {i} + {i}?",
        "steps": [{"i": 0, "type": "thought", "content": f"add {i} twice"}],
        "final_answer": str(2 * i),
        "meta": {"n": i, **meta},
    }


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_five_thousand_traces_go_up_in_batches_of_a_thousand(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "traces.jsonl", [trace(i) for i in range(5000)])
    result = cli("traces", "push", str(path), "--json")
    assert result.code == 0, result.err
    assert result.json_lines() == [{"traces": 5000, "batches": 5, "last_line": 5000}]
    assert Trace.objects.count() == 5000
    assert sorted(Trace.objects.values_list("meta__n", flat=True)) == list(range(5000))


def test_a_push_that_stops_at_a_bad_line_resumes_there_without_duplicates(
    cli: Cli, tmp_path: Path
) -> None:
    rows: list[Any] = [trace(i) for i in range(1, 2501)]
    rows[1499] = "{not json"  # line 1500
    path = write_jsonl(tmp_path / "traces.jsonl", rows)
    stopped = cli("traces", "push", str(path), "--batch-size", "400")
    assert stopped.code == 3
    assert "line 1500: not valid JSON" in stopped.err
    assert "resume with: --start-line 1500" in stopped.err
    assert Trace.objects.count() == 1499, "every line before the bad one is on the server"

    rows[1499] = trace(1500)
    write_jsonl(path, rows)
    resumed = cli("traces", "push", str(path), "--start-line", "1500")
    assert resumed.code == 0, resumed.err
    assert "pushed 1001 traces in 2 batches (through line 2500)" in resumed.err
    assert sorted(Trace.objects.values_list("meta__n", flat=True)) == list(range(1, 2501))


def test_a_trace_the_server_refuses_is_named_by_its_line(cli: Cli, tmp_path: Path) -> None:
    bad = trace(3)
    bad["prompt"] = ""
    path = write_jsonl(tmp_path / "t.jsonl", [trace(1), "", trace(2), bad])
    result = cli("traces", "push", str(path))
    assert result.code == 3
    assert "line 4: prompt: " in result.err
    assert "resume with: --start-line 1" in result.err
    assert Trace.objects.count() == 0, "a batch is all or none"
    not_object = write_jsonl(tmp_path / "u.jsonl", [trace(1), [1, 2]])
    assert "line 2: not a JSON object" in cli("traces", "push", str(not_object)).err


def test_a_batch_over_the_body_limit_is_split(remote: Client, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [trace(i) for i in range(30)])
    result = remote.traces.push(path, max_batch_bytes=2000)
    assert result.traces == 30 and result.batches > 1
    assert Trace.objects.count() == 30


def test_push_shows_progress_on_a_terminal_only(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [trace(i) for i in range(250)])
    shown = cli("traces", "push", str(path), tty=True)
    assert shown.code == 0 and "push t.jsonl [" in shown.err and "100.0%" in shown.err
    plain = cli("traces", "push", str(path))
    assert plain.err == "pushed 250 traces in 1 batches (through line 250)\n"


def test_push_usage_errors(cli: Cli, tmp_path: Path) -> None:
    assert cli("traces", "push", str(tmp_path / "missing.jsonl")).code == 3
    assert cli("traces", "push", "x", "--batch-size", "1001").code == 64
    assert cli("traces", "push", "x", "--start-line", "0").code == 64


def test_datasets_build_with_filters_and_export_to_a_file(
    cli: Cli, tmp_path: Path, remote: Client
) -> None:
    rows = [trace(i, source="gsm8k" if i % 2 else "other", level=i % 3) for i in range(20)]
    remote.traces.push(write_jsonl(tmp_path / "t.jsonl", rows))
    built = cli(
        "datasets", "build", "gsm", "v1", "--filter", "source=gsm8k", "--filter", "level=1",
        "--filter", "level=2", "--random", "--seed", "7", "--limit", "4",
    )  # fmt: skip
    assert built.code == 0, built.err
    assert built.out == "gsm-v1\n" and "4 traces" in built.err
    dataset = Dataset.objects.get(key="gsm-v1")
    assert dataset.selection == "random" and dataset.seed == 7 and dataset.trace_count == 4

    out = tmp_path / "gsm-v1.jsonl"
    exported = cli("datasets", "export", "gsm-v1", "-o", str(out))
    assert exported.code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and set(lines[0]) == {"prompt", "completion"}
    assert not Path(f"{out}.part").exists()

    taken = cli("datasets", "build", "gsm", "v1", "--json")
    assert taken.code == 3 and taken.json_lines()[0]["error"]["status"] == 409
    missing = cli("datasets", "export", "nope-v1", "-o", str(tmp_path / "nope.jsonl"))
    assert missing.code == 3 and not (tmp_path / "nope.jsonl").exists()
    assert not (tmp_path / "nope.jsonl.part").exists()
    assert cli("datasets", "build", "a", "b", "--seed", "1").code == 64
