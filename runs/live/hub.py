"""Per-process delivery of "look again" to open log streams.

Each web process keeps ONE `LISTEN tunix_logs, tunix_runs` connection (opened with the first
stream, reconnecting with backoff after PostgreSQL restarts) and fans its notifications out to its
own streams. While that connection is down, and always on SQLite, a poll of the runs that have open
streams takes its place. Either way a stream is only told to re-read: the log-chunk table stays the
one source of truth, so a lost or doubled wake-up cannot lose or duplicate a line.

Database reads run on a small shared thread pool whose threads keep their connections, so open
streams hold neither a thread nor a database connection of their own. Streams of the same run that
ask for the same rows at the same moment share one query, and streams that are up to date share
one reader per run (runs/live/fanout.py). `mode=sync` waits use the same wake-ups.
"""

import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, connections
from django.db.models import Max
from psycopg import sql

from runs.live import notify
from runs.models import TERMINAL_STATUSES, LogChunk, Run, RunMetric

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often the listening connection proves it is alive when no notification arrives.
LISTEN_PROBE_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 10.0
LISTEN_APPLICATION_NAME = "tunixops-sse-listen"
# Above this many runs, one poll query per slice keeps the IN list reasonable.
POLL_SLICE = 500


@dataclass(frozen=True)
class RunState:
    status: str
    status_reason: str
    exit_code: int | None
    finished_at: datetime | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Subscription:
    """One open stream's mailbox: which kinds of change happened since it last looked."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.logs_changed = False
        self.status_changed = False
        self.metrics_changed = False
        self._event = asyncio.Event()

    def poke(self, *, logs: bool = False, status: bool = False, metrics: bool = False) -> None:
        self.logs_changed |= logs
        self.status_changed |= status
        self.metrics_changed |= metrics
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a poke; False when `timeout` passed without one."""
        if self.logs_changed or self.status_changed or self.metrics_changed:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True

    def take(self) -> tuple[bool, bool, bool]:
        """Return and reset the flags (logs, status, metrics); call before re-reading so later
        pokes are not lost."""
        changed = (self.logs_changed, self.status_changed, self.metrics_changed)
        self.logs_changed = self.status_changed = self.metrics_changed = False
        self._event.clear()
        return changed


# -- database reads, on the shared pool ---------------------------------------------------------


def read_run_state(run_id: uuid.UUID) -> RunState | None:
    row = (
        Run.objects.filter(pk=run_id)
        .values_list("status", "status_reason", "exit_code", "finished_at")
        .first()
    )
    return None if row is None else RunState(*row)


def read_positions(run_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, str, int]]:
    """Last seq, status and last metric step of each run that still exists."""
    positions: dict[uuid.UUID, tuple[int, str, int]] = {}
    for start in range(0, len(run_ids), POLL_SLICE):
        part = run_ids[start : start + POLL_SLICE]
        last = dict(
            LogChunk.objects.filter(run_id__in=part)
            .values("run_id")
            .annotate(m=Max("seq"))
            .values_list("run_id", "m")
        )
        steps = dict(
            RunMetric.objects.filter(run_id__in=part)
            .values("run_id")
            .annotate(m=Max("step"))
            .values_list("run_id", "m")
        )
        for run_id, status in Run.objects.filter(pk__in=part).values_list("id", "status"):
            step = steps.get(run_id)
            positions[run_id] = (int(last.get(run_id) or 0), status, -1 if step is None else step)
    return positions


