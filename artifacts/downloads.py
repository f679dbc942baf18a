"""Download responses: one file with validators and byte ranges, or a checkpoint step as a zip.

Both stream from an async iterator that reads in a worker thread, so a slow disk never stalls the
event loop, and rely on `tunixops.api.flow` for a slow client: daphne's `send` only returns
once the connection has room, so the web process holds about one chunk per download. With
`TUNIX_DOWNLOAD_BACKEND=nginx` (or `sendfile`) a single-file download is handed to the front
proxy after the same checks, and the proxy does the ranges.
"""

import asyncio
import contextlib
import os
import re
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO
from urllib.parse import quote

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import get_conditional_response
from django.utils.http import content_disposition_header, http_date
from django.utils.http import parse_http_date_safe as parse_http_date

from artifacts.fs import ArtifactUnavailable, OpenFile, artifact_root, open_in_run_dir
from artifacts.models import Artifact
from runs.models import Run
from tunixops.exceptions import Conflict

READ_CHUNK_BYTES = 4 * 1024 * 1024
OCTET_STREAM = "application/octet-stream"

BACKEND_APP = "app"
BACKEND_NGINX = "nginx"
BACKEND_SENDFILE = "sendfile"
BACKENDS = (BACKEND_APP, BACKEND_NGINX, BACKEND_SENDFILE)


