"""Run the TunixOps worker: claim pending runs and execute them as child processes.

Start as many as you like, on as many hosts as share the database. The first SIGTERM or Ctrl-C
stops claiming and terminates running children (their runs are retried while attempts remain);
a second one exits at once.
"""

from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.core.management.base import BaseCommand

from runs.worker import Worker


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError("must be at least 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ArgumentTypeError("must be greater than 0")
    return number


class Command(BaseCommand):
    help = "Claim pending runs and execute them."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--concurrency", type=_positive_int, default=1, help="Runs at once.")
        parser.add_argument(
            "--once", action="store_true", help="Exit as soon as the queue is empty and idle."
        )
        parser.add_argument("--max-runs", type=_positive_int, help="Exit after this many runs.")
        parser.add_argument("--worker-id", help="Name recorded on claimed runs (host:pid).")
        parser.add_argument(
            "--poll-interval",
            type=_positive_float,
            help="Seconds between queue polls when no notification arrives.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Worker(
            worker_id=options["worker_id"],
            concurrency=options["concurrency"],
            once=options["once"],
            max_runs=options["max_runs"],
            poll_interval=options["poll_interval"],
        )
        worker.install_signal_handlers()
        started = worker.run()
        self.stdout.write(f"worker {worker.worker_id}: {started} run(s) started")
