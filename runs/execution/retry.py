"""The worker's one way to write to the database from a loop that must not give up or wedge.

Only what can succeed later is retried: a lost connection, a server restarting or refusing
connections, a serialization failure (all `OperationalError` or `InterfaceError` in Django). What
the database refuses for the content (`DataError`, `IntegrityError`, any other `DatabaseError`) is
permanent: retrying the same write would fail forever, so the caller's `refused` handler repairs
or drops what was refused and capture goes on.

Each failing operation is recorded in `OUTAGES` while it keeps failing, so the worker can report
in its heartbeat that it cannot make progress instead of being counted healthy.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = (OperationalError, InterfaceError)
FIRST_DELAY = 0.1
MAX_DELAY = 5.0


class Outages:
    """Operations that are failing right now, by name, with when they started failing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, tuple[float, str]] = {}

    def failing(self, what: str, error: str) -> None:
        with self._lock:
            since = self._since.get(what, (time.monotonic(), ""))[0]
            self._since[what] = (since, error)

    def recovered(self, what: str) -> None:
        with self._lock:
            self._since.pop(what, None)

    def oldest(self) -> tuple[float, str, str] | None:
        """(seconds failing, operation, last error) of the longest failing operation."""
        with self._lock:
            if not self._since:
                return None
            what, (since, error) = min(self._since.items(), key=lambda item: item[1][0])
        return time.monotonic() - since, what, error


OUTAGES = Outages()


def retrying(
    operation: Callable[[], T],
    *,
    what: str,
    refused: Callable[[DatabaseError], T],
    stop: threading.Event | None = None,
    extra: dict[str, Any] | None = None,
) -> T:
    """Run `operation` until it succeeds, backing off on transient errors.

    A permanent error goes to `refused`, whose result is returned (it may itself call
    `retrying` with a repaired write). `stop`, when set, ends the waiting: the last transient
    error is raised so the caller can give up cleanly (a worker shutting down).
    """
    delay = FIRST_DELAY
    try:
        while True:
            try:
                return operation()
            except TRANSIENT as exc:
                OUTAGES.failing(what, str(exc))
                log.warning("%s failed, retrying in %.1f s: %s", what, delay, exc, extra=extra)
                # The connection may be broken; the next attempt opens a fresh one.
                connection.close()
                if stop is not None and stop.wait(delay):
                    raise
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
            except DatabaseError as exc:
                log.error("%s refused by the database: %s", what, exc, extra=extra)
                # A failed statement can leave the connection unusable outside a transaction.
                connection.close()
                return refused(exc)
    finally:
        OUTAGES.recovered(what)