class NotFound(Exception):
    """Nothing may be served; the view answers 404 without saying why."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiable(Exception):
    pass


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*$", re.IGNORECASE)


def parse_range(header: str, size: int) -> ByteRange | None:
    """One byte range of a file of `size` bytes, or None to send the whole file.

    A malformed header, another unit or several ranges are ignored (RFC 9110 lets a server send
    the whole representation instead); a well-formed range past the end raises.
    """
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end)


def quoted_etag(sha256: str) -> str:
    return f'"{sha256}"'


def _if_range_allows(request: HttpRequest, etag: str, last_modified: int) -> bool:
    """A Range applies only if If-Range (when sent) still names this exact representation."""
    value = request.headers.get("If-Range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False  # a weak tag never validates a range
    return parse_http_date(value) == last_modified


def _conditional(request: HttpRequest, etag: str, last_modified: int) -> HttpResponseBase | None:
    """Django's own evaluation of If-Match, If-Unmodified-Since, If-None-Match and
    If-Modified-Since (RFC 9110 order): a 304 or a 412 to send instead, or None."""
    answer = get_conditional_response(request, etag=etag, last_modified=last_modified)
    if answer is None:
        return None
    if answer.status_code == 412:
        error = {
            "code": "precondition_failed",
            "message": "The file no longer matches If-Match or If-Unmodified-Since.",
        }
        answer = JsonResponse({"error": error}, status=412)
    answer["ETag"] = etag
    return answer


def _open_checked(run: Run, artifact: Artifact) -> OpenFile:
    """Open the artifact's file, refusing it unless it is still the file the registry hashed:
    same size, mtime, inode and ctime, so its sha256 (the ETag) still describes its bytes. A
    hard-linked file is not opened at all (artifacts/fs.py)."""
    try:
        opened = open_in_run_dir(run.pk, artifact.name)
    except ArtifactUnavailable as exc:
        raise NotFound from exc
    if not artifact.matches(opened.identity):
        opened.close()
        raise Conflict(
            "The file changed after it was registered; it can be downloaded again once it is "
            "registered again (the worker does that while the run trains; for a finished run, "
            "an operator runs `manage.py tunix_artifacts_sync <run id>`).",
            code="artifact_changed",
        )
    return opened


async def _read_range(opened: OpenFile, start: int, length: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    position, end = start, start + length

    def read_at(offset: int) -> asyncio.Future[bytes]:
        size = min(READ_CHUNK_BYTES, end - offset)
        return loop.run_in_executor(None, os.pread, opened.fd, size, offset)

    # One chunk is read ahead while the previous one drains to the client, so the disk read and
    # the send overlap; memory stays at two chunks whatever the file size.
    pending = read_at(position) if position < end else None
    try:
        while pending is not None:
            chunk = await pending
            if not chunk:
                # The file shrank under us; stop short rather than pad, and let the client see
                # a body shorter than its Content-Length.
                raise OSError("artifact truncated during download")
            position += len(chunk)
            pending = read_at(position) if position < end else None
            yield chunk
    finally:
        if pending is not None:
            # Let a read still in flight finish before its descriptor is closed.
            with contextlib.suppress(OSError):
                await pending
        opened.close()


def _attachment(filename: str) -> str:
    return content_disposition_header(as_attachment=True, filename=filename) or "attachment"


class _Body:
    """A streamed body whose `close()` Django calls when the response ends, whether or not the
    body was ever iterated (a client gone before the first byte), so no descriptor leaks."""

    def __init__(self, chunks: AsyncIterator[bytes], close: Callable[[], None]) -> None:
        self._chunks = chunks
        self.close = close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


def _file_headers(response: HttpResponseBase, artifact: Artifact, mtime_ns: int) -> None:
    response["Content-Type"] = OCTET_STREAM
    response["Content-Disposition"] = _attachment(os.path.basename(artifact.name))
    response["ETag"] = quoted_etag(artifact.sha256)
    response["Last-Modified"] = http_date(mtime_ns // 1_000_000_000)
    response["Accept-Ranges"] = "bytes"
    # Revalidate every time: the same artifact id names a new sha256 if the file is rewritten.
    response["Cache-Control"] = "private, no-cache"


def artifact_download(request: HttpRequest, run: Run, artifact: Artifact) -> HttpResponseBase:
    opened = _open_checked(run, artifact)
    etag = quoted_etag(artifact.sha256)
    last_modified = opened.mtime_ns // 1_000_000_000
    conditional = _conditional(request, etag, last_modified)
    if conditional is not None:
        opened.close()
        return conditional

    backend = settings.TUNIX_DOWNLOAD_BACKEND
    if backend != BACKEND_APP:
        opened.close()
        return _proxy_response(run.pk, artifact, opened.mtime_ns, backend)

    byte_range = None
    range_header = request.headers.get("Range")
    if range_header is not None and _if_range_allows(request, etag, last_modified):
        try:
            byte_range = parse_range(range_header, opened.size)
        except RangeNotSatisfiable:
            opened.close()
            error = {
                "code": "range_not_satisfiable",
                "message": f"The range starts past the end of the file ({opened.size} bytes).",
            }
            unsatisfiable = JsonResponse({"error": error}, status=416)
            unsatisfiable["Content-Range"] = f"bytes */{opened.size}"
            return unsatisfiable
    start, length = (byte_range.start, byte_range.length) if byte_range else (0, opened.size)

    response: HttpResponseBase
    if request.method == "HEAD":
        opened.close()
        response = HttpResponse(status=206 if byte_range else 200)
    else:
        response = StreamingHttpResponse(
            _Body(_read_range(opened, start, length), opened.close),
            status=206 if byte_range else 200,
        )
    _file_headers(response, artifact, opened.mtime_ns)
    response["Content-Length"] = str(length)
    if byte_range:
        response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{opened.size}"
    return response


def _proxy_response(
    run_id: uuid.UUID, artifact: Artifact, mtime_ns: int, backend: str
) -> HttpResponse:
    """Let the front proxy send the bytes (and do Range and If-Range) after our checks passed.

    nginx gets a URI under its `internal` location, so no filesystem path is ever sent; an
    X-Sendfile proxy (Apache mod_xsendfile, lighttpd) needs the path and must strip the header.
    """
    response = HttpResponse()
    _file_headers(response, artifact, mtime_ns)
    # The proxy advertises the ranges it serves; a second Accept-Ranges would be repeated.
    del response["Accept-Ranges"]
    if backend == BACKEND_NGINX:
        prefix = settings.TUNIX_NGINX_INTERNAL_LOCATION
        response["X-Accel-Redirect"] = f"{prefix}{run_id}/{quote(artifact.name, safe='/')}"
    else:
        response["X-Sendfile"] = str(artifact_root() / str(run_id) / artifact.name)
    return response


# --- checkpoint step as one zip -------------------------------------------------------------


def _zip_names(files: list[Artifact], step: int) -> list[str]:
    """Names inside the zip: from the step directory down (`10/model_params/...`), so unzipping
    gives a directory Orbax restores. If one step number appears under two checkpoint roots the
    full names are kept, so nothing collides."""
    step_dir = str(step)
    prefixes = set()
    names = []
    for artifact in files:
        parts = artifact.name.split("/")
        index = parts.index(step_dir) if step_dir in parts else 0
        prefixes.add("/".join(parts[:index]))
        names.append("/".join(parts[index:]))
    return names if len(prefixes) == 1 else [artifact.name for artifact in files]


class _ChunkSink:
    """The write end zipfile writes into; the streamer takes what accumulated after each step.

    It has no `seek`, so zipfile writes each entry's sizes and CRC in a data descriptor after the
    data instead of going back to patch the header: the zip is produced strictly in order.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class ZipStreamer:
    """Produces a stored (uncompressed) zip of already opened files, one bounded chunk per call.

    Checkpoint arrays are close to incompressible, so storing them costs little size and keeps
    the stream as fast as the disk. Files are opened before the first byte is sent: if Orbax
    prunes the step meanwhile, the open descriptors still read the data to the end.
    """

    def __init__(self, entries: list[tuple[str, OpenFile]]) -> None:
        self._entries = entries
        self._sink = _ChunkSink()
        self._zip = zipfile.ZipFile(self._sink, mode="w", compression=zipfile.ZIP_STORED)  # type: ignore[call-overload]
        self._index = 0
        self._current: IO[bytes] | None = None
        self._offset = 0
        self._done = False

    def close(self) -> None:
        for _, opened in self._entries:
            opened.close()

    def next_chunk(self) -> bytes | None:
        """The next piece of the zip, or None once it is complete."""
        while not self._done:
            if self._current is None:
                if self._index == len(self._entries):
                    self._zip.close()
                    self._done = True
                    self.close()
                    break
                self._start_entry()
            opened = self._entries[self._index][1]
            data = os.pread(opened.fd, READ_CHUNK_BYTES, self._offset)
            if data:
                self._offset += len(data)
                assert self._current is not None
                self._current.write(data)
            else:
                self._finish_entry()
            chunk = self._sink.take()
            if chunk:
                return chunk
        chunk = self._sink.take()
        return chunk or None

    def _start_entry(self) -> None:
        name, opened = self._entries[self._index]
        info = zipfile.ZipInfo(name, date_time=_zip_time(opened.mtime_ns))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = opened.size
        self._current = self._zip.open(info, mode="w")
        self._offset = 0

    def _finish_entry(self) -> None:
        opened = self._entries[self._index][1]
        if self._offset != opened.size:
            raise OSError("checkpoint file changed size during download")
        assert self._current is not None
        self._current.close()
        self._current = None
        opened.close()
        self._index += 1


