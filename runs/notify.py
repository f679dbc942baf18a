"""Cross-process wake-ups through PostgreSQL LISTEN/NOTIFY.

The database stays the source of truth: a notification only says "look again". On SQLite these are
no-ops and listeners fall back to polling.
"""

import logging
import time
import uuid

import psycopg
from django.db import connection
from psycopg import sql

log = logging.getLogger(__name__)

RUNS_CHANNEL = "tunix_runs"
LOGS_CHANNEL = "tunix_logs"


def is_available() -> bool:
    return connection.vendor == "postgresql"


def _notify(channel: str, payload: str) -> None:
    if not is_available():
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def run_changed(run_id: uuid.UUID, status: str) -> None:
    """A run's status changed: wakes idle workers (new pending run) and open log streams."""
    _notify(RUNS_CHANNEL, f"{run_id}:{status}")


def logs_appended(run_id: uuid.UUID, last_seq: int) -> None:
    _notify(LOGS_CHANNEL, f"{run_id}:{last_seq}")


class Listener:
    """A dedicated autocommit connection that LISTENs, for processes that wait for wake-ups.

    Reconnects on its own after PostgreSQL restarts; while it is down, `wait()` just sleeps, so
    callers fall back to their poll interval.
    """

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._retry_at = 0.0

    def _connect(self) -> psycopg.Connection[tuple[object, ...]] | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            return None
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        try:
            conn = psycopg.connect(autocommit=True, **params)
            for channel in self.channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as exc:
            log.warning("LISTEN connection failed, polling meanwhile: %s", exc)
            self._retry_at = time.monotonic() + 2.0
            return None
        self._conn = conn
        return conn

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """Block until a notification arrives or `timeout` passes; return what arrived."""
        conn = self._connect() if is_available() else None
        if conn is None:
            time.sleep(timeout)
            return []
        try:
            return [
                (n.channel, n.payload) for n in conn.notifies(timeout=timeout, stop_after=1)
            ] + [(n.channel, n.payload) for n in conn.notifies(timeout=0)]
        except psycopg.Error as exc:
            log.warning("LISTEN connection lost: %s", exc)
            self.close()
            return []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
