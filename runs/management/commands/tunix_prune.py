"""Delete what old finished runs no longer need: log chunks, old checkpoints, dead worker rows.

Log chunks and checkpoints grow without bound; this is the one way they shrink. Cron it (or set
TUNIX_RETENTION_HOUR and let a worker run it daily). It deletes in bounded batches, each its own
short transaction, so it can run beside the web process and the workers; it is idempotent, and
`--dry-run` only counts. Pending, running and pinned runs are never touched. See
runs/retention.py for exactly what goes.
"""

from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import BaseCommand

from runs.retention import DEFAULT_BATCH_SIZE, options_from_settings, prune


def _days(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ArgumentTypeError("must be a number of days") from None
    if not 0 <= number <= 100_000:
        raise ArgumentTypeError("must be between 0 and 100000 days")
    return number


def _count(low: int, high: int) -> Any:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ArgumentTypeError("must be a whole number") from None
        if not low <= number <= high:
            raise ArgumentTypeError(f"must be between {low} and {high}")
        return number

    return parse


class Command(BaseCommand):
    help = "Prune log chunks and checkpoints of old finished runs, and dead worker rows."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            type=_days,
            metavar="DAYS",
            help="Runs finished more than DAYS ago (default TUNIX_RETENTION_DAYS; unset: off).",
        )
        parser.add_argument(
            "--keep-last",
            type=_count(0, 10_000_000),
            metavar="N",
            help="Keep the N most recently finished runs whatever their age "
            "(default TUNIX_RETENTION_KEEP_LAST).",
        )
        parser.add_argument(
            "--logs", action="store_true", help="Prune log chunks (tails are kept)."
        )
        parser.add_argument(
            "--artifacts",
            nargs="?",
            const="last",
            choices=("last", "all"),
            help="Prune checkpoints: all but each run's last committed step, or with =all "
            "every file and artifact row. Without --logs or --artifacts, what "
            "TUNIX_RETENTION_LOGS and TUNIX_RETENTION_ARTIFACTS say.",
        )
        parser.add_argument(
            "--batch-size",
            type=_count(1, 100_000),
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows per DELETE statement and transaction (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        overrides: dict[str, Any] = {
            "batch_size": options["batch_size"],
            "dry_run": options["dry_run"],
        }
        if options["older_than"] is not None:
            overrides["older_than_days"] = options["older_than"]
        if options["keep_last"] is not None:
            overrides["keep_last"] = options["keep_last"]
        if options["logs"] or options["artifacts"]:
            overrides["logs"] = options["logs"]
            overrides["artifacts"] = options["artifacts"]
        report = prune(options_from_settings(**overrides), trigger="command")
        for line in report.lines():
            self.stdout.write(line)
