"""Broadcast fan-out: one reader per run and process, the same bytes to every stream of it.

Each web process keeps, for each run with open streams, one `Feed`. On a wake-up it reads the new
chunks once, encodes each SSE event once (the `id:` line is the same for every subscriber) and
hands the same bytes to every `Member` (an open stream on the shared path). A stream that starts
or resumes from an older seq first catches up on its own path (runs/live/stream.py), reading the
table at its own pace; it joins the feed only once it has everything the feed has sent, and a
member never gets an event it already has (each keeps its seq, metric step and last status), so
there is no gap and no duplicate.

Flow control stays per member: the feed writes straight to a member whose client is keeping up;
for one that is not, it queues up to BACKLOG_BYTES, which the member's own task sends as its
client drains. A member that falls further behind leaves the shared path and catches up from the
table again, so a slow client costs at most that much memory; one that does not drain at all for
TUNIX_SSE_STALL_SECONDS is dropped (runs/live/stream.py).
"""

import asyncio
import enum
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django_eventstream.event import Event

from runs.entrypoints.protocol import MetricPoint
from runs.live.frames import (
    LOG,
    METRIC,
    METRIC_PAGE,
    heartbeat_frame,
    log_frame,
    mentions_metrics,
    metric_frame,
    read_log_page,
    status_frame,
)
from runs.live.hub import Hub, RunState
from runs.live.storage import log_channel
from runs.selectors import metric_points_after
from tunixops.api.flow import Flow, Send

log = logging.getLogger(__name__)

# What a member may have queued before it leaves the shared path to catch up on its own.
BACKLOG_BYTES = 64 * 1024


class Outcome(enum.Enum):
    ENDED = "ended"  # the run ended (final status queued) or is gone
    DETACHED = "detached"  # fell behind: catch up from the table, then join again
    STALLED = "stalled"  # the client stopped reading
    FAILED = "failed"  # the feed's reads failed


def body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


class Member:
    """One stream's place in a feed: what it has been sent, and what waits for its client."""

    def __init__(self, send: Send, flow: Flow, *, seq: int, step: int, state: RunState) -> None:
        self.send = send
        self.flow = flow
        # The last log seq, metric step and status this stream was given (sent or queued).
        self.seq = seq
        self.step = step
        self.state = state
        self.feed: Feed | None = None
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.detached = self.ended = self.failed = False
        self.wakeup = asyncio.Event()

    async def offer(self, data: bytes) -> None:
        """Send now if the client keeps up; queue otherwise (the feed never waits for one)."""
        if not self.pending and self.flow.writable_now:
            if not self.flow.write_chunk(data):
                await self.send(body(data))
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > BACKLOG_BYTES:
            self.detached = True
        self.wakeup.set()

    def stop(self, *, failed: bool = False) -> None:
        self.ended = True
        self.failed = failed
        self.wakeup.set()

    async def follow(self, stall_seconds: float) -> Outcome:
        """Send what the feed queued, as the client drains, until the member leaves the path."""
        while True:
            self.wakeup.clear()
            while self.pending:
                if not await self.flow.writable(stall_seconds):
                    return Outcome.STALLED
                data = self.pending.popleft()
                self.pending_bytes -= len(data)
                await self.send(body(data))
            if self.failed:
                return Outcome.FAILED
            if self.ended:
                return Outcome.ENDED
            if self.detached:
                self.detached = False
                return Outcome.DETACHED
            await self.wakeup.wait()


