"""Delete old finished webhook deliveries: the delivery log grows with every event.

Delivered and given-up deliveries created more than `--days` ago go, in batches; waiting ones
are never touched. Idempotent; `--dry-run` only counts. Run it daily (cron, a Kubernetes
CronJob).
"""

from argparse import ArgumentParser, ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from webhooks.services import deliveries_prune


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError("must be at least 1")
    return number


class Command(BaseCommand):
    help = "Delete delivered and given-up webhook deliveries older than --days."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--days", type=_positive_int, default=30, help="Keep this many days.")
        parser.add_argument("--batch", type=_positive_int, default=1000, help="Rows per DELETE.")
        parser.add_argument("--dry-run", action="store_true", help="Only count.")

    def handle(self, *args: Any, **options: Any) -> None:
        cutoff = timezone.now() - timedelta(days=options["days"])
        count = deliveries_prune(
            older_than=cutoff, batch=options["batch"], dry_run=options["dry_run"]
        )
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{verb} {count} webhook deliveries created before {cutoff:%Y-%m-%d %H:%M}"
        )
