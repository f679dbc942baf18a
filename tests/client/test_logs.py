"""`tunixops logs` without following: the whole log, the tail, or after a seq."""

from typing import Any

import pytest

from runs.models import RunStatus
from tests.client.conftest import Cli
from tests.sse.conftest import append
from tunixops_client import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


@pytest.fixture
def finished(make_run: Any) -> Any:
    run = make_run(status=RunStatus.COMPLETED, exit_code=0)
    append(run.pk, "one\ntwo\n", "three\n")
    append(run.pk, "oops\n", stream="stderr")
    append(run.pk, *(f"n{i}\n" for i in range(1, 301)))
    append(run.pk, "no newline at the end")
    return run


def test_logs_prints_the_whole_log_once(cli: Cli, finished: Any) -> None:
    result = cli("logs", str(finished.pk))
    assert result.code == 0
    numbered = "".join(f"n{i}\n" for i in range(1, 301))
    assert result.out == "one\ntwo\nthree\noops\n" + numbered + "no newline at the end"


def test_tail_prints_the_last_lines_and_since_seq_starts_after_a_chunk(
    cli: Cli, finished: Any
) -> None:
    assert cli("logs", str(finished.pk), "--tail", "3").out == "n299\nn300\nno newline at the end\n"
    assert cli("logs", str(finished.pk), "--since-seq", "302").out == (
        "n300\nno newline at the end"
    )
    lines = cli("logs", str(finished.pk), "--since-seq", "2", "--json").json_lines()
    assert lines[0] == {"event": "log", "seq": 3, "stream": "stderr", "text": "oops",
                        "complete": True}  # fmt: skip
    assert lines[-1]["complete"] is False
    assert cli("logs", str(finished.pk), "--since-seq", "304").out == ""
    usage = cli("logs", str(finished.pk), "--tail", "3", "--since-seq", "2")
    assert usage.code == 64


def test_logs_of_a_running_run_stop_at_what_is_there_now(
    cli: Cli, make_run: Any, remote: Client
) -> None:
    run = make_run(status=RunStatus.RUNNING)
    append(run.pk, "a\n", "b\n")
    assert cli("logs", str(run.pk)).out == "a\nb\n"
    assert [line.text for line in remote.runs.logs(str(run.pk), since_seq=1)] == ["b"]
    quiet = make_run(status=RunStatus.RUNNING)
    assert cli("logs", str(quiet.pk)).out == ""


def test_logs_of_an_unknown_run_is_a_404(cli: Cli) -> None:
    result = cli("logs", "0" * 8 + "-0000-4000-8000-" + "0" * 12, "-f")
    assert result.code == 3
    assert "(not_found, HTTP 404)" in result.err
