"""Run the TunixOps worker: claim pending runs and execute them as child processes.

Start as many as you like, on as many hosts as share the database. The first SIGTERM or Ctrl-C
stops claiming and terminates running children (their runs are retried while attempts remain);
a second one exits at once.
"""

from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from runs.worker import Worker
from tunixops import logformat, metrics


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError("must be at least 1")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ArgumentTypeError("must be a port number (0 picks a free one)")
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
        parser.add_argument(
            "--metrics-port",
            type=_port,
            default=settings.TUNIX_WORKER_METRICS_PORT,
            help="Serve Prometheus metrics on this port (default TUNIX_WORKER_METRICS_PORT).",
        )
        parser.add_argument(
            "--metrics-addr",
            default=settings.TUNIX_WORKER_METRICS_ADDR,
            help="Address the metrics port listens on (default TUNIX_WORKER_METRICS_ADDR).",
        )
        parser.add_argument(
            "--log-format",
            choices=logformat.FORMATS,
            help="plain lines or one JSON object per line (default TUNIX_LOG_FORMAT).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["log_format"]:
            logformat.use_format(options["log_format"])
        server = None
        if options["metrics_port"] is not None:
            server = metrics.serve(options["metrics_addr"], options["metrics_port"])
        worker = Worker(
            worker_id=options["worker_id"],
            concurrency=options["concurrency"],
            once=options["once"],
            max_runs=options["max_runs"],
            poll_interval=options["poll_interval"],
        )
        worker.install_signal_handlers()
        try:
            started = worker.run()
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
        self.stdout.write(f"worker {worker.worker_id}: {started} run(s) started")
