"""The webhook delivery process: claims due deliveries from the outbox and sends them.

Run any number of them (`manage.py tunix_webhooks`); they share the outbox through
`SELECT ... FOR UPDATE SKIP LOCKED`. Each claim holds a lease: a process that dies mid-batch
leaves its claims to be taken again when the lease ends, so nothing is lost (a receiver may see
a delivery twice, with the same `X-TunixOps-Delivery` id). Sends run on a small thread pool,
each bounded by TUNIX_WEBHOOKS_TIMEOUT_SECONDS, and no hook holds more than
TUNIX_WEBHOOKS_PER_HOOK of its threads: a slow or dead receiver delays only its own deliveries.
Only the oldest open event of a run is ever claimed for a hook, so each hook gets a run's events
in order. The main thread alone touches the database.
"""

import logging
import os
import signal
import socket
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import FrameType

from django.conf import settings
from django.db import DatabaseError, connection

from runs.live import notify
from tunixops import telemetry
from webhooks import sender, signing
from webhooks.services import Claim, deliveries_claim, delivery_record

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"webhooks@{socket.gethostname()}:{os.getpid()}"


class Deliverer:
    def __init__(
        self,
        *,
        worker_id: str | None = None,
        concurrency: int | None = None,
        per_hook: int | None = None,
        poll_interval: float | None = None,
        once: bool = False,
    ) -> None:
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency or settings.TUNIX_WEBHOOKS_CONCURRENCY
        self.per_hook = per_hook or settings.TUNIX_WEBHOOKS_PER_HOOK
        self.poll_interval = poll_interval or settings.TUNIX_WEBHOOKS_POLL_SECONDS
        self.timeout = settings.TUNIX_WEBHOOKS_TIMEOUT_SECONDS
        self.allow_private = settings.TUNIX_WEBHOOKS_ALLOW_PRIVATE
        self.once = once
        self.stopping = False
        self.attempts = 0
        self.in_flight: dict[Future[sender.Result], Claim] = {}
        # Outcomes the database did not take yet (it was away): recorded on a later turn.
        self.unrecorded: list[tuple[Claim, sender.Result]] = []
        self.listener = notify.Listener((notify.WEBHOOKS_CHANNEL,))
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="webhook")

    # -- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            # What is in flight is claimed again by another process once its lease ends.
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("signal %s: finishing the deliveries in flight, then stopping", signum)
        self.stopping = True

    def run(self) -> int:
        """The loop; returns how many delivery attempts this process made."""
        log.info(
            "webhooks %s: started (%d at once, %d per hook, timeout %g s)",
            self.worker_id,
            self.concurrency,
            self.per_hook,
            self.timeout,
        )
        try:
            while True:
                busy = self._step_safely()
                idle = not self.in_flight and not self.unrecorded
                if idle and (self.stopping or (self.once and not busy)):
                    break
                if not busy:
                    self._wait()
        finally:
            self.pool.shutdown(wait=True)
            self.listener.close()
            connection.close()
        log.info("webhooks %s: stopped after %d attempt(s)", self.worker_id, self.attempts)
        return self.attempts

    def _step_safely(self) -> bool:
        try:
            return self.step()
        except DatabaseError as exc:
            log.warning("webhooks %s: database error, retrying: %s", self.worker_id, exc)
            connection.close()
            time.sleep(min(self.poll_interval, 1.0))
            return False

    def _wait(self) -> None:
        if self.in_flight:
            wait(list(self.in_flight), timeout=self.poll_interval, return_when=FIRST_COMPLETED)
        else:
            self.listener.wait(self.poll_interval)

    # -- one turn ----------------------------------------------------------------------------

    def step(self) -> bool:
        """Record finished sends, then claim what fits; return whether anything happened."""
        recorded = self.record_finished()
        claimed = 0 if self.stopping else self.claim()
        return bool(recorded or claimed)

    def claim(self) -> int:
        free = self.concurrency - len(self.in_flight)
        in_flight = Counter(claim.webhook_id for claim in self.in_flight.values())
        claims = deliveries_claim(
            worker_id=self.worker_id, limit=free, in_flight=in_flight, per_hook=self.per_hook
        )
        for claim in claims:
            self.in_flight[self.pool.submit(self.send, claim)] = claim
        return len(claims)

    def send(self, claim: Claim) -> sender.Result:
        """One attempt (on a pool thread, without the database)."""
        started = time.monotonic()
        try:
            body = claim.body.encode()
            headers = signing.headers(
                secret=claim.secret,
                timestamp=int(time.time()),
                body=body,
                delivery_id=str(claim.delivery_id),
                event=claim.event,
            )
            return sender.post(
                claim.url,
                body,
                headers,
                timeout=self.timeout,
                allow_private=self.allow_private,
            )
        except Exception as exc:
            # A bug here must not lose the claim: it is recorded as a failed attempt.
            log.exception("webhooks: delivery %s failed unexpectedly", claim.delivery_id)
            return sender.Result(
                status=None,
                error=f"internal error: {exc!r}"[:500],
                seconds=time.monotonic() - started,
            )

    def record_finished(self) -> int:
        for future in [f for f in self.in_flight if f.done()]:
            claim = self.in_flight.pop(future)
            self.unrecorded.append((claim, future.result()))
        count = 0
        while self.unrecorded:
            claim, result = self.unrecorded[0]
            outcome = delivery_record(claim=claim, result=result)  # DatabaseError: next turn
            self.unrecorded.pop(0)
            count += 1
            self.attempts += 1
            telemetry.webhook_delivery_observed(outcome=outcome, seconds=result.seconds)
            level = logging.INFO if outcome == "delivered" else logging.WARNING
            log.log(
                level,
                "webhook %s: %s %s %s (%s, %.0f ms)",
                claim.webhook_id,
                claim.event,
                claim.delivery_id,
                outcome,
                result.status if result.status is not None else result.error,
                result.seconds * 1000,
            )
        return count
