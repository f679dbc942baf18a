"""Incremental, batched capture of a child's output into `LogChunk` rows.

Reader threads hand raw bytes to `write()`; one writer thread turns whatever has accumulated into
rows in a single transaction (COPY on PostgreSQL), so a chatty child costs one commit per batch
rather than one per line, while a quiet child's line is written as soon as it arrives. The buffer
is bounded: when the database is slow or away, `write()` blocks, the pipe fills and the child
waits. Nothing the child prints is dropped; past `max_bytes` it is no longer stored, which the run
records, and the tails of both streams are always kept.

Training metric lines on stdout (runs/entrypoints/protocol.py) are parsed on the way in, stored as
`RunMetric` rows in the same transaction as the batch's chunks, however large the log has grown.

Poison output cannot wedge the sink: NUL characters (which PostgreSQL text refuses) become U+FFFD
as the bytes are decoded, as invalid UTF-8 already does. Writes are retried only while the
database is unreachable (runs/execution/retry.py); a batch the database refuses for its content is
stored row by row, and a row it still refuses is replaced by a `[tunixops]` line saying what was
dropped, so every byte is stored or accounted for and capture goes on.
"""

import codecs
import functools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from runs.entrypoints.protocol import MetricLineReader, MetricPoint, Values
from runs.execution.retry import retrying
from runs.live import notify
from runs.models import LogChunk, LogStream, Run, RunMetric
from tunixops import telemetry
from tunixops.text import storable
from webhooks.services import metric_events_record

log = logging.getLogger(__name__)

CHUNK_MAX_CHARS = 64 * 1024
TAIL_CHARS = 16 * 1024
BATCH_MAX_CHARS = 4 * 1024 * 1024


@dataclass
class _Partial:
    text: str = ""
    since: float = 0.0


