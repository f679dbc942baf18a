"""Cross-process wake-ups through PostgreSQL LISTEN/NOTIFY.

The database stays the source of truth: a notification only says "look again". On SQLite these are
no-ops and listeners fall back to polling.
"""

import logging
import time
import uuid
from typing import Any

import psycopg
from django.db import connection, connections
from psycopg import sql

log = logging.getLogger(__name__)

WORKER_APPLICATION_NAME = "tunixops-worker-listen"
RUNS_CHANNEL = "tunix_runs"
LOGS_CHANNEL = "tunix_logs"
WEBHOOKS_CHANNEL = "tunix_webhooks"


def listen_params(application_name: str) -> dict[str, Any]:
    """Connection parameters for a dedicated LISTEN connection, outside Django's own handling.

    The one place that builds them, for the worker's listener and each web process's hub: the
    database settings without Django's own connection options, and a name that tells the
    connection apart in `pg_stat_activity`.
    """
    params = dict(connections["default"].get_connection_params())
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    # Its own name even where the pooled connections have one (settings.py).
    params["application_name"] = application_name
    return params


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


METRICS_PAYLOAD = "metrics"


def metrics_recorded(run_id: uuid.UUID) -> None:
    """Metrics were stored without a log line saying so (read from TensorBoard event files)."""
    _notify(LOGS_CHANNEL, f"{run_id}:{METRICS_PAYLOAD}")


def webhooks_queued() -> None:
    """New webhook deliveries are in the outbox: wakes idle delivery processes."""
    _notify(WEBHOOKS_CHANNEL, "")


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
        try:
            conn = psycopg.connect(autocommit=True, **listen_params(WORKER_APPLICATION_NAME))
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
