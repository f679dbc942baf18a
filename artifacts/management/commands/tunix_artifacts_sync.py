"""Register a run's files again, as the worker does while it trains.

A finished run is no longer synced by its worker. If its files were touched afterwards (restored
from a backup, moved to another volume, chowned: anything that changes their inode or ctime),
downloads answer 409 `artifact_changed` until they are registered again: this re-hashes what
changed, leaves the rest, and drops rows whose file is gone.
"""

import uuid
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from artifacts.services import artifacts_sync
from runs.models import Run


class Command(BaseCommand):
    help = "Re-register the files of the given runs (or of every run with --all)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("run_ids", nargs="*", help="Run ids.")
        parser.add_argument("--all", action="store_true", help="Every run, oldest first.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"] == bool(options["run_ids"]):
            raise CommandError("Give run ids or --all (not both).")
        if options["all"]:
            ids = list(Run.objects.order_by("created_at").values_list("pk", flat=True))
        else:
            try:
                ids = [uuid.UUID(value) for value in options["run_ids"]]
            except ValueError as exc:
                raise CommandError(f"Not a run id: {exc}") from exc
            missing = set(ids) - set(Run.objects.filter(pk__in=ids).values_list("pk", flat=True))
            if missing:
                raise CommandError(f"No such run: {', '.join(sorted(map(str, missing)))}")
        for run_id in ids:
            result = artifacts_sync(run_id=run_id)
            self.stdout.write(
                f"{run_id}: {result.added} added, {result.updated} re-hashed, "
                f"{result.removed} removed, {result.unchanged} unchanged"
            )
