"""Live logs: a run's log chunks and status as Server-Sent Events, and a snapshot for first paint.

The protocol pieces are django-eventstream's: event encoding, `<channel>:<seq>` ids, default
headers, and its storage extension point reading our table (runs/eventstream.py). The stream loop
is ours, because the library's `views.stream` reads through thread-sensitive `sync_to_async`,
which under Django's ASGI handler pins a thread (and its database connection) to every open
stream; its keep-alive is a fixed 20 s `keep-alive`; it cannot end a stream when the run ends; and
it has no backpressure against a slow client.

How a request becomes a stream: `SseHandoff` wraps Django's ASGI app on the logs route. The DRF
view does what any request does (authentication, 404, validation, JSON errors) and, when all is
well, leaves a `StreamStart` in the ASGI scope through `hand_off()`. Once Django has finished the
request, and so released its thread and database connection, the handoff streams the events from
the event loop alone; reads go through the hub's shared pool (runs/eventstream_hub.py).

Event order within a stream: `status` on connect (unless the run is already over), `log` events in
seq order, `status` on every change, `heartbeat` when nothing else was sent for
TUNIX_SSE_HEARTBEAT_SECONDS. A `status` whose status is terminal is always the last event: the
stream closes after it, and clients can close on it.

`metric` events `{step, values}` (no id, so they never move a client's Last-Event-ID) carry the
training metrics of steps after `since_step`, or, without it, of steps recorded after the stream
opened. The worker commits a metric row no later than the log line it was parsed from, so the
stream reads metrics when the logs it just sent contain a metric line, when a wake-up brought no
log (metrics alone, once the log is truncated), and before the final status. (A metric line the
child wrote slowly enough to be stored in pieces arrives with the next one, or at the end.)
"""

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest
from django.utils import timezone
from django_eventstream.event import Event
from django_eventstream.utils import get_storage, sse_encode_event
from twisted.web import http as twisted_http

from runs.eventstream import LogChunkStorage, event_id, log_channel
from runs.eventstream_hub import Hub, RunState, get_hub
from runs.models import LogChunk
from runs.training_metrics import PREFIX as METRIC_PREFIX
from runs.training_metrics import MetricPoint, last_metric_step, metric_points_after
from tunixops import metrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOG = "log"
STATUS = "status"
METRIC = "metric"
METRIC_PAGE = 500
HEARTBEAT = "heartbeat"
SCOPE_KEY = "tunixops.sse"


# -- events -------------------------------------------------------------------------------------


def encode(event: str, data: Mapping[str, Any], *, id: str | None = None) -> str:
    """One SSE event whose data is JSON; the place to add an event type (e.g. `metric`)."""
    return str(sse_encode_event(event, json.dumps(data, cls=DjangoJSONEncoder), event_id=id))


def status_frame(state: RunState) -> str:
    return encode(
        STATUS,
        {
            "status": state.status,
            "status_reason": state.status_reason,
            "exit_code": state.exit_code,
            "finished_at": state.finished_at,
        },
    )


def heartbeat_frame() -> str:
    return encode(HEARTBEAT, {"time": timezone.now()})


def log_frames(events: list[Event]) -> str:
    # The storage already wrote each event's data as JSON.
    return "".join(
        str(sse_encode_event(e.type, e.data, event_id=event_id(e.channel, e.id))) for e in events
    )


def metric_frames(points: list[MetricPoint]) -> str:
    return "".join(encode(METRIC, {"step": p.step, "values": p.values}) for p in points)


def mentions_metrics(events: list[Event]) -> bool:
    # The prefix has nothing JSON escapes, so it shows in the event data as printed.
    return any(METRIC_PREFIX in event.data for event in events)


def read_log_page(channel: str, after_seq: int) -> tuple[list[Event], bool]:
    storage: LogChunkStorage = get_storage()
    return storage.get_page(channel, after_seq)


async def run_events(
    run_id: uuid.UUID, after_seq: int, *, since_step: int | None = None, hub: Hub | None = None
) -> AsyncGenerator[str, None]:
    """The SSE text of one stream: every chunk after `after_seq`, metrics, statuses, heartbeats."""
    hub = hub or get_hub()
    channel = log_channel(run_id)
    sub = hub.subscribe(run_id)
    try:
        state = await hub.run_state(run_id)
        if state is None:
            return
        if not state.is_terminal:
            yield status_frame(state)
        last = after_seq
        read_metrics = since_step is not None
        last_step = since_step
        if last_step is None:
            last_step = await hub.run_db(last_metric_step, run_id)
        read_logs = True
        while True:
            while read_logs:
                events, read_logs = await hub.shared(
                    (LOG, run_id, last), read_log_page, channel, last
                )
                if events:
                    last = events[-1].id
                    yield log_frames(events)
                read_metrics = read_metrics or not events or mentions_metrics(events)
            while read_metrics:
                points = await hub.shared(
                    (METRIC, run_id, last_step),
                    metric_points_after,
                    run_id,
                    last_step,
                    METRIC_PAGE,
                )
                if points:
                    last_step = points[-1].step
                    yield metric_frames(points)
                read_metrics = len(points) == METRIC_PAGE
            if state.is_terminal:
                yield status_frame(state)
                return
            if not await sub.wait(settings.TUNIX_SSE_HEARTBEAT_SECONDS):
                yield heartbeat_frame()
                continue
            read_logs, status_changed = sub.take()
            if status_changed:
                new = await hub.run_state(run_id)
                if new is None:
                    return
                if new.is_terminal:
                    # The worker commits every chunk before the terminal status, so reading the
                    # log after this status read sees them all; the final status follows.
                    read_logs = read_metrics = True
                elif new != state:
                    yield status_frame(new)
                state = new
    finally:
        hub.unsubscribe(sub)


