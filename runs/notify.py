"""Cross-process wake-ups through PostgreSQL LISTEN/NOTIFY.

The database stays the source of truth: a notification only says "look again". On SQLite these are
no-ops and listeners fall back to polling.
"""

import uuid

from django.db import connection

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
