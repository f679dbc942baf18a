"""`tunixops`: the command line over the Python client.

Exit status: 0 done (or a followed run completed), 1 the followed run failed, 2 it timed out,
130 it was cancelled (or you pressed Ctrl-C), 3 an error (the API's, the network's, a file's),
64 a usage error.
"""

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tunixops_client import __version__
from tunixops_client.client import Client, FollowItem, login
from tunixops_client.config import config_path, normalise_url, read_config, resolve, write_config
from tunixops_client.errors import ApiError, TunixOpsError
from tunixops_client.models import Artifact, LogLine, MetricPoint, Run, RunStatus
from tunixops_client.terminal import Console, human

EXIT_OK = 0
EXIT_ERROR = 3
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130
EXIT_BY_STATUS = {"completed": 0, "failed": 1, "timeout": 2, "cancelled": 130}


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    # argparse exits 2 on bad usage, which `run --follow` uses for a timed-out run.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    common = Parser(add_help=False)
    # SUPPRESS: given before or after the command, a flag is kept, never reset by the other.
    common.add_argument("--url", default=argparse.SUPPRESS, help="server, e.g. http://host:8000")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = Parser(
        prog="tunixops",
        description="Enqueue, follow and steer TunixOps runs.",
        parents=[common],
        epilog="Exit status of a followed run: 0 completed, 1 failed, 2 timeout, 130 cancelled; "
        "3 any other error, 64 bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"tunixops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    p = command("login", "Get an API token with your username and password and save it.")
    p.add_argument("--username", "-u")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )

    command("whoami", "Show who the token belongs to.")

    p = command("recipes", "List recipes and their settings.")
    p.add_argument("name", nargs="?")

    p = command("run", "Enqueue a run and print its id; --follow streams its log.")
    p.add_argument("recipe")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe setting, typed by the recipe (repeatable)",
    )
    p.add_argument("--dataset", help="dataset key (name-version)")
    p.add_argument("--model", help="model id")
    p.add_argument("--name")
    p.add_argument("--priority", type=int)
    p.add_argument("--timeout", type=int, dest="timeout_seconds", help="seconds")
    p.add_argument("--pool", help="the pool of workers that may run it (default: the recipe's)")
    p.add_argument("--devices", type=int, help="GPUs or TPU chips on one host")
    p.add_argument("--follow", "-f", action="store_true")

    p = command("logs", "Print a run's log; -f follows it until the run ends.")
    p.add_argument("run")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--since-seq", type=int, default=0, metavar="N", help="after chunk N")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines (at most 10,000)")

    p = command("status", "Show a run's status.")
    p.add_argument("run")

    p = command("ls", "List runs, newest first.")
    p.add_argument("--status")
    p.add_argument("--recipe")
    p.add_argument("--mine", action="store_true", help="only runs you created")
    p.add_argument("--limit", type=int, default=20)

    p = command("cancel", "Cancel a run.")
    p.add_argument("run")
    p.add_argument("--reason", default="")

    p = command("rerun", "Run a finished run again with the same settings.")
    p.add_argument("run")
    p.add_argument("--follow", "-f", action="store_true")

    p = command("continue", "Continue a finished run from a checkpoint step (or fork it).")
    p.add_argument("run")
    p.add_argument("--step", type=int, help="a committed step (default: the last)")
    p.add_argument("--recipe", help="fork into this recipe (it must start from the run's)")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting that differs (repeatable)",
    )
    p.add_argument("--name")
    p.add_argument("--follow", "-f", action="store_true")

    p = command("artifacts", "List a run's files and checkpoint steps.")
    p.add_argument("run")

    p = command("download", "Download artifacts (resumes, checks sha256).")
    p.add_argument("run")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--artifact", type=int, metavar="ID")
    which.add_argument("--step", type=int, metavar="N", help="every file of checkpoint step N")
    which.add_argument("--all", action="store_true", dest="every")
    p.add_argument("-o", "--output", default=".", metavar="DIR")

    traces = command("traces", "Upload traces.").add_subparsers(
        dest="traces_command", required=True, parser_class=Parser
    )
    p = traces.add_parser("push", help="Upload a JSONL file of traces.", parents=[common])
    p.add_argument("file")
    p.add_argument("--start-line", type=int, default=1, metavar="N", help="resume at line N")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="at most 1,000")

    datasets = command("datasets", "Build and export datasets.").add_subparsers(
        dest="datasets_command", required=True, parser_class=Parser
    )
    p = datasets.add_parser("build", help="Freeze a selection of traces.", parents=[common])
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="meta key=value (repeatable; a repeated key matches any of its values)",
    )
    p.add_argument("--limit", type=int)
    p.add_argument("--random", action="store_true", help="a random sample instead of the newest")
    p.add_argument("--seed", type=int)
    p = datasets.add_parser("export", help="Write a dataset as JSONL.", parents=[common])
    p.add_argument("key")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="a file, or - for stdout")
    p.add_argument("--format", default="tunix_sft")
    return parser


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = console or Console()
    as_json = bool(getattr(args, "json", False))
    try:
        if args.command == "login":
            return cmd_login(args, console, as_json)
        with Client.from_config(getattr(args, "url", None), getattr(args, "token", None)) as api:
            handler: Callable[[Client, argparse.Namespace, Console, bool], int] = COMMANDS[
                args.command
            ]
            return handler(api, args, console, as_json)
    except UsageError as exc:
        console.message(f"tunixops: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.end_live()
        console.message("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        # A local file or directory: -o on a file, a full disk, a permission.
        console.end_live()
        console.message(f"tunixops: {exc}")
        return EXIT_ERROR
    except TunixOpsError as exc:
        console.end_live()
        if as_json and isinstance(exc, ApiError):
            console.data(json.dumps({"error": exc.as_dict()}) + "\n")
        console.message(f"tunixops: {exc}")
        return EXIT_ERROR


def emit(console: Console, value: Any) -> None:
    console.data(json.dumps(value, default=str) + "\n")


# -- commands -----------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace, console: Console, as_json: bool) -> int:
    url = getattr(args, "url", None) or os.environ.get("TUNIXOPS_URL") or read_config().get("url")
    if not url:
        raise UsageError("give the server: tunixops login --url http://host:8000")
    url = normalise_url(url)
    username = args.username or _ask("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    token = login(url, username, password)
    path = write_config(url, token)
    if as_json:
        emit(console, {"url": url, "username": username, "config": str(path)})
    else:
        console.message(f"Logged in to {url} as {username}; token saved in {path}")
    return EXIT_OK


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the username: use --username")
    return input(prompt).strip()


def cmd_whoami(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    me = api.whoami()
    if as_json:
        emit(console, {**me, "url": api.url})
    else:
        console.data(f"{me['username']} at {api.url}\n")
    return EXIT_OK


def cmd_recipes(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    recipes = [api.recipes.get(args.name)] if args.name else api.recipes.list()
    if as_json:
        emit(
            console,
            [
                {
                    "name": r.name,
                    "description": r.description,
                    "config": [vars(k) for k in r.keys.values()],
                }
                for r in recipes
            ],
        )
        return EXIT_OK
    for recipe in recipes:
        console.data(f"{recipe.name}: {recipe.description}\n")
        for key in recipe.keys.values():
            console.data(f"  {key.describe()}\n")
    return EXIT_OK


def parse_pairs(pairs: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} {pair!r}: expected KEY=VALUE")
        out.append((key.strip(), value))
    return out


def cmd_run(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    settings = dict(parse_pairs(args.settings, "--set"))
    run = api.runs.create(
        args.recipe,
        settings=settings,
        dataset=args.dataset,
        model=args.model,
        name=args.name,
        priority=args.priority,
        timeout_seconds=args.timeout_seconds,
        pool=args.pool,
        devices=args.devices,
    )
    return _started(api, run, args, console, as_json)


def cmd_continue(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    run = api.runs.continue_(
        args.run,
        step=args.step,
        recipe=args.recipe,
        settings=dict(parse_pairs(args.settings, "--set")),
        name=args.name,
    )
    return _started(api, run, args, console, as_json)


def _started(
    api: Client, run: Run, args: argparse.Namespace, console: Console, as_json: bool
) -> int:
    if as_json:
        emit(console, {"event": "run", **run.data} if args.follow else run.data)
    else:
        console.data(f"{run.id}\n")
    if not args.follow:
        return EXIT_OK
    # A run this command just queued has no metric the user has seen: all of them, even those
    # recorded before the stream connects (a fast worker logs step 1 within milliseconds).
    return follow(api, run, api.runs.follow(run.id, since_step=0), console, as_json)


def follow(
    api: Client, run: Run, items: Iterator[FollowItem], console: Console, as_json: bool
) -> int:
    """Print a followed run; its terminal status becomes the exit status."""
    max_steps = run.data.get("config", {}).get("max_steps")
    try:
        for item in items:
            if isinstance(item, LogLine):
                if as_json:
                    emit(console, {"event": "log", **vars(item)})
                else:
                    console.data(str(item))
            elif isinstance(item, MetricPoint):
                if as_json:
                    emit(console, {"event": "metric", "step": item.step, "values": item.values})
                else:
                    console.live(_metric_line(item, max_steps))
            elif as_json:
                emit(console, {"event": "status", **_status_fields(item)})
            elif item.terminal:
                console.end_live()
                console.message(_ending(run.id, item, console))
            else:
                console.message(f"[{console.status_word(item.status)}]")
            if isinstance(item, RunStatus) and item.terminal:
                return EXIT_BY_STATUS[item.status]
    except KeyboardInterrupt:
        console.end_live()
        console.message(f"stopped following; the run goes on (tunixops cancel {run.id})")
        return EXIT_INTERRUPTED
    raise TunixOpsError("the log stream ended before the run did")  # pragma: no cover


def _status_fields(status: RunStatus) -> dict[str, Any]:
    return {
        "status": status.status,
        "status_reason": status.status_reason,
        "exit_code": status.exit_code,
        "finished_at": status.finished_at,
    }


def _metric_line(point: MetricPoint, max_steps: Any) -> str:
    step = f"step {point.step}" + (f"/{max_steps}" if isinstance(max_steps, int) else "")
    values = "  ".join(
        f"{name} {value:.4g}" if isinstance(value, float | int) else f"{name} -"
        for name, value in point.values.items()
        if name in ("loss", "perplexity", "learning_rate")
    )
    return f"{step}  {values}".rstrip()


def _ending(run_id: str, status: RunStatus, console: Console) -> str:
    parts = [f"run {run_id} {console.status_word(status.status)}"]
    if status.exit_code is not None:
        parts.append(f"exit code {status.exit_code}")
    if status.status_reason:
        parts.append(status.status_reason)
    return ", ".join(parts)


def cmd_logs(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    if args.tail is not None and args.since_seq:
        raise UsageError("--tail and --since-seq choose different starts: give one")
    since = args.since_seq
    if args.tail is not None:
        snapshot = api.runs.snapshot(args.run, lines=args.tail)
        for line in snapshot["lines"]:
            item = LogLine(int(line["seq"]), str(line["stream"]), str(line["text"]))
            _print_line(console, item, as_json)
        since = int(snapshot["last_seq"])
    if not args.follow:
        for item in api.runs.logs(args.run, since_seq=since):
            _print_line(console, item, as_json)
        return EXIT_OK
    run = api.runs.get(args.run)
    return follow(api, run, api.runs.follow(run.id, since_seq=since), console, as_json)


def _print_line(console: Console, item: LogLine, as_json: bool) -> None:
    if as_json:
        emit(console, {"event": "log", **vars(item)})
    else:
        console.data(str(item))


def cmd_status(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    status = api.runs.status(args.run)
    if as_json:
        emit(console, status.data)
    else:
        console.data(_ending(str(status.data.get("run_id", args.run)), status, console) + "\n")
    return EXIT_OK


def cmd_ls(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    created_by = api.whoami()["username"] if args.mine else None
    runs = api.runs.list(
        status=args.status, recipe=args.recipe, created_by=created_by, limit=args.limit
    )
    if as_json:
        emit(console, [r.data for r in runs])
        return EXIT_OK
    rows = [("ID", "STATUS", "RECIPE", "NAME", "CREATED", "BY")]
    rows += [
        (r.id, r.status, r.recipe, r.name, r.created_at[:19].replace("T", " "), r.created_by or "")
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if row is not rows[0]:
            cells[1] = console.status_word(row[1]) + " " * (widths[1] - len(row[1]))
        console.data("  ".join(cells).rstrip() + "\n")
    return EXIT_OK


def cmd_cancel(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    status = api.runs.cancel(args.run, reason=args.reason)
    if as_json:
        emit(console, status.data)
    else:
        console.data(f"{args.run} {console.status_word(status.status)}\n")
    return EXIT_OK


def cmd_rerun(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    return _started(api, api.runs.rerun(args.run), args, console, as_json)


def cmd_artifacts(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    artifacts = api.artifacts.list(args.run)
    if as_json:
        emit(console, [vars(a) for a in artifacts])
        return EXIT_OK
    for a in artifacts:
        step = "" if a.step is None else f"step {a.step}"
        console.data(f"{a.id:>8}  {human(a.size_bytes):>9}  {step:>10}  {a.name}\n")
    steps = sorted({a.step for a in artifacts if a.step is not None})
    if steps:
        console.message(f"checkpoint steps: {', '.join(map(str, steps))}")
    return EXIT_OK


def cmd_download(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    chosen = api.artifacts.select(
        args.run, artifact_id=args.artifact, step=args.step, every=args.every
    )
    dest = Path(args.output)
    for artifact in chosen:
        bar = console.bar(_short(artifact))
        result = api.artifacts.download(args.run, artifact, dest, progress=bar)
        bar.done()
        if as_json:
            emit(
                console,
                {
                    "artifact": vars(artifact),
                    "path": result.path,
                    "resumed_from": result.resumed_from,
                    "skipped": result.skipped,
                },
            )
        else:
            note = " (already there)" if result.skipped else ""
            if result.resumed_from:
                note = f" (resumed at {human(result.resumed_from)})"
            console.data(f"{result.path}{note}\n")
    if not as_json:
        total = sum(a.size_bytes for a in chosen)
        console.message(f"{len(chosen)} file(s), {human(total)}, sha256 verified")
    return EXIT_OK


def _short(artifact: Artifact) -> str:
    name = artifact.name
    return name if len(name) <= 40 else "..." + name[-37:]


def cmd_traces(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    if args.start_line < 1:
        raise UsageError("--start-line is 1 or more")
    if not 1 <= args.batch_size <= 1000:
        raise UsageError("--batch-size is 1 to 1,000")
    bar = console.bar(f"push {Path(args.file).name}")
    try:
        result = api.traces.push(
            args.file, start_line=args.start_line, batch_size=args.batch_size, progress=bar
        )
    except OSError as exc:
        raise TunixOpsError(f"{args.file}: {exc.strerror or exc}") from exc
    finally:
        bar.done()
    if as_json:
        emit(
            console,
            {"traces": result.traces, "batches": result.batches, "last_line": result.last_line},
        )
    else:
        console.message(
            f"pushed {result.traces} traces in {result.batches} batches "
            f"(through line {result.last_line})"
        )
    return EXIT_OK


def cmd_datasets(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    if args.datasets_command == "build":
        return _dataset_build(api, args, console, as_json)
    return _dataset_export(api, args, console, as_json)


def filter_values(pairs: list[tuple[str, str]]) -> dict[str, list[Any]]:
    """`k=7` matches the string "7" and the number 7, as the trace list's `meta=` does."""
    filters: dict[str, list[Any]] = {}
    for key, text in pairs:
        values = filters.setdefault(key, [])
        for value in _candidates(text):
            if not any(v == value and type(v) is type(value) for v in values):
                values.append(value)
    return filters


def _candidates(text: str) -> list[Any]:
    out: list[Any] = [text]
    if text in ("true", "false"):
        out.append(text == "true")
    else:
        try:
            number = float(text)
        except ValueError:
            return out
        if number.is_integer() and "." not in text and "e" not in text.lower():
            out.append(int(text))
        elif number == number and abs(number) != float("inf"):
            out.append(number)
    return out


def _dataset_build(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    if args.seed is not None and not args.random:
        raise UsageError("--seed goes with --random")
    dataset = api.datasets.build(
        args.name,
        args.version,
        filters=filter_values(parse_pairs(args.filters, "--filter")),
        limit=args.limit,
        selection="random" if args.random else "latest",
        seed=args.seed,
    )
    if as_json:
        emit(console, dataset)
    else:
        console.data(f"{dataset['key']}\n")
        console.message(f"{dataset['trace_count']} traces")
    return EXIT_OK


def _dataset_export(api: Client, args: argparse.Namespace, console: Console, as_json: bool) -> int:
    if args.output == "-":
        written = api.datasets.export(args.key, sys.stdout.buffer, format=args.format)
        sys.stdout.flush()
        return EXIT_OK
    target = Path(args.output)
    part = target.with_name(target.name + ".part")
    bar = console.bar(f"export {args.key}")
    try:
        with part.open("wb") as out:
            written = api.datasets.export(args.key, out, format=args.format, progress=bar)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        bar.done()
    if as_json:
        emit(console, {"key": args.key, "path": str(target), "bytes": written})
    else:
        console.message(f"{target}: {human(written)}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Console, bool], int]] = {
    "whoami": cmd_whoami,
    "recipes": cmd_recipes,
    "run": cmd_run,
    "logs": cmd_logs,
    "status": cmd_status,
    "ls": cmd_ls,
    "cancel": cmd_cancel,
    "rerun": cmd_rerun,
    "continue": cmd_continue,
    "artifacts": cmd_artifacts,
    "download": cmd_download,
    "traces": cmd_traces,
    "datasets": cmd_datasets,
}

__all__ = ["EXIT_BY_STATUS", "build_parser", "config_path", "main", "resolve"]
