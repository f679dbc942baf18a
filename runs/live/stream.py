"""Live logs: a run's log chunks and status as Server-Sent Events, and a snapshot for first paint.

The protocol pieces are django-eventstream's: event encoding, `<channel>:<seq>` ids, default
headers, and its storage extension point reading our table (runs/live/storage.py). The stream loop
is ours, because the library's `views.stream` reads through thread-sensitive `sync_to_async`,
which under Django's ASGI handler pins a thread (and its database connection) to every open
stream; its keep-alive is a fixed 20 s `keep-alive`; it cannot end a stream when the run ends; and
it has no backpressure against a slow client.

How a request becomes a stream: `Handoff` (runs/live/handoff.py) wraps Django's ASGI app on the
logs route. The DRF view does what any request does (authentication, 404, validation, the
per-user cap TUNIX_SSE_MAX_STREAMS_PER_USER, JSON errors) and, when all is well, leaves a
`StreamStart` in the ASGI scope. Once Django has finished the request, and so released its thread
and returned its database connection, the stream runs on the event loop alone: it catches up on
its own path (reads through the hub's shared pool, runs/live/hub.py) and then follows the run's
shared reader, which reads and encodes each new event once for every stream (runs/live/fanout.py).

Event order within a stream: `status` on connect (unless the run is already over), `log` events in
seq order, `status` on every change, `heartbeat` when nothing else was sent for
TUNIX_SSE_HEARTBEAT_SECONDS. A `status` whose status is terminal is always the last event: the
stream closes after it, and clients can close on it.

`metric` events `{step, values}` (no id, so they never move a client's Last-Event-ID) carry the
training metrics of steps after `since_step`, or, without it, of steps recorded after the stream
opened. The worker commits a metric row no later than the log line it was parsed from, so the
stream reads metrics when the logs it just sent contain a metric line, when a wake-up brought no
log (metrics alone, once the log is truncated), when metrics read from TensorBoard event files
were stored (a `<run_id>:metrics` notification, or a new last step seen by the poller), and before
the final status. (A metric line the child wrote slowly enough to be stored in pieces arrives with
the next one, or at the end.)
"""

import asyncio
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings

from runs.live.fanout import Member, Outcome, body, feed_for
from runs.live.frames import (
    LOG,
    METRIC,
    METRIC_PAGE,
    log_frames,
    mentions_metrics,
    metric_frames,
    read_log_page,
    status_frame,
)
from runs.live.handoff import Continuation, until_disconnect, without_length
from runs.live.hub import get_hub
from runs.live.limits import Ticket
from runs.live.storage import log_channel
from runs.selectors import last_metric_step, metric_points_after
from tunixops import telemetry
from tunixops.api.flow import Flow, Message, Receive, Send

log = logging.getLogger(__name__)


@dataclass
class StreamStart(Continuation):
    run_id: uuid.UUID
    after_seq: int
    since_step: int | None = None
    ticket: Ticket | None = None

    async def respond(self, held: list[Message], receive: Receive, send: Send) -> None:
        await stream_response(self, without_length(held[0]), receive, send)


class _Stalled(Exception):
    """The client stopped reading for TUNIX_SSE_STALL_SECONDS."""


async def _write(member: Member, text: str) -> None:
    if not await member.flow.writable(settings.TUNIX_SSE_STALL_SECONDS):
        raise _Stalled
    await member.send(body(text.encode()))


async def serve(start: StreamStart, send: Send, flow: Flow) -> bool:
    """Every event of one stream; True once the run's end was sent, False when the client stopped
    reading."""
    hub = get_hub()
    run_id = start.run_id
    channel = log_channel(run_id)
    state = await hub.run_state(run_id)
    if state is None:
        return True
    step = start.since_step
    if step is None:
        step = await hub.run_db(last_metric_step, run_id)
    member = Member(send, flow, seq=start.after_seq, step=step, state=state)
    read_metrics = start.since_step is not None
    try:
        if not state.is_terminal:
            await _write(member, status_frame(state))
        while True:
            # Its own path: from where this stream stands to what the table holds now.
            read_logs = True
            while read_logs:
                events, read_logs = await hub.shared(
                    (LOG, run_id, member.seq), read_log_page, channel, member.seq
                )
                if events:
                    member.seq = int(events[-1].id)
                    await _write(member, log_frames(events))
                read_metrics = read_metrics or not events or mentions_metrics(events)
            while read_metrics:
                points = await hub.shared(
                    (METRIC, run_id, member.step),
                    metric_points_after,
                    run_id,
                    member.step,
                    METRIC_PAGE,
                )
                if points:
                    member.step = points[-1].step
                    await _write(member, metric_frames(points))
                read_metrics = len(points) == METRIC_PAGE
            if member.state.is_terminal:
                await _write(member, status_frame(member.state))
                return True
            feed = feed_for(hub, run_id, member)
            if feed.state != member.state:
                # One of them is behind; the table is not. Read it, and join only if the feed
                # sent no status meanwhile (a later one it sends skips a stream that has it).
                changes = feed.state_changes
                new = await hub.run_state(run_id)
                if new is None:
                    return True
                if new.is_terminal:
                    # Every chunk was committed before this status: read the rest, then end.
                    member.state = new
                    read_metrics = True
                    continue
                if new != member.state:
                    member.state = new
                    await _write(member, status_frame(new))
                if feed.closed or feed.state_changes != changes:
                    continue
            if not feed.join(member):
                # The feed has sent more than this stream has read: read on.
                read_metrics = member.step < feed.step
                continue
            # The shared path, until the run ends or this stream falls behind.
            outcome = await member.follow(settings.TUNIX_SSE_STALL_SECONDS)
            if outcome is Outcome.STALLED:
                return False
            if outcome is Outcome.FAILED:
                raise RuntimeError(f"run {run_id}: the shared log reader failed")
            if outcome is Outcome.ENDED:
                return True
            read_metrics = True
    except _Stalled:
        return False
    finally:
        if member.feed is not None:
            member.feed.leave(member)


async def stream_response(
    start: StreamStart, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
) -> None:
    hub = get_hub()
    hub.open_streams += 1
    try:
        with telemetry.sse_stream_open():
            await _stream_response(start, headers, receive, send)
    finally:
        hub.open_streams -= 1


async def _stream_response(
    start: StreamStart, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
) -> None:
    flow = Flow(send)
    flow.attach()

    async def pump() -> bool:
        """True once every event was sent; False when the client stopped reading."""
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if await serve(start, send, flow):
            return True
        log.info("run %s: dropping a log stream whose client stopped reading", start.run_id)
        return False

    pumping = asyncio.create_task(pump())
    leaving = asyncio.create_task(until_disconnect(receive))
    try:
        await asyncio.wait({pumping, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # A client that leaves frees its place in the feed and its buffers now, not at the next
        # event.
        for task in (pumping, leaving):
            task.cancel()
        await asyncio.wait({pumping, leaving})
        flow.release()
    if not leaving.cancelled():
        return
    failure = pumping.exception()
    if failure is not None:
        # The client reconnects with its Last-Event-ID and resumes where this stream stopped.
        log.error("run %s: log stream failed", start.run_id, exc_info=failure)
    elif not pumping.result():
        # A polite end would wait behind the unread bytes for as long as the socket lives.
        flow.abort()
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
