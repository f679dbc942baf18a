"""Deliver webhooks: send the outbox's due deliveries to their receivers, with retries.

A process of its own, so that no worker and no request ever waits for a receiver. Start one or
more anywhere that reaches the database and the receivers. The first SIGTERM or Ctrl-C stops
claiming and finishes the deliveries in flight; a second one exits at once (their claims are
taken again after TUNIX_WEBHOOKS_LEASE_SECONDS).
"""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from tunixops.commands import add_process_arguments, positive_float, positive_int, process_options
from webhooks.delivery import Deliverer


class Command(BaseCommand):
    help = "Deliver webhook events from the outbox to their receivers."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=positive_int,
            help="Deliveries sent at once (default TUNIX_WEBHOOKS_CONCURRENCY).",
        )
        parser.add_argument(
            "--per-hook",
            type=positive_int,
            help="Of those, at most this many to one hook (default TUNIX_WEBHOOKS_PER_HOOK).",
        )
        parser.add_argument(
            "--poll-interval",
            type=positive_float,
            help="Seconds between outbox polls without a notification "
            "(default TUNIX_WEBHOOKS_POLL_SECONDS).",
        )
        parser.add_argument(
            "--once", action="store_true", help="Exit when nothing is due and nothing is in flight."
        )
        parser.add_argument("--worker-id", help="Name recorded on claimed deliveries.")
        add_process_arguments(parser, metrics_port=None, what="tunix_webhook_deliveries_total, ...")

    def handle(self, *args: Any, **options: Any) -> None:
        deliverer = Deliverer(
            worker_id=options["worker_id"],
            concurrency=options["concurrency"],
            per_hook=options["per_hook"],
            poll_interval=options["poll_interval"],
            once=options["once"],
        )
        deliverer.install_signal_handlers()
        with process_options(options):
            attempts = deliverer.run()
        self.stdout.write(f"webhooks {deliverer.worker_id}: {attempts} attempt(s)")
