"""The SSE events of a live log, encoded once, and the reads that feed them."""

import json
from collections.abc import Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django_eventstream.event import Event
from django_eventstream.utils import get_storage, sse_encode_event

from runs.entrypoints.protocol import PREFIX as METRIC_PREFIX
from runs.entrypoints.protocol import MetricPoint
from runs.live.hub import RunState
from runs.live.storage import LogChunkStorage, event_id

LOG = "log"
STATUS = "status"
METRIC = "metric"
METRIC_PAGE = 500
HEARTBEAT = "heartbeat"


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


def log_frame(event: Event) -> str:
    # The storage already wrote the event's data as JSON.
    return str(sse_encode_event(event.type, event.data, event_id=event_id(event.channel, event.id)))


def log_frames(events: list[Event]) -> str:
    return "".join(log_frame(e) for e in events)


def metric_frame(point: MetricPoint) -> str:
    return encode(METRIC, {"step": point.step, "values": point.values})


def metric_frames(points: list[MetricPoint]) -> str:
    return "".join(metric_frame(p) for p in points)


def mentions_metrics(events: list[Event]) -> bool:
    # The prefix has nothing JSON escapes, so it shows in the event data as printed.
    return any(METRIC_PREFIX in event.data for event in events)


def read_log_page(channel: str, after_seq: int) -> tuple[list[Event], bool]:
    storage: LogChunkStorage = get_storage()
    return storage.get_page(channel, after_seq)