def _zip_time(mtime_ns: int) -> tuple[int, int, int, int, int, int]:
    # The zip format cannot date anything before 1980.
    stamp = time.gmtime(max(mtime_ns // 1_000_000_000, 315532800))
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec)


async def _stream_zip(streamer: ZipStreamer) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while (chunk := await loop.run_in_executor(None, streamer.next_chunk)) is not None:
            yield chunk
    finally:
        streamer.close()


def checkpoint_download(
    request: HttpRequest, run: Run, step: int, files: list[Artifact]
) -> HttpResponseBase:
    entries: list[tuple[str, OpenFile]] = []
    try:
        for name, artifact in zip(_zip_names(files, step), files, strict=True):
            entries.append((name, _open_checked(run, artifact)))
    except BaseException:
        for _, opened in entries:
            opened.close()
        raise
    streamer = ZipStreamer(entries)
    filename = f"run-{run.pk}-step-{step}.zip"
    response: HttpResponseBase
    if request.method == "HEAD":
        streamer.close()
        response = HttpResponse()
    else:
        response = StreamingHttpResponse(_Body(_stream_zip(streamer), streamer.close))
    response["Content-Type"] = "application/zip"
    response["Content-Disposition"] = _attachment(filename)
    response["Cache-Control"] = "private, no-cache"
    return response
