"""Structured worker logs: one JSON object per line, the run id on every line about a run."""

import json
import logging
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from runs.models import RunStatus
from tests.conftest import REPO
from tests.runs.helpers import enqueue_child, status_of
from tunixops.logformat import JsonFormatter


def run_worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "tunix_worker", "--once", *args],
        env={**env, "LOG_LEVEL": "INFO"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "env"), [(("--log-format", "json"), {}), ((), {"TUNIX_LOG_FORMAT": "json"})]
)
def test_a_json_worker_names_the_run_on_every_line_about_it(
    alice: Any, process_env: dict[str, str], args: tuple[str, ...], env: dict[str, str]
) -> None:
    good = enqueue_child(alice, lines=2)
    bad = enqueue_child(alice, exit_code=4)
    done = run_worker({**process_env, **env}, *args)
    assert done.returncode == 0, done.stderr
    assert status_of(good) == RunStatus.COMPLETED and status_of(bad) == RunStatus.FAILED
    lines = json_lines(done.stderr)
    assert {"time", "level", "logger", "message", "pid"} <= set(lines[0])
    for run in (good, bad):
        about = [line for line in lines if str(run.pk) in line["message"]]
        assert any("claimed by" in line["message"] for line in about)
        assert any("finished as" in line["message"] for line in about)
        assert all(line["run_id"] == str(run.pk) for line in about)
    # Lines about no run carry no run id.
    assert all("run_id" not in line for line in lines if "started (concurrency" in line["message"])


@pytest.mark.django_db(transaction=True)
def test_plain_is_the_default(alice: Any, process_env: dict[str, str]) -> None:
    run = enqueue_child(alice, lines=1)
    done = run_worker(process_env)
    assert done.returncode == 0, done.stderr
    claimed = [line for line in done.stderr.splitlines() if "claimed by" in line]
    assert claimed and str(run.pk) in claimed[0] and not claimed[0].startswith("{")


def test_an_unknown_log_format_is_refused(process_env: dict[str, str]) -> None:
    done = run_worker({**process_env, "TUNIX_LOG_FORMAT": "xml"})
    assert done.returncode != 0
    assert "TUNIX_LOG_FORMAT='xml': must be one of plain, json" in done.stderr
    bad_flag = run_worker(process_env, "--log-format", "xml")
    assert bad_flag.returncode != 0 and "invalid choice: 'xml'" in bad_flag.stderr


def test_lines_from_a_runs_threads_carry_its_id_and_their_traceback() -> None:
    run_id = uuid.uuid4()
    records: list[logging.LogRecord] = []

    def log_from_thread() -> None:
        try:
            raise ValueError("disk full")
        except ValueError:
            records.append(
                logging.LogRecord(
                    "runs.execution.logsink",
                    logging.ERROR,
                    __file__,
                    1,
                    "write failed",
                    None,
                    sys.exc_info(),
                )
            )

    thread = threading.Thread(target=log_from_thread, name=f"logsink-{run_id}")
    thread.start()
    thread.join()
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["run_id"] == str(run_id)
    assert line["level"] == "ERROR" and line["message"] == "write failed"
    assert "ValueError: disk full" in line["exc"]
    extra = logging.LogRecord("w", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    extra.run_id = "given"
    assert json.loads(JsonFormatter().format(extra))["run_id"] == "given"
