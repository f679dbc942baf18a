"""What the long-running management commands (the worker, the webhook deliverer) share:
argument types, the log-format and metrics-port options, and serving metrics while they run."""

from argparse import ArgumentParser, ArgumentTypeError
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from tunixops import logformat, telemetry


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError("must be at least 1")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ArgumentTypeError("must be a number greater than 0")
    return number


def port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ArgumentTypeError("must be a port number (0 picks a free one)")
    return number


def add_process_arguments(parser: ArgumentParser, *, metrics_port: int | None, what: str) -> None:
    """`--metrics-port`, `--metrics-addr` and `--log-format`."""
    parser.add_argument(
        "--metrics-port",
        type=port,
        default=metrics_port,
        help=f"Serve Prometheus metrics ({what}) on this port.",
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


@contextmanager
def process_options(options: dict[str, Any]) -> Iterator[None]:
    """Apply `--log-format` and serve metrics on `--metrics-port` while the block runs."""
    if "pool" in settings.DATABASES["default"].get("OPTIONS", {}):
        # The pool is sized for short requests; a worker's threads each hold a connection for
        # as long as they live, and a full pool would fail their writes after its timeout.
        raise CommandError(
            "TUNIX_DB_POOL is for web processes (tunixops.asgi turns it on); unset it for "
            "workers and other long-running commands, which keep one connection per thread"
        )
    if options["log_format"]:
        logformat.use_format(options["log_format"])
    server = None
    if options["metrics_port"] is not None:
        server = telemetry.serve(options["metrics_addr"], options["metrics_port"])
    try:
        yield
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
