"""The `tunixops` commands that need no worker, against a real daphne."""

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from runs.models import Run, RunStatus
from tests.client.conftest import Cli
from tests.sse.conftest import Server
from tunixops_client import Client, ConfigurationError, Conflict, InvalidInput, NotFound
from tunixops_client.config import read_config, resolve, write_config

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("child_recipes")]


def test_run_prints_the_id_and_types_each_setting_by_the_recipe(cli: Cli, alice: Any) -> None:
    # A priority other than 0 is an operator's permission.
    alice.user_permissions.add(Permission.objects.get(codename="set_run_priority"))
    result = cli(
        "run", "child",
        "--set", "lines=3", "--set", "rate=2.5", "--set", "ignore_sigterm=true",
        "--set", "partial=12", "--name", "typed", "--priority", "5", "--timeout", "60",
    )  # fmt: skip
    assert result.code == 0, result.err
    run = Run.objects.get(pk=result.out.strip())
    assert run.config["lines"] == 3 and run.config["rate"] == 2.5
    assert run.config["ignore_sigterm"] is True and run.config["partial"] == "12"
    assert (run.name, run.priority, run.timeout_seconds) == ("typed", 5, 60)
    assert run.created_by == alice and run.status == RunStatus.PENDING


def test_a_priority_without_the_permission_is_refused_naming_it(cli: Cli) -> None:
    result = cli("run", "child", "--priority", "5")
    assert result.code == 3
    assert "priority: Only operators (runs.set_run_priority permission)" in result.err
    assert "HTTP 403" in result.err
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lines=many", "config.lines: 'many' is not an integer"),
        ("rate=fast", "config.rate: 'fast' is not a number"),
        ("ignore_sigterm=maybe", "config.ignore_sigterm: 'maybe' is not a boolean"),
        ("colour=red", "config.colour: unknown key for recipe 'child' (allowed: lines, rate"),
        ("lines=-1", "config.lines: must be >= 0"),
    ],
)
def test_a_bad_setting_is_refused_with_the_field_named(
    cli: Cli, setting: str, message: str
) -> None:
    result = cli("run", "child", "--set", setting)
    assert result.code == 3
    assert message in result.err
    assert not Run.objects.exists()


def test_an_unknown_recipe_names_the_ones_there_are(cli: Cli) -> None:
    result = cli("run", "nope", "--set", "a=1")
    assert result.code == 3
    assert "recipe: unknown recipe 'nope'" in result.err and "tiny_sft" in result.err
    # Without settings the server itself refuses it, with the same field.
    assert "recipe: unknown recipe 'nope'" in cli("run", "nope").err


def test_a_setting_without_an_equals_sign_is_a_usage_error(cli: Cli) -> None:
    result = cli("run", "child", "--set", "lines")
    assert result.code == 64
    assert "expected KEY=VALUE" in result.err


