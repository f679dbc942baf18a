"""django-eventstream over the log-chunk table.

The library's storage extension point (`EVENTSTREAM_STORAGE_CLASS`) reads our `LogChunk` rows, so
its event ids are our seqs and no log line is copied into a second table. One channel per run,
`run-<uuid>`; the SSE id of a log event is the library's `<channel>:<seq>`.
"""

import json
import re
import uuid
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import unquote

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Max
from django.db.models.functions import Length
from django_eventstream.event import Event
from django_eventstream.storage import StorageBase
from django_eventstream.utils import make_id, parse_last_event_id

from runs.models import LogChunk

CHANNEL_PREFIX = "run-"
# LogChunk.seq is a PositiveIntegerField: anything larger cannot name a chunk.
MAX_SEQ = 2_147_483_647
_SEQ = re.compile(r"[0-9]{1,10}")
# One read of a stream: at most this many chunks, and past the first, this much text.
PAGE_EVENTS = 500
PAGE_CHARS = 256 * 1024


def log_channel(run_id: uuid.UUID) -> str:
    return f"{CHANNEL_PREFIX}{run_id}"


def channel_run_id(channel: str) -> uuid.UUID:
    if not channel.startswith(CHANNEL_PREFIX):
        raise ValueError(f"not a run log channel: {channel!r}")
    return uuid.UUID(channel.removeprefix(CHANNEL_PREFIX))


def event_id(channel: str, seq: int) -> str:
    return str(make_id({channel: seq}))


def _seq(text: str) -> int | None:
    if not _SEQ.fullmatch(text) or int(text) > MAX_SEQ:
        return None
    return int(text)


def resume_after(last_event_id: str | None, channel: str) -> int | None:
    """The seq a Last-Event-ID names, or None when it is absent, malformed or another run's.

    Accepts the ids this stream writes (`run-<uuid>:<seq>`) and a bare seq. Anything else is
    ignored rather than refused: a browser's EventSource that gets an error answer (or an event
    whose id is the library's `error`) stops reconnecting for good.
    """
    if not last_event_id:
        return None
    value = last_event_id.strip()
    bare = _seq(value)
    if bare is not None:
        return bare
    try:
        ids = {unquote(name): seq for name, seq in parse_last_event_id(value).items()}
    except ValueError:
        return None
    seq = ids.get(channel)
    return None if seq is None else _seq(seq)


def log_event_data(seq: int, stream: str, chunk: str, created_at: datetime) -> str:
    return json.dumps(
        {"seq": seq, "stream": stream, "chunk": chunk, "created_at": created_at},
        cls=DjangoJSONEncoder,
    )


class LogChunkStorage(StorageBase):  # type: ignore[misc]
    """Read-only storage: the worker's log sink is the only writer of log chunks."""

    def append_event(self, channel: str, event_type: str, data: Any) -> NoReturn:
        raise NotImplementedError("Log chunks are written by the worker, not through send_event.")

    def get_page(
        self, channel: str, last_id: int, limit: int = PAGE_EVENTS
    ) -> tuple[list[Event], bool]:
        """Up to `limit` events after `last_id`, and whether more follow.

        A page also stops once it holds PAGE_CHARS of text (it always holds at least one chunk),
        so what a stream keeps in memory is bounded however large the chunks are. The sizes are
        read first so that rows past the budget never leave the database.
        """
        chunks = LogChunk.objects.filter(run_id=channel_run_id(channel), seq__gt=last_id)
        sizes = list(
            chunks.order_by("seq").annotate(size=Length("chunk")).values_list("seq", "size")[:limit]
        )
        if not sizes:
            return [], False
        last, total = sizes[0][0], 0
        for seq, size in sizes:
            if total and total + size > PAGE_CHARS:
                break
            last, total = seq, total + size
        rows = (
            chunks.filter(seq__lte=last)
            .order_by("seq")
            .values_list("seq", "stream", "chunk", "created_at")
        )
        events = [
            Event(channel, "log", log_event_data(seq, stream, chunk, created_at), id=seq)
            for seq, stream, chunk, created_at in rows
        ]
        return events, last != sizes[-1][0] or len(sizes) == limit

    def get_events(self, channel: str, last_id: int, limit: int = PAGE_EVENTS) -> list[Event]:
        return self.get_page(channel, last_id, limit)[0]

    def get_current_id(self, channel: str) -> int:
        last = LogChunk.objects.filter(run_id=channel_run_id(channel)).aggregate(m=Max("seq"))
        return int(last["m"] or 0)