class LogSink:
    def __init__(
        self,
        run_id: uuid.UUID,
        *,
        max_bytes: int,
        flush_interval: float = 0.05,
        buffer_limit: int = 16 * 1024 * 1024,
    ) -> None:
        self.run_id = run_id
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.buffer_limit = buffer_limit
        self.truncated = False
        self.tails = {LogStream.STDOUT: "", LogStream.STDERR: ""}
        self._decoders = {
            s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in LogStream
        }
        self._partials = {s: _Partial() for s in LogStream}
        # (stream, text, position): `position` is set on the last piece of a record of a job's
        # output file (write_record), and stored with the batch that holds that piece.
        self._queue: deque[tuple[str, str, int | None]] = deque()
        self._metric_reader = MetricLineReader()
        self._metric_points: list[MetricPoint] = []
        self._queued_chars = 0
        self._cond = threading.Condition()
        self._closing = False
        self._writer: threading.Thread | None = None
        self._next_seq = 1
        self._stored_bytes = 0

    # -- reader side -------------------------------------------------------------------------

    def start(self) -> None:
        run = Run.objects.only("log_bytes", "log_truncated").get(pk=self.run_id)
        last = LogChunk.objects.filter(run_id=self.run_id).aggregate(m=Max("seq"))["m"]
        self._next_seq = (last or 0) + 1
        self._stored_bytes = run.log_bytes
        self.truncated = run.log_truncated
        self._writer = threading.Thread(
            target=self._write_loop, name=f"logsink-{self.run_id}", daemon=True
        )
        self._writer.start()

    def write(self, stream: str, data: bytes) -> None:
        """Take raw bytes from one pipe; blocks while the buffer is full (backpressure)."""
        text = storable(self._decoders[LogStream(stream)].decode(data))
        if text:
            self._add(LogStream(stream), text, points=self._read_metrics(stream, text))

    def write_record(self, stream: str, data: bytes, position: int) -> None:
        """Take output already cut at line ends (a record of a Ray job's output file,
        runs/entrypoints/ray_job.py); `position`, how far into that file it reaches, is stored
        in `Run.job_output_offset` in the same transaction as the text, so a worker that
        takes the job over resumes exactly after what is stored."""
        text = storable(self._decoders[LogStream(stream)].decode(data))
        self._add(
            LogStream(stream),
            text,
            whole=True,
            points=self._read_metrics(stream, text),
            position=position,
        )

    def system(self, message: str) -> None:
        """A line from TunixOps itself, shown in the run's log like the child's own."""
        self._add(LogStream.STDERR, f"[tunixops] {message}\n", whole=True)

    def close(self, timeout: float | None = None) -> None:
        """Flush everything, including unterminated lines, and stop the writer."""
        for stream, decoder in self._decoders.items():
            rest = storable(decoder.decode(b"", final=True))
            if rest:
                self._add(stream, rest, points=self._read_metrics(stream, rest))
        with self._cond:
            self._metric_points.extend(self._metric_reader.finish())
            for stream in LogStream:
                self._flush_partial(stream)
            self._closing = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)

    def _read_metrics(self, stream: str, text: str) -> list[MetricPoint]:
        # Only the stdout reader thread feeds the reader, so it needs no lock.
        return self._metric_reader.feed(text) if stream == LogStream.STDOUT else []

    def _add(
        self,
        stream: LogStream,
        text: str,
        *,
        whole: bool = False,
        points: list[MetricPoint] | None = None,
        position: int | None = None,
    ) -> None:
        tail = self.tails[stream] + text
        self.tails[stream] = tail[-TAIL_CHARS:]
        with self._cond:
            while self._queued_chars >= self.buffer_limit and not self._closing:
                self._cond.wait(0.5)
            if points:
                self._metric_points.extend(points)
            partial = self._partials[stream]
            if whole:
                # Keep a half-written child line and our own line apart.
                self._flush_partial(stream)
                self._enqueue(stream, text, position)
            else:
                if not partial.text:
                    partial.since = time.monotonic()
                partial.text += text
                cut = partial.text.rfind("\n") + 1
                if cut:
                    self._enqueue(stream, partial.text[:cut])
                    partial.text = partial.text[cut:]
                    partial.since = time.monotonic()
                # An endless line is stored in pieces rather than held in memory.
                while len(partial.text) >= CHUNK_MAX_CHARS:
                    self._enqueue(stream, partial.text[:CHUNK_MAX_CHARS])
                    partial.text = partial.text[CHUNK_MAX_CHARS:]
            self._cond.notify_all()

    def _enqueue(self, stream: LogStream, text: str, position: int | None = None) -> None:
        starts = range(0, len(text), CHUNK_MAX_CHARS)
        for start in starts:
            piece = text[start : start + CHUNK_MAX_CHARS]
            last = start == starts[-1]
            self._queue.append((stream, piece, position if last else None))
            self._queued_chars += len(piece)
        if not text and position is not None:
            # Nothing to show (bytes the decoder holds), but the file was read this far.
            self._queue.append((stream, "", position))

    def _flush_partial(self, stream: LogStream) -> None:
        partial = self._partials[stream]
        if partial.text:
            self._enqueue(stream, partial.text)
            partial.text = ""

    # -- writer side -------------------------------------------------------------------------

    def _take_batch(self) -> tuple[list[tuple[str, str, int | None]], list[MetricPoint]] | None:
        with self._cond:
            while True:
                now = time.monotonic()
                for stream, partial in self._partials.items():
                    if partial.text and now - partial.since >= self.flush_interval:
                        self._flush_partial(stream)
                if self._queue or self._metric_points:
                    break
                if self._closing:
                    return None
                self._cond.wait(self.flush_interval)
            batch: list[tuple[str, str, int | None]] = []
            size = 0
            while self._queue and size < BATCH_MAX_CHARS:
                item = self._queue.popleft()
                batch.append(item)
                size += len(item[1])
            self._queued_chars -= size
            points, self._metric_points = self._metric_points, []
            self._cond.notify_all()
            return batch, points

    def _write_loop(self) -> None:
        try:
            while (taken := self._take_batch()) is not None:
                try:
                    self._store_batch(*taken)
                except Exception as exc:
                    # Whatever went wrong, the writer must live on: a dead writer would block
                    # the pipes' readers, and so the child, for good.
                    log.exception("run %s: a log batch was lost", self.run_id)
                    size = sum(len(text.encode()) for _, text, _ in taken[0])
                    self._store_note(f"{size} bytes of output were lost", exc)
        finally:
            connection.close()

    def _store_batch(
        self, batch: list[tuple[str, str, int | None]], points: list[MetricPoint]
    ) -> None:
        rows = self._budget(batch)
        position = max((p for _, _, p in batch if p is not None), default=None)
        # One row per step: within a batch, as in the table, the latest report of a step wins.
        steps = {point.step: point.values for point in points}

        def refused(exc: DatabaseError) -> None:
            # The commit may have landed with its acknowledgement lost: keep what is stored.
            lost_ack = isinstance(exc, IntegrityError) and rows
            if lost_ack and self._last_stored_seq() >= rows[-1][0]:
                return
            self._store_one_by_one(rows, steps, exc)
            if position is not None:
                self._try(lambda: self._store([], {}, position))

        retrying(
            lambda: self._store(rows, steps, position),
            what=f"run {self.run_id}: log write",
            refused=refused,
            extra={"run_id": str(self.run_id)},
        )

    def _last_stored_seq(self) -> int:
        last = LogChunk.objects.filter(run_id=self.run_id).aggregate(m=Max("seq"))["m"]
        return int(last or 0)

    def _store_one_by_one(
        self, rows: list[tuple[int, str, str]], steps: dict[int, Values], error: DatabaseError
    ) -> None:
        """The batch was refused: store what the database takes, line by line where a chunk is
        refused, and put a `[tunixops]` note in the place of each line it still refuses."""
        log.warning("run %s: storing a refused log batch row by row: %s", self.run_id, error)
        last = self._last_stored_seq()
        # Seqs are handed out again from the last stored one, so the log keeps no gap.
        self._next_seq = last + 1
        for seq, stream, text in rows:
            if seq <= last or self._try_store(stream, text):
                continue
            for line in text.splitlines(keepends=True):
                if not self._try_store(stream, line):
                    self._store_note(f"{len(line.encode())} bytes of {stream} were dropped", error)
        for step, values in steps.items():
            if not self._try(functools.partial(self._store, [], {step: values})):
                names = ", ".join(sorted(values))
                self._store_note(f"metrics of step {step} were dropped ({names})", error)

    def _try(self, write: Callable[[], None]) -> bool:
        """Whether the write was stored; retried while the database is unreachable."""

        def stored() -> bool:
            write()
            return True

        return retrying(stored, what=f"run {self.run_id}: log write", refused=lambda exc: False)

    def _try_store(self, stream: str, text: str) -> bool:
        seq = self._next_seq
        if self._try(lambda: self._store([(seq, stream, text)], {})):
            self._next_seq += 1
            return True
        return False

    def _store_note(self, note: str, error: BaseException) -> None:
        message = storable(f"[tunixops] {note}: the database refused it ({_first_line(error)})\n")
        if not self._try_store(LogStream.STDERR, message):
            log.error("run %s: even the note was refused: %s", self.run_id, note)

    def _budget(self, batch: list[tuple[str, str, int | None]]) -> list[tuple[int, str, str]]:
        """Assign seqs and apply TUNIX_LOG_MAX_BYTES: what does not fit is not stored."""
        rows: list[tuple[int, str, str]] = []
        for stream, text, _ in batch:
            if self.truncated:
                break
            if not text:
                continue
            size = len(text.encode())
            if self._stored_bytes + size > self.max_bytes:
                room = self.max_bytes - self._stored_bytes
                head = text.encode()[: max(room, 0)].decode(errors="ignore")
                if head:
                    rows.append((self._next_seq, stream, head))
                    self._next_seq += 1
                    self._stored_bytes += len(head.encode())
                self.truncated = True
                rows.append(
                    (
                        self._next_seq,
                        LogStream.STDERR,
                        f"\n[tunixops] log truncated at {self.max_bytes} bytes "
                        "(TUNIX_LOG_MAX_BYTES); the final output is kept in the run's tails\n",
                    )
                )
                self._next_seq += 1
                break
            rows.append((self._next_seq, stream, text))
            self._next_seq += 1
            self._stored_bytes += size
        return rows

    def _store(
        self,
        rows: list[tuple[int, str, str]],
        steps: dict[int, Values],
        position: int | None = None,
    ) -> None:
        if not rows and not steps and position is None:
            return
        now = timezone.now()
        added = sum(len(text.encode()) for _, _, text in rows)
        with transaction.atomic():
            if steps:
                # An upsert, so a retried batch or a resumed attempt rewrites rather than fails.
                RunMetric.objects.bulk_create(
                    [RunMetric(run_id=self.run_id, step=s, values=v) for s, v in steps.items()],
                    update_conflicts=True,
                    unique_fields=["run", "step"],
                    update_fields=["values"],
                )
                # Threshold and non-finite events, in the same transaction as the metrics.
                metric_events_record(run_id=self.run_id, steps=steps)
            if connection.vendor == "postgresql":
                # The raw COPY raises psycopg's own errors: wrapped, they are Django's, which the
                # retry helper tells apart (a lost connection is retried, refused content is not).
                with connection.wrap_database_errors, connection.cursor() as cursor:
                    copy_sql = (
                        "COPY tunix_run_log_chunks (run_id, seq, stream, chunk, created_at) "
                        "FROM STDIN"
                    )
                    with cursor.cursor.copy(copy_sql) as copy:
                        for seq, stream, text in rows:
                            copy.write_row((self.run_id, seq, stream, text, now))
            else:
                LogChunk.objects.bulk_create(
                    LogChunk(run_id=self.run_id, seq=seq, stream=stream, chunk=text, created_at=now)
                    for seq, stream, text in rows
                )
            progress: dict[str, object] = {}
            if position is not None:
                progress["job_output_offset"] = position
            Run.objects.filter(pk=self.run_id).update(
                log_bytes=F("log_bytes") + added, log_truncated=self.truncated, **progress
            )
            # Metrics without chunks (the log is truncated) still wake the run's streams.
            last_seq = rows[-1][0] if rows else self._next_seq - 1
            transaction.on_commit(lambda: notify.logs_appended(self.run_id, last_seq))
        telemetry.log_stored(chunks=len(rows), size=added)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