class Feed:
    """The one reader of a run's new chunks, metrics and statuses in this process."""

    def __init__(self, hub: Hub, run_id: uuid.UUID, *, seq: int, step: int, state: RunState):
        self.hub = hub
        self.run_id = run_id
        self.channel = log_channel(run_id)
        self.seq = seq
        self.step = step
        self.state = state
        # Counts the feed's status changes, so a stream can tell whether one happened while it
        # read the status itself.
        self.state_changes = 0
        self.members: set[Member] = set()
        self.closed = False
        self._sub = hub.subscribe(run_id)
        # Whatever was committed before this subscription existed is read at once.
        self._sub.poke(logs=True, status=True, metrics=True)
        self._task = hub.loop.create_task(self._run())

    def join(self, member: Member) -> bool:
        """Join if the member has everything this feed has sent (so nothing comes twice, and
        nothing is missed: the feed sends everything after its own position)."""
        if self.closed or member.seq < self.seq or member.step < self.step:
            return False
        self.members.add(member)
        member.feed = self
        return True

    def leave(self, member: Member) -> None:
        self.members.discard(member)
        member.feed = None
        if not self.members:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.unsubscribe(self._sub)
        if self.hub.feeds.get(self.run_id) is self:
            del self.hub.feeds[self.run_id]
        if asyncio.current_task() is not self._task:
            self._task.cancel()

    # -- the reader -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._follow_run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Members end as a failed stream does; clients resume with their Last-Event-ID.
            log.exception("run %s: the shared log reader failed", self.run_id)
            self._end(failed=True)

    async def _follow_run(self) -> None:
        while not self.closed:
            if not await self._sub.wait(settings.TUNIX_SSE_HEARTBEAT_SECONDS):
                await self._heartbeat()
                continue
            read_logs, status_changed, read_metrics = self._sub.take()
            final: RunState | None = None
            if status_changed:
                new = await self.hub.run_state(self.run_id)
                if new is None:
                    self._end()
                    return
                if new.is_terminal:
                    # The worker commits every chunk before the terminal status, so reading the
                    # log after this status read sees them all; the final status follows.
                    final = new
                    read_logs = read_metrics = True
                elif new != self.state:
                    await self._status(new)
            while read_logs and not self.closed:
                events, read_logs = await self.hub.shared(
                    (LOG, self.run_id, self.seq), read_log_page, self.channel, self.seq
                )
                if events:
                    await self._logs(events)
                read_metrics = read_metrics or not events or mentions_metrics(events)
            while read_metrics and not self.closed:
                points = await self.hub.shared(
                    (METRIC, self.run_id, self.step),
                    metric_points_after,
                    self.run_id,
                    self.step,
                    METRIC_PAGE,
                )
                if points:
                    await self._metrics(points)
                read_metrics = len(points) == METRIC_PAGE
            if final is not None:
                await self._status(final)
                self._end()
                return

    def _end(self, *, failed: bool = False) -> None:
        for member in self.members:
            member.feed = None
            member.stop(failed=failed)
        self.members.clear()
        self.close()

    async def _broadcast(self, data_for: Callable[[Member], bytes | None]) -> None:
        for member in list(self.members):
            if member.feed is not self:
                continue
            data = data_for(member)
            if data is None:
                continue
            try:
                await member.offer(data)
            except Exception:
                log.exception("run %s: writing to a log stream failed", self.run_id)
                member.stop(failed=True)
            if member.detached or member.ended:
                self.leave(member)

    async def _heartbeat(self) -> None:
        data = heartbeat_frame().encode()
        await self._broadcast(lambda member: data)

    async def _logs(self, events: list[Event]) -> None:
        frames = [(int(e.id), log_frame(e).encode()) for e in events]
        first, last = frames[0][0], frames[-1][0]
        whole = b"".join(frame for _, frame in frames)
        self.seq = last

        def data_for(member: Member) -> bytes | None:
            if member.seq >= last:
                return None
            # A member that joined ahead of the feed has some of these already.
            data = whole if member.seq < first else b"".join(f for s, f in frames if s > member.seq)
            member.seq = last
            return data

        await self._broadcast(data_for)

    async def _metrics(self, points: list[MetricPoint]) -> None:
        frames = [(p.step, metric_frame(p).encode()) for p in points]
        last = frames[-1][0]
        whole = b"".join(frame for _, frame in frames)
        self.step = last

        def data_for(member: Member) -> bytes | None:
            if member.step >= last:
                return None
            data = (
                whole
                if member.step < frames[0][0]
                else b"".join(f for s, f in frames if s > member.step)
            )
            member.step = last
            return data

        await self._broadcast(data_for)

    async def _status(self, state: RunState) -> None:
        self.state = state
        self.state_changes += 1
        data = status_frame(state).encode()

        def data_for(member: Member) -> bytes | None:
            if member.state == state:
                return None
            member.state = state
            return data

        await self._broadcast(data_for)


def feed_for(hub: Hub, run_id: uuid.UUID, member: Member) -> Feed:
    """The run's feed in this process; a new one starts where `member` stands."""
    feed = hub.feeds.get(run_id)
    if feed is None or feed.closed:
        feed = Feed(hub, run_id, seq=member.seq, step=member.step, state=member.state)
        hub.feeds[run_id] = feed
    assert isinstance(feed, Feed)
    return feed
