"""Incremental, batched capture of a child's output into `LogChunk` rows.

Reader threads hand raw bytes to `write()`; one writer thread turns whatever has accumulated into
rows in a single transaction (COPY on PostgreSQL), so a chatty child costs one commit per batch
rather than one per line, while a quiet child's line is written as soon as it arrives. The buffer
is bounded: when the database is slow or away, `write()` blocks, the pipe fills and the child
waits. Nothing the child prints is dropped; past `max_bytes` it is no longer stored, which the run
records, and the tails of both streams are always kept.

Training metric lines on stdout (runs/training_metrics.py) are parsed on the way in and stored as
`RunMetric` rows in the same transaction as the batch's chunks, however large the log has grown.
"""

import codecs
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from django.db import Error, IntegrityError, connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from runs import notify
from runs.models import LogChunk, LogStream, Run, RunMetric
from runs.training_metrics import MetricLineReader, MetricPoint, Values
from tunixops import metrics

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
        self._queue: deque[tuple[str, str]] = deque()
        self._metric_reader = MetricLineReader()
        self._metric_points: list[MetricPoint] = []
        self._queued_chars = 0
        self._cond = threading.Condition()
        self._closing = False
        self._writer: threading.Thread | None = None
        self._next_seq = 1
        self._stored_bytes = 0
        self.last_error: str = ""

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
        text = self._decoders[LogStream(stream)].decode(data)
        if text:
            self._add(LogStream(stream), text, points=self._read_metrics(stream, text))

    def system(self, message: str) -> None:
        """A line from TunixOps itself, shown in the run's log like the child's own."""
        self._add(LogStream.STDERR, f"[tunixops] {message}\n", whole=True)

    def close(self, timeout: float | None = None) -> None:
        """Flush everything, including unterminated lines, and stop the writer."""
        for stream, decoder in self._decoders.items():
            rest = decoder.decode(b"", final=True)
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
                self._enqueue(stream, text)
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

    def _enqueue(self, stream: LogStream, text: str) -> None:
        for start in range(0, len(text), CHUNK_MAX_CHARS):
            piece = text[start : start + CHUNK_MAX_CHARS]
            self._queue.append((stream, piece))
            self._queued_chars += len(piece)

    def _flush_partial(self, stream: LogStream) -> None:
        partial = self._partials[stream]
        if partial.text:
            self._enqueue(stream, partial.text)
            partial.text = ""

    # -- writer side -------------------------------------------------------------------------

    def _take_batch(self) -> tuple[list[tuple[str, str]], list[MetricPoint]] | None:
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
            batch: list[tuple[str, str]] = []
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
                self._store_with_retry(*taken)
        finally:
            connection.close()

    def _store_with_retry(self, batch: list[tuple[str, str]], points: list[MetricPoint]) -> None:
        rows = self._budget(batch)
        # One row per step: within a batch, as in the table, the latest report of a step wins.
        steps = {point.step: point.values for point in points}
        delay = 0.1
        while True:
            try:
                self._store(rows, steps)
                return
            except IntegrityError:
                # The commit landed but its acknowledgement was lost: keep what is stored.
                last = LogChunk.objects.filter(run_id=self.run_id).aggregate(m=Max("seq"))["m"]
                rows = [r for r in rows if r[0] > (last or 0)]
            except Error as exc:
                # Error, not DatabaseError: a connection cut by a server restart raises
                # InterfaceError on its next use.
                self.last_error = str(exc)
                log.warning(
                    "run %s: log write failed, retrying in %.1fs: %s", self.run_id, delay, exc
                )
                connection.close()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _budget(self, batch: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
        """Assign seqs and apply TUNIX_LOG_MAX_BYTES: what does not fit is not stored."""
        rows: list[tuple[int, str, str]] = []
        for stream, text in batch:
            if self.truncated:
                break
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

    def _store(self, rows: list[tuple[int, str, str]], steps: dict[int, Values]) -> None:
        if not rows and not steps:
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
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
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
            Run.objects.filter(pk=self.run_id).update(
                log_bytes=F("log_bytes") + added, log_truncated=self.truncated
            )
            # Metrics without chunks (the log is truncated) still wake the run's streams.
            last_seq = rows[-1][0] if rows else self._next_seq - 1
            transaction.on_commit(lambda: notify.logs_appended(self.run_id, last_seq))
        metrics.log_stored(chunks=len(rows), size=added)