def test_bad_usage_exits_64_not_2_which_means_timeout(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli("download", "some-run")
    assert exit_.value.code == 64


def test_json_output_of_run_status_cancel_and_errors(cli: Cli) -> None:
    created = cli("--json", "run", "child").json_lines()[0]
    assert created["status"] == "pending" and created["recipe"] == "child"
    status = cli("status", created["id"], "--json").json_lines()[0]
    assert status["run_id"] == created["id"] and status["status"] == "pending"
    cancelled = cli("cancel", created["id"], "--reason", "no need", "--json").json_lines()[0]
    assert cancelled["status"] == "cancelled"
    assert cancelled["status_reason"] == "cancelled by alice: no need"
    again = cli("cancel", created["id"], "--json")
    assert again.code == 0
    refused = cli("rerun", "0" * 8 + "-0000-4000-8000-" + "0" * 12, "--json")
    assert refused.code == 3
    assert refused.json_lines() == [
        {"error": {"status": 404, "code": "not_found", "message": "Not found."}}
    ]


def test_status_and_cancel_in_plain_text(cli: Cli, make_run: Any) -> None:
    run = make_run(recipe="child", config={})
    assert cli("status", str(run.pk)).out == f"run {run.pk} pending\n"
    assert cli("cancel", str(run.pk)).out == f"{run.pk} cancelled\n"
    done = make_run(status=RunStatus.COMPLETED, exit_code=0)
    refused = cli("cancel", str(done.pk))
    assert refused.code == 3
    assert "The run is completed; it cannot become cancelled. (illegal_transition, HTTP 409)" in (
        refused.err
    )


def test_rerun_copies_a_finished_run_and_refuses_a_pending_one(
    cli: Cli, make_run: Any, remote: Client
) -> None:
    done = make_run(status=RunStatus.FAILED, recipe="child", config={"lines": 2}, name="n")
    result = cli("rerun", str(done.pk))
    assert result.code == 0
    copy = Run.objects.get(pk=result.out.strip())
    assert copy.requeued_from_id == done.pk and copy.config == {"lines": 2}
    with pytest.raises(Conflict) as refused:
        remote.runs.rerun(str(copy.pk))
    assert refused.value.code == "illegal_transition" and refused.value.status == 409


def test_continue_starts_from_a_step_with_changed_settings(
    cli: Cli, make_run: Any, artifact_root: Any
) -> None:
    from artifacts.services import artifacts_sync

    done = make_run(status=RunStatus.COMPLETED, recipe="child", config={"lines": 2})
    for step in (5, 10):
        step_dir = artifact_root / str(done.pk) / "checkpoints" / str(step)
        step_dir.mkdir(parents=True)
        (step_dir / "commit_success.txt").write_text("ok")
    artifacts_sync(run_id=done.pk)
    result = cli("continue", str(done.pk), "--step", "5", "--set", "lines=7", "--name", "again")
    assert result.code == 0, result.err
    child = Run.objects.get(pk=result.out.strip())
    assert (child.continued_from_id, child.continued_from_step) == (done.pk, 5)
    assert (child.config, child.name) == ({"lines": 7}, "again")
    missing = cli("continue", str(done.pk), "--step", "7")
    assert missing.code == 3 and "step" in missing.err


def test_run_takes_a_pool_and_devices(cli: Cli) -> None:
    result = cli("run", "child", "--pool", "gpu-a100", "--devices", "2")
    assert result.code == 0, result.err
    run = Run.objects.get(pk=result.out.strip())
    assert (run.pool, run.devices) == ("gpu-a100", 2)


def test_ls_filters_by_status_recipe_and_mine(
    cli: Cli, make_run: Any, bob: Any, alice: Any
) -> None:
    mine = make_run(recipe="child", config={}, name="mine")
    theirs = make_run(recipe="child", config={}, created_by=bob, name="theirs")
    done = make_run(status=RunStatus.COMPLETED, name="done")
    everything = cli("ls").out
    assert everything.splitlines()[0].split() == ["ID", "STATUS", "RECIPE", "NAME", "CREATED", "BY"]
    assert all(str(r.pk) in everything for r in (mine, theirs, done))
    assert [
        r["id"] for r in cli("ls", "--mine", "--recipe", "child", "--json").json_lines()[0]
    ] == [str(mine.pk)]
    completed = cli("ls", "--status", "completed", "--json").json_lines()[0]
    assert [r["id"] for r in completed] == [str(done.pk)]
    assert len(cli("ls", "--limit", "2", "--json").json_lines()[0]) == 2


def test_ls_pages_through_more_than_a_hundred_runs(remote: Client, make_run: Any) -> None:
    Run.objects.bulk_create(
        [Run(recipe="child", config={}, timeout_seconds=60, name=f"r{i}") for i in range(130)]
    )
    assert len(remote.runs.list(limit=125)) == 125
    assert len(remote.runs.list(limit=500)) == 130


def test_recipes_lists_keys_with_types_and_bounds(cli: Cli) -> None:
    text = cli("recipes", "tiny_sft").out
    assert "  max_steps: int 1..1e+06 (default 50)" in text
    listed = cli("recipes", "--json").json_lines()[0]
    assert {"child", "tiny_sft", "peft"} <= {r["name"] for r in listed}


def test_whoami_and_a_wrong_token(cli: Cli, server: Server) -> None:
    assert cli("whoami").out == f"alice at {server.url}\n"
    result = cli("whoami", "--token", "not-a-token")
    assert result.code == 3
    assert "Invalid token. (authentication_failed, HTTP 401)" in result.err


def test_an_unreachable_server_is_an_error_not_a_traceback(cli: Cli) -> None:
    result = cli("status", "x", "--url", "http://127.0.0.1:1")
    assert result.code == 3
    assert result.err.startswith("tunixops: GET http://127.0.0.1:1/api/tunix/runs/x/status")


def test_a_run_id_that_is_not_an_id_never_reaches_a_url(cli: Cli) -> None:
    result = cli("status", "../../admin")
    assert result.code == 3
    assert "run_id: not a run id: '../../admin'" in result.err


# -- login and configuration --------------------------------------------------------------------


def test_login_saves_a_token_in_a_file_only_the_user_can_read(
    cli: Cli, server: Server, alice: Any, isolated_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUNIXOPS_TOKEN")
    monkeypatch.delenv("TUNIXOPS_URL")
    monkeypatch.setattr("sys.stdin", _Stdin("alice-password-1\n"))
    result = cli("login", "--url", server.url + "/", "--username", "alice", "--password-stdin")
    assert result.code == 0, result.err
    assert f"Logged in to {server.url} as alice" in result.err
    assert stat.S_IMODE(isolated_config.stat().st_mode) == 0o600
    assert stat.S_IMODE(isolated_config.parent.stat().st_mode) == 0o700
    saved = json.loads(isolated_config.read_text())
    assert saved["url"] == server.url and len(saved["token"]) == 40
    # The saved server and token are used from now on.
    assert cli("whoami").out == f"alice at {server.url}\n"


def test_login_with_a_wrong_password_saves_nothing(
    cli: Cli, server: Server, alice: Any, isolated_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin("wrong\n"))
    result = cli("login", "--username", "alice", "--password-stdin")
    assert result.code == 3
    assert "(invalid_credentials, HTTP 400)" in result.err
    assert not isolated_config.exists()


def test_login_without_a_terminal_asks_for_password_stdin(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin(""))
    assert "--password-stdin" in cli("login", "--username", "alice").err
    assert "--username" in cli("login").err


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_config_file_others_can_read_is_refused(isolated_config: Path, mode: int) -> None:
    write_config("http://example.test", "secret")
    os.chmod(isolated_config, mode)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        resolve()


def test_a_symlinked_or_malformed_config_file_is_refused(
    isolated_config: Path, tmp_path: Path
) -> None:
    isolated_config.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"url": "http://x", "token": "t"}')
    os.chmod(elsewhere, 0o600)
    isolated_config.symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_config()
    isolated_config.unlink()
    isolated_config.write_text("[1, 2]")
    os.chmod(isolated_config, 0o600)
    with pytest.raises(ConfigurationError, match="JSON object"):
        read_config()
    isolated_config.write_text("{nope")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        read_config()


def test_flags_win_over_the_environment_which_wins_over_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_config("http://file.test", "file-token")
    assert resolve() == resolve(None, None)
    assert (resolve().url, resolve().token) == ("http://file.test", "file-token")
    monkeypatch.setenv("TUNIXOPS_URL", "http://env.test/")
    monkeypatch.setenv("TUNIXOPS_TOKEN", "env-token")
    assert (resolve().url, resolve().token) == ("http://env.test", "env-token")
    flagged = resolve("https://flag.test", "flag-token")
    assert (flagged.url, flagged.token) == ("https://flag.test", "flag-token")
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        resolve("ftp://x", "t")


def test_no_server_or_token_says_how_to_give_one() -> None:
    with pytest.raises(ConfigurationError, match="tunixops login --url"):
        resolve()
    with pytest.raises(ConfigurationError, match="TUNIXOPS_TOKEN"):
        resolve("http://x")


def test_typed_errors_carry_the_api_code_and_fields(remote: Client) -> None:
    with pytest.raises(InvalidInput) as invalid:
        remote.runs.create("child", config={"lines": "3"})
    assert invalid.value.status == 400 and invalid.value.code == "invalid"
    assert invalid.value.fields == {"config.lines": ["must be of type int"]}
    with pytest.raises(NotFound) as missing:
        remote.datasets.get("nothing-v1")
    assert missing.value.code == "not_found"


class _Stdin:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self.lines.pop(0) if self.lines else ""

    def isatty(self) -> bool:
        return False
