"""Run the TunixOps worker: claim pending runs and execute them as child processes.

Start as many as you like, on as many hosts as share the database. The first SIGTERM or Ctrl-C
stops claiming and terminates running children (their runs are retried while attempts remain);
a second one exits at once.
"""

import time
from argparse import ArgumentParser, ArgumentTypeError
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from runs.execution.devices import KINDS
from runs.execution.worker import Worker
from runs.models import WorkerHeartbeat
from runs.recipes import POOL_NAME
from runs.services import worker_drain_request
from tunixops.commands import add_process_arguments, positive_float, positive_int, process_options
from tunixops.exceptions import NotFound


def _device_ids(value: str) -> tuple[str, ...]:
    ids = tuple(part.strip() for part in value.split(",") if part.strip())
    if len(set(ids)) != len(ids):
        raise ArgumentTypeError("each device id once")
    if not all(i.isascii() and i.isdigit() for i in ids):
        raise ArgumentTypeError("device ids are whole numbers, e.g. 0,1,2,3")
    return ids


def _pools(value: str) -> tuple[str, ...]:
    pools = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not pools or not all(POOL_NAME.match(pool) for pool in pools):
        raise ArgumentTypeError("one or more pool names: letters, digits, '.', '_' or '-'")
    return pools


class Command(BaseCommand):
    help = "Claim pending runs and execute them."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--concurrency", type=positive_int, default=1, help="Runs at once.")
        parser.add_argument(
            "--once", action="store_true", help="Exit as soon as the queue is empty and idle."
        )
        parser.add_argument("--max-runs", type=positive_int, help="Exit after this many runs.")
        parser.add_argument("--worker-id", help="Name recorded on claimed runs (host:pid).")
        parser.add_argument(
            "--poll-interval",
            type=positive_float,
            help="Seconds between queue polls when no notification arrives.",
        )
        parser.add_argument(
            "--devices",
            type=_device_ids,
            default=",".join(settings.TUNIX_WORKER_DEVICES),
            help="This worker's accelerator ids, e.g. 0,1,2,3 (default TUNIX_WORKER_DEVICES).",
        )
        parser.add_argument(
            "--device-kind",
            choices=KINDS,
            default=settings.TUNIX_WORKER_DEVICE_KIND,
            help="gpu (CUDA_VISIBLE_DEVICES) or tpu (TPU_VISIBLE_CHIPS); default gpu.",
        )
        parser.add_argument(
            "--memory-limit-mb",
            type=positive_int,
            default=settings.TUNIX_WORKER_MEMORY_LIMIT_MB or None,
            help="A run's memory limit when it sets none (default TUNIX_WORKER_MEMORY_LIMIT_MB).",
        )
        parser.add_argument(
            "--pools",
            type=_pools,
            default=",".join(settings.TUNIX_WORKER_POOLS),
            help="The pools this worker claims runs of, e.g. tpu-v5e,default (TUNIX_WORKER_POOLS).",
        )
        parser.add_argument(
            "--drain-seconds",
            type=float,
            default=settings.TUNIX_WORKER_DRAIN_SECONDS,
            help="How long a draining worker lets its runs finish (TUNIX_WORKER_DRAIN_SECONDS).",
        )
        parser.add_argument(
            "--drain",
            metavar="WORKER_ID",
            help=(
                "Do not start a worker: ask the running worker WORKER_ID (on any host) to drain "
                "(stop claiming, let its runs finish, then stop), and return."
            ),
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="With --drain: wait until that worker has stopped.",
        )
        add_process_arguments(
            parser,
            metrics_port=settings.TUNIX_WORKER_METRICS_PORT,
            what="default TUNIX_WORKER_METRICS_PORT",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["drain"]:
            self._drain(options["drain"], wait=options["wait"])
            return
        try:
            worker = Worker(
                worker_id=options["worker_id"],
                concurrency=options["concurrency"],
                once=options["once"],
                max_runs=options["max_runs"],
                poll_interval=options["poll_interval"],
                devices=options["devices"],
                device_kind=options["device_kind"],
                memory_limit_mb=options["memory_limit_mb"],
                child_user=settings.TUNIX_CHILD_USER,
                use_cgroups=settings.TUNIX_WORKER_CGROUPS == "auto",
                pools=options["pools"],
                drain_on_sigterm=settings.TUNIX_WORKER_DRAIN,
                drain_seconds=options["drain_seconds"],
            )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        worker.install_signal_handlers()
        with process_options(options):
            started = worker.run()
        self.stdout.write(f"worker {worker.worker_id}: {started} run(s) started")

    def _drain(self, worker_id: str, *, wait: bool) -> None:
        try:
            worker_drain_request(worker_id=worker_id)
        except NotFound as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"worker {worker_id}: asked to drain")
        while wait and WorkerHeartbeat.objects.filter(worker_id=worker_id).exists():
            time.sleep(1)
        if wait:
            self.stdout.write(f"worker {worker_id}: stopped")