# -- backpressure ---------------------------------------------------------------------------------


class Flow:
    """Says whether the client's socket can take more. Without daphne: always."""

    async def writable(self, timeout: float) -> bool:
        return True

    def release(self) -> None:
        pass

    def abort(self) -> None:
        """Drop the connection without flushing what is buffered for it."""


class TwistedFlow(Flow):
    """A streaming producer on daphne's Twisted request.

    Daphne writes every ASGI body message straight into Twisted's transport, which buffers without
    limit. Registered as the request's producer, this object is told when that buffer passes its
    high-water mark (`pauseProducing`) and when it has drained (`resumeProducing`); the stream
    reads no more rows meanwhile, so a slow client holds at most the buffer plus one batch.
    """

    def __init__(self, request: Any) -> None:
        self._request = request
        self._ready = asyncio.Event()
        self._ready.set()
        request.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self._ready.clear()

    def resumeProducing(self) -> None:
        self._ready.set()

    def stopProducing(self) -> None:
        self._ready.set()

    async def writable(self, timeout: float) -> bool:
        if self._ready.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        request = self._request
        if request.producer is self and request.channel is not None:
            request.unregisterProducer()

    def abort(self) -> None:
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()


def flow_for(send: Send) -> Flow:
    # daphne's `send` is `partial(server.handle_reply, protocol)`; the protocol is the Twisted
    # request of this connection (daphne 4.2.3).
    if isinstance(send, functools.partial) and send.args:
        request = send.args[0]
        if isinstance(request, twisted_http.Request):
            return TwistedFlow(request)
    return Flow()


# -- handoff from Django to the event loop ------------------------------------------------------


@dataclass(frozen=True)
class StreamStart:
    run_id: uuid.UUID
    after_seq: int
    since_step: int | None = None


class _Slot:
    start: StreamStart | None = None


def hand_off(request: HttpRequest, start: StreamStart) -> bool:
    """Ask `SseHandoff` to stream after this response; False when not served through it."""
    scope = getattr(request, "scope", None)
    slot = scope.get(SCOPE_KEY) if isinstance(scope, Mapping) else None
    if not isinstance(slot, _Slot):
        return False
    slot.start = start
    return True


class SseHandoff:
    """ASGI wrapper for the logs route: Django answers the handshake, then the loop streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot = _Slot()
        held: list[Message] = []

        async def hold_handshake(message: Message) -> None:
            starting = message["type"] == "http.response.start" and message["status"] == 200
            if slot.start is not None and (held or starting):
                held.append(message)
            else:
                await send(message)

        await self.app({**scope, SCOPE_KEY: slot}, receive, hold_handshake)
        if slot.start is None or not held:
            return
        # The handshake's headers, minus the Content-Length of its empty body.
        headers = [(k, v) for k, v in held[0]["headers"] if k.lower() != b"content-length"]
        await stream_response(slot.start, headers, receive, send)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def stream_response(
    start: StreamStart, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
) -> None:
    with metrics.sse_stream_open():
        await _stream_response(start, headers, receive, send)


async def _stream_response(
    start: StreamStart, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
) -> None:
    flow = flow_for(send)
    frames = run_events(start.run_id, start.after_seq, since_step=start.since_step)

    async def pump() -> bool:
        """True once every event was sent; False when the client stopped reading."""
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while await flow.writable(settings.TUNIX_SSE_STALL_SECONDS):
            try:
                frame = await anext(frames)
            except StopAsyncIteration:
                return True
            await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
        log.info("run %s: dropping a log stream whose client stopped reading", start.run_id)
        return False

    pumping = asyncio.create_task(pump())
    leaving = asyncio.create_task(_until_disconnect(receive))
    try:
        await asyncio.wait({pumping, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # A client that leaves frees its subscription and buffers now, not at the next event.
        for task in (pumping, leaving):
            task.cancel()
        await asyncio.wait({pumping, leaving})
        await frames.aclose()
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


# -- snapshot -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    seq: int
    stream: str
    text: str


@dataclass(frozen=True)
class LogSnapshot:
    run_id: uuid.UUID
    lines: list[LogLine]
    last_seq: int
    truncated: bool


SNAPSHOT_READ_CHUNKS = 100


def split_lines(chunk: str) -> list[str]:
    """A chunk's lines without their newlines; an unterminated end is a line of its own."""
    lines = chunk.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def log_snapshot(run_id: uuid.UUID, lines: int = 200) -> LogSnapshot:
    """The last `lines` lines of a run's log, and the seq to resume a stream after."""
    newest_first = (
        LogChunk.objects.filter(run_id=run_id)
        .order_by("-seq")
        .values_list("seq", "stream", "chunk")
    )
    picked: list[LogLine] = []
    last_seq = 0
    truncated = False
    before: int | None = None
    while not truncated:
        page = newest_first if before is None else newest_first.filter(seq__lt=before)
        rows = list(page[:SNAPSHOT_READ_CHUNKS])
        if not rows:
            break
        last_seq = last_seq or rows[0][0]
        for seq, stream, chunk in rows:
            for text in reversed(split_lines(chunk)):
                if len(picked) == lines:
                    truncated = True
                    break
                picked.append(LogLine(seq, stream, text))
            if truncated:
                break
        before = rows[-1][0]
    picked.reverse()
    return LogSnapshot(run_id=run_id, lines=picked, last_seq=last_seq, truncated=truncated)
