"""Per-process caps on what waits on the event loop: live-log streams and `mode=sync` waits.

Neither holds a thread or a database connection while it waits, but each holds a socket and a
little memory, so one user may not open them without bound. A slot is taken in the view (a
request thread), before anything is done, and given back on the event loop when the stream or the
wait ends: hence the lock.
"""

import threading
from collections.abc import Callable, Hashable

from django.conf import settings

from tunixops.exceptions import LimitExceeded

# What a refused client is told to wait before it tries again.
RETRY_AFTER_SECONDS = 5


class Ticket:
    """One taken slot; `release()` gives it back (once, however often it is called)."""

    def __init__(self, slots: "Slots", key: Hashable) -> None:
        self._slots = slots
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._key)


class Slots:
    def __init__(
        self,
        what: str,
        code: str,
        per_key: Callable[[], int],
        total: Callable[[], int] = lambda: 0,
    ) -> None:
        self.what = what
        self.code = code
        self._per_key = per_key
        self._total = total
        self._lock = threading.Lock()
        self._held: dict[Hashable, int] = {}
        self.in_use = 0

    def take(self, key: Hashable) -> Ticket:
        """A slot for `key` (a user), or LimitExceeded (429) past either cap (0 = no cap)."""
        per_key, total = self._per_key(), self._total()
        with self._lock:
            mine = self._held.get(key, 0)
            if per_key and mine >= per_key:
                raise LimitExceeded(
                    f"You already have {mine} {self.what} open in this server process "
                    f"(at most {per_key}); close one or try again later.",
                    code=self.code,
                    extra={"retry_after": RETRY_AFTER_SECONDS},
                )
            if total and self.in_use >= total:
                raise LimitExceeded(
                    f"This server process already serves {self.in_use} {self.what} (at most "
                    f"{total}); try again later.",
                    code=self.code,
                    extra={"retry_after": RETRY_AFTER_SECONDS},
                )
            self._held[key] = mine + 1
            self.in_use += 1
        return Ticket(self, key)

    def _release(self, key: Hashable) -> None:
        with self._lock:
            left = self._held.get(key, 0) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)
            self.in_use -= 1


STREAMS = Slots(
    "live-log streams",
    "too_many_streams",
    per_key=lambda: int(settings.TUNIX_SSE_MAX_STREAMS_PER_USER),
)
SYNC_WAITS = Slots(
    "`mode=sync` waits",
    "too_many_sync_waits",
    per_key=lambda: int(settings.TUNIX_SYNC_WAITS_PER_USER),
    total=lambda: int(settings.TUNIX_SYNC_WAITS_MAX),
)