def _on_own_connection(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on this pool thread's long-lived connection, replacing it once if it broke."""
    try:
        return fn(*args)
    except (OperationalError, InterfaceError):
        connection.close()
        return fn(*args)


_executor: ThreadPoolExecutor | None = None
_executor_threads = 0


def _pool() -> ThreadPoolExecutor:
    global _executor, _executor_threads
    if _executor is None:
        _executor_threads = settings.TUNIX_SSE_DB_THREADS
        _executor = ThreadPoolExecutor(max_workers=_executor_threads, thread_name_prefix="sse-db")
    return _executor


def close_pool() -> None:
    """Close the read pool's database connections and stop its threads."""
    global _executor
    executor, _executor = _executor, None
    if executor is None:
        return
    # Every task waits for all the others, so each thread runs exactly one of them.
    barrier = threading.Barrier(_executor_threads)

    def close_own_connection() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        connection.close()

    for done in [executor.submit(close_own_connection) for _ in range(_executor_threads)]:
        done.result()
    executor.shutdown()


# -- the hub ----------------------------------------------------------------------------------


class Hub:
    """Open streams of this process by run, and the wake-up sources that feed them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._subs: dict[uuid.UUID, set[Subscription]] = {}
        self._seen: dict[uuid.UUID, tuple[int, str, int]] = {}
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self._can_listen = connections["default"].vendor == "postgresql"
        self.listening = False
        self._listen_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._poll_failing = False
        # Open live-log streams of this process, and the shared reader of each run they follow
        # (runs/live/fanout.py; typed loosely here, as that module builds on this one).
        self.open_streams = 0
        self.feeds: dict[uuid.UUID, Any] = {}

    def subscribe(self, run_id: uuid.UUID) -> Subscription:
        sub = Subscription(run_id)
        self._subs.setdefault(run_id, set()).add(sub)
        if self._can_listen and self._listen_task is None:
            self._listen_task = self.loop.create_task(self._listen_forever())
        self._ensure_poller()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.run_id]
            self._seen.pop(sub.run_id, None)

    def wake(
        self, run_id: uuid.UUID, *, logs: bool = False, status: bool = False, metrics: bool = False
    ) -> None:
        for sub in self._subs.get(run_id, ()):
            sub.poke(logs=logs, status=status, metrics=metrics)

    def wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.poke(logs=True, status=True, metrics=True)

    def dispatch(self, channel: str, payload: str) -> None:
        """Route one notification (`<run_id>:<last_seq>`, `<run_id>:metrics` or
        `<run_id>:<status>`)."""
        raw_id, _, rest = payload.partition(":")
        try:
            run_id = uuid.UUID(raw_id)
        except ValueError:
            log.warning("ignoring malformed %s notification %r", channel, payload)
            return
        if channel == notify.LOGS_CHANNEL and rest == notify.METRICS_PAYLOAD:
            self.wake(run_id, metrics=True)
        elif channel == notify.LOGS_CHANNEL:
            self.wake(run_id, logs=True)
        elif channel == notify.RUNS_CHANNEL:
            self.wake(run_id, status=True)

    # -- reads ------------------------------------------------------------------------------

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        call = functools.partial(_on_own_connection, fn, *args)
        return await self.loop.run_in_executor(_pool(), call)

    async def shared(self, key: Hashable, fn: Callable[..., T], *args: Any) -> T:
        """`run_db`, but concurrent callers with the same key share one query."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self.run_db(fn, *args))
            self._inflight[key] = future

            def forget(done: asyncio.Future[Any], key: Hashable = key) -> None:
                if self._inflight.get(key) is done:
                    del self._inflight[key]
                # Retrieved here so a failure nobody waited for is not reported as lost.
                if not done.cancelled():
                    done.exception()

            future.add_done_callback(forget)
        # A caller that goes away must not cancel the query for the others.
        result: T = await asyncio.shield(future)
        return result

    async def run_state(self, run_id: uuid.UUID) -> RunState | None:
        return await self.shared(("state", run_id), read_run_state, run_id)

    async def wait_terminal(self, run_id: uuid.UUID, timeout: float) -> None:
        """Return once the run is terminal or gone, or `timeout` seconds have passed."""
        sub = self.subscribe(run_id)
        try:
            async with asyncio.timeout(timeout):
                read = True
                while True:
                    if read:
                        state = await self.run_state(run_id)
                        if state is None or state.is_terminal:
                            return
                    # Only a status change (or a quiet spell, against a lost wake-up) is read.
                    woke = await sub.wait(max(settings.TUNIX_SSE_HEARTBEAT_SECONDS, 1.0))
                    read = sub.take()[1] or not woke
        except TimeoutError:
            return
        finally:
            self.unsubscribe(sub)

    # -- wake-up sources --------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._subs and not self.listening and self._poll_task is None:
            self._poll_task = self.loop.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        try:
            while self._subs and not self.listening:
                await self._poll_once()
                await asyncio.sleep(settings.TUNIX_SSE_POLL_SECONDS)
        finally:
            self._poll_task = None

    async def _poll_once(self) -> None:
        try:
            positions = await self.run_db(read_positions, list(self._subs))
        except Exception:
            # Once per outage, not five times a second.
            if not self._poll_failing:
                log.exception("log streams: poll failed; retrying")
            self._poll_failing = True
            return
        self._poll_failing = False
        for run_id in list(self._subs):
            now = positions.get(run_id)
            before = self._seen.get(run_id)
            if now is None:
                # The run is gone: its streams read that and end.
                self.wake(run_id, status=True)
                continue
            if now != before:
                self._seen[run_id] = now
                self.wake(
                    run_id,
                    logs=before is None or now[0] != before[0],
                    status=before is None or now[1] != before[1],
                    metrics=before is None or now[2] != before[2],
                )

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    autocommit=True, **notify.listen_params(LISTEN_APPLICATION_NAME)
                )
            except psycopg.Error as exc:
                log.warning("log streams: LISTEN connection failed, polling meanwhile: %s", exc)
            else:
                try:
                    async with conn:
                        for channel in (notify.LOGS_CHANNEL, notify.RUNS_CHANNEL):
                            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                        self.listening = True
                        delay = 0.5
                        # Whatever was committed while nobody listened is read now.
                        self.wake_all()
                        while True:
                            async for note in conn.notifies(timeout=LISTEN_PROBE_SECONDS):
                                self.dispatch(note.channel, note.payload)
                            await conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    log.warning("log streams: LISTEN connection lost, polling meanwhile: %s", exc)
                finally:
                    self.listening = False
                    self._ensure_poller()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


_hub: Hub | None = None


def get_hub() -> Hub:
    """This process's hub, bound to the running event loop (daphne has exactly one)."""
    global _hub
    loop = asyncio.get_running_loop()
    if _hub is None or _hub.loop is not loop:
        _hub = Hub(loop)
    return _hub
