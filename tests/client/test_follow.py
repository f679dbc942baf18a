"""`tunixops run --follow` and `tunixops logs -f` with a real worker running test children."""

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runs.models import LogChunk, Run, RunStatus
from tests.artifacts.servers import Daphne
from tests.client.conftest import Cli, Result, expected_lines
from tests.runs.helpers import status_of, wait_for
from tunixops_client import Client, LogLine, MetricPoint
from tunixops_client import RunStatus as Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def worker(spawn_worker: Any, *args: str) -> None:
    spawn_worker("--poll-interval", "0.1", *args)


@pytest.mark.slow
def test_a_followed_run_prints_every_line_once_and_its_status_becomes_the_exit_status(
    cli: Cli, spawn_worker: Any
) -> None:
    worker(spawn_worker, "--concurrency", "3")
    completed = cli("run", "child", "--set", "lines=2000", "--set", "rate=1000", "--follow")
    assert completed.code == 0, completed.err
    run_id, _, log = completed.out.partition("\n")
    assert log == expected_lines(2000)
    assert f"run {run_id} completed, exit code 0" in completed.err
    assert "\r" not in completed.err + completed.out, "no in-place line without a terminal"

    failed = cli(
        "run", "child", "--set", "lines=3", "--set", "stderr_lines=2", "--set", "exit_code=7",
        "--follow",
    )  # fmt: skip
    assert failed.code == 1
    # The worker reads stdout and stderr concurrently and stores lines as they arrive, so each
    # stream keeps its order but the two may interleave either way round.
    printed = failed.out.partition("\n")[2].splitlines(keepends=True)
    assert "".join(line for line in printed if line.startswith("line ")) == expected_lines(3)
    assert [line for line in printed if not line.startswith("line ")] == ["err 1\n", "err 2\n"]
    assert "failed, exit code 7" in failed.err

    timed_out = cli("run", "child", "--set", "sleep=60", "--timeout", "1", "--follow")
    assert timed_out.code == 2
    assert "timeout" in timed_out.err


@pytest.mark.slow
def test_a_run_cancelled_while_followed_exits_130(cli: Cli, spawn_worker: Any) -> None:
    worker(spawn_worker)
    result: list[Result] = []
    follower = threading.Thread(
        target=lambda: result.append(
            cli("run", "child", "--set", "lines=5", "--set", "sleep=60", "--follow")
        )
    )
    follower.start()
    run = wait_for(lambda: Run.objects.filter(status=RunStatus.RUNNING).first(), timeout=30)
    wait_for(lambda: LogChunk.objects.filter(run=run).exists())
    cancelled = cli("cancel", str(run.pk), "--reason", "enough")
    assert cancelled.code == 0 and "cancel_requested" in cancelled.out
    follower.join(60)
    assert not follower.is_alive()
    assert result[0].code == 130
    assert result[0].out.partition("\n")[2].startswith(expected_lines(5))
    assert "cancelled" in result[0].err and "enough" in result[0].err


@pytest.mark.slow
def test_following_survives_a_web_server_restart_without_repeating_or_skipping_a_line(
    cli: Cli, spawn_worker: Any, process_env: dict[str, str], tmp_path: Path, token: str
) -> None:
    env = {**process_env, "TUNIX_SSE_HEARTBEAT_SECONDS": "0.5", "TUNIX_SSE_POLL_SECONDS": "0.1"}
    web = Daphne(env=env, workdir=tmp_path).start()
    try:
        created = cli(
            "run", "child", "--set", "lines=400", "--set", "rate=50", "--url", web.base_url
        )
        run_id = created.out.strip()
        worker(spawn_worker)
        result: list[Result] = []
        follower = threading.Thread(
            target=lambda: result.append(cli("logs", run_id, "-f", "--url", web.base_url))
        )
        follower.start()
        wait_for(lambda: LogChunk.objects.filter(run_id=run_id).count() >= 20, timeout=30)
        os.kill(web.pid, signal.SIGKILL)
        web.proc.wait(10)  # type: ignore[union-attr]
        time.sleep(1.0)  # lines go on being written while no server answers
        assert status_of(Run.objects.get(pk=run_id)) == RunStatus.RUNNING
        web = Daphne(env=env, workdir=tmp_path, port=web.port).start()
        follower.join(60)
        assert not follower.is_alive()
    finally:
        web.stop()
    assert result[0].code == 0, result[0].err
    assert result[0].out == expected_lines(400)


@pytest.mark.slow
def test_the_python_api_yields_lines_metric_points_and_the_final_status(
    remote: Client, spawn_worker: Any
) -> None:
    worker(spawn_worker)
    run = remote.runs.create("metric_child", config={"steps": 5, "pause": 0.2})
    items = list(remote.runs.follow(run.id))
    points = [i for i in items if isinstance(i, MetricPoint)]
    assert [p.step for p in points] == [1, 2, 3, 4, 5]
    assert all(isinstance(p.values["loss"], float) for p in points)
    lines = [i.text for i in items if isinstance(i, LogLine)]
    assert sum(line.startswith("tunixops.metric ") for line in lines) >= 5
    assert isinstance(items[-1], Status) and items[-1].status == "completed"
    # Following a finished run replays its log and ends at once.
    replay = [i for i in remote.runs.follow(run.id) if isinstance(i, LogLine)]
    assert [i.text for i in replay] == lines
    assert [p.step for p in remote.runs.metrics(run.id)] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_on_a_terminal_the_step_and_loss_update_in_place_and_json_has_every_event(
    cli: Cli, spawn_worker: Any
) -> None:
    worker(spawn_worker)
    tty = cli("run", "metric_child", "--set", "steps=4", "--set", "pause=0.3", "--follow", tty=True)
    assert tty.code == 0, tty.err
    assert "\r\x1b[Kstep 4  loss" in tty.err
    assert "\x1b[32mcompleted\x1b[0m" in tty.err
    as_json = cli("run", "metric_child", "--set", "steps=3", "--set", "pause=0.3", "--follow",
                  "--json")  # fmt: skip
    events = as_json.json_lines()
    assert events[0]["event"] == "run"
    assert [e["step"] for e in events if e["event"] == "metric"] == [1, 2, 3]
    assert events[-1] == {
        "event": "status", "status": "completed", "status_reason": events[-1]["status_reason"],
        "exit_code": 0, "finished_at": events[-1]["finished_at"],
    }  # fmt: skip
    assert "\r" not in as_json.err
