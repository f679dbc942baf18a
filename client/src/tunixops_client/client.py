"""The Python API: `Client(url, token)` with `.runs`, `.recipes`, `.artifacts`, `.traces` and
`.datasets`, each method one API operation (or a loop of them, such as following a log)."""

import builtins
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
from httpx_sse import SSEError, connect_sse

from tunixops_client import __version__
from tunixops_client.config import normalise_url, resolve
from tunixops_client.errors import (
    ApiError,
    IntegrityError,
    InvalidInput,
    TooLarge,
    TransportError,
    TunixOpsError,
    UnsafePathError,
    error_for,
)
from tunixops_client.models import (
    Artifact,
    Download,
    LogLine,
    MetricPoint,
    PushResult,
    Recipe,
    Run,
    RunStatus,
)

# Called with (bytes done, bytes or items in all) as a transfer goes on.
Progress = Callable[[int, int], None]
FollowItem = LogLine | MetricPoint | RunStatus

MAX_TRACE_BATCH = 1000
DEFAULT_TRACE_BATCH_BYTES = 16 * 1024 * 1024
CHUNK = 1 << 20


def login(url: str, username: str, password: str, *, timeout: float = 30.0) -> str:
    """The user's API token for this username and password (`POST /api/auth/token`)."""
    with httpx.Client(base_url=normalise_url(url), timeout=timeout) as http:
        try:
            response = http.post(
                "/api/auth/token", json={"username": username, "password": password}
            )
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach {url}: {exc}") from exc
        body = _checked(response)
    return str(body["token"])


class Client:
    """One server and one token. Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        reconnect_for: float = 300.0,
    ) -> None:
        self.url = normalise_url(url)
        # How long following a log keeps trying to reconnect to a server that went away.
        self.reconnect_for = reconnect_for
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Token {token}",
                "User-Agent": f"tunixops-client/{__version__}",
            },
            timeout=timeout,
        )
        self.runs = Runs(self)
        self.recipes = Recipes(self)
        self.artifacts = Artifacts(self)
        self.traces = Traces(self)
        self.datasets = Datasets(self)

    @classmethod
    def from_config(cls, url: str | None = None, token: str | None = None, **kw: Any) -> "Client":
        """Flags, then TUNIXOPS_URL / TUNIXOPS_TOKEN, then the config file `tunixops login`
        wrote."""
        settings = resolve(url, token)
        return cls(settings.url, settings.token, **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def whoami(self) -> dict[str, Any]:
        return dict(self.request("GET", "/api/auth/whoami"))

    # -- plumbing -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
    ) -> Any:
        """One call; the decoded JSON answer, or the typed error of a 4xx or 5xx."""
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(
                method, path, json=json_body, content=content, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {self.url}{path}: {exc}") from exc
        return _checked(response)

    def stream(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._http.stream(method, path, **kwargs)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _error_of(response: httpx.Response) -> ApiError:
    if not response.is_closed:
        response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_for(response.status_code, body, _retry_after(response), response.text)


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error_of(response)
    if not response.content:
        return None
    return response.json()


# -- runs and recipes -------------------------------------------------------------------------


class Recipes:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> builtins.list[Recipe]:
        return [Recipe.from_api(r) for r in self._client.request("GET", "/api/tunix/recipes")]

    def get(self, name: str) -> Recipe:
        recipes = self.list()
        for recipe in recipes:
            if recipe.name == name:
                return recipe
        names = ", ".join(r.name for r in recipes) or "none"
        raise InvalidInput(
            0, "invalid", "Invalid input.", {"recipe": [f"unknown recipe {name!r} ({names})"]}
        )


class Runs:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        recipe: str,
        *,
        config: dict[str, Any] | None = None,
        settings: dict[str, str] | None = None,
        dataset: str | None = None,
        model: str | None = None,
        name: str | None = None,
        priority: int | None = None,
        timeout_seconds: int | None = None,
        max_attempts: int | None = None,
        pool: str | None = None,
        devices: int | None = None,
    ) -> Run:
        """Enqueue a run. `settings` are `key=value` texts typed by the recipe's schema (as on
        the command line); `config` holds values already typed; both may be given."""
        merged = dict(config or {})
        if settings:
            merged.update(self._client.recipes.get(recipe).typed_config(settings))
        body: dict[str, Any] = {"recipe": recipe, "config": merged}
        optional = {
            "dataset_key": dataset,
            "model_id": model,
            "name": name,
            "priority": priority,
            "timeout_seconds": timeout_seconds,
            "max_attempts": max_attempts,
            "pool": pool,
            "devices": devices,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        created = self._client.request("POST", "/api/tunix/run", json_body=body)
        return self.get(str(created["run_id"]))

    def get(self, run_id: str) -> Run:
        return Run.from_api(self._client.request("GET", f"/api/tunix/runs/{_id(run_id)}"))

    def status(self, run_id: str) -> RunStatus:
        path = f"/api/tunix/runs/{_id(run_id)}/status"
        return RunStatus.from_api(self._client.request("GET", path))

    def list(
        self,
        *,
        status: str | None = None,
        recipe: str | None = None,
        created_by: str | None = None,
        dataset: str | None = None,
        limit: int = 50,
    ) -> builtins.list[Run]:
        """Newest first, at most `limit` runs (pages of up to 100 are fetched as needed)."""
        params = {
            k: v
            for k, v in {
                "status": status,
                "recipe": recipe,
                "created_by": created_by,
                "dataset_key": dataset,
            }.items()
            if v
        }
        runs: builtins.list[Run] = []
        page = 1
        while len(runs) < limit:
            size = min(100, limit - len(runs)) if page == 1 else 100
            body = self._client.request(
                "GET", "/api/tunix/runs", params={**params, "page": page, "page_size": size}
            )
            runs += [Run.from_api(r) for r in body["results"]]
            if not body.get("next"):
                break
            page += 1
        return runs[:limit]

    def cancel(self, run_id: str, reason: str = "") -> RunStatus:
        path = f"/api/tunix/runs/{_id(run_id)}/cancel"
        return RunStatus.from_api(self._client.request("POST", path, json_body={"reason": reason}))

    def rerun(self, run_id: str) -> Run:
        """A new pending run with the finished run's settings (`POST .../requeue`)."""
        path = f"/api/tunix/runs/{_id(run_id)}/requeue"
        created = self._client.request("POST", path, json_body={})
        return self.get(str(created["run_id"]))

    def continue_(
        self,
        run_id: str,
        *,
        step: int | None = None,
        recipe: str | None = None,
        settings: dict[str, str] | None = None,
        name: str | None = None,
    ) -> Run:
        """A new run starting from a finished run's checkpoint step (its last by default); with
        `recipe`, a fork into a recipe that can start from it (`POST .../continue`)."""
        config: dict[str, Any] = {}
        if settings:
            target = recipe or self.get(run_id).data["recipe"]
            config = self._client.recipes.get(target).typed_config(settings)
        body: dict[str, Any] = {"config": config}
        optional = {"step": step, "recipe": recipe, "name": name}
        body.update({k: v for k, v in optional.items() if v is not None})
        path = f"/api/tunix/runs/{_id(run_id)}/continue"
        created = self._client.request("POST", path, json_body=body)
        return self.get(str(created["run_id"]))

    def snapshot(self, run_id: str, lines: int = 200) -> dict[str, Any]:
        """`{run_id, lines: [{seq, stream, text}], last_seq, truncated}`: the last `lines`."""
        path = f"/api/tunix/runs/{_id(run_id)}/logs/snapshot"
        return dict(self._client.request("GET", path, params={"lines": lines}))

    def metrics(self, run_id: str, *, since_step: int | None = None) -> builtins.list[MetricPoint]:
        params: dict[str, Any] = {"max_points": 10_000}
        if since_step is not None:
            params["since_step"] = since_step
        body = self._client.request("GET", f"/api/tunix/runs/{_id(run_id)}/metrics", params=params)
        return [MetricPoint(int(p["step"]), dict(p["values"])) for p in body["points"]]

    def wait(self, run_id: str, *, timeout: float | None = None, interval: float = 1.0) -> Run:
        """Poll until the run is finished (or `timeout` seconds pass) and return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get(run_id)
            if run.terminal or (deadline is not None and time.monotonic() >= deadline):
                return run
            time.sleep(interval)

    def logs(self, run_id: str, *, since_seq: int = 0) -> Iterator[LogLine]:
        """The log as it stands now, after `since_seq`, whole, without following it."""
        end = int(self.snapshot(run_id, lines=0)["last_seq"])
        if end <= since_seq:
            return
        for item in self.follow(run_id, since_seq=since_seq, metrics=False, until_seq=end):
            if isinstance(item, LogLine):
                yield item

    def follow(
        self,
        run_id: str,
        *,
        since_seq: int = 0,
        since_step: int | None = None,
        metrics: bool = True,
        until_seq: int | None = None,
    ) -> Iterator[FollowItem]:
        """The run's log lines, metric points and status changes as they happen, until it ends.

        Lines come in order from after `since_seq`, each exactly once: when the connection
        breaks or the server restarts, it reconnects with `Last-Event-ID` (for up to the
        client's `reconnect_for` seconds of failed attempts) and goes on from the last line it
        yielded. Metric points are those after `since_step`, or, without it, those recorded from
        now on. The last item is the terminal `RunStatus`.
        """
        run = _id(run_id)
        path = f"/api/tunix/runs/{run}/logs"
        last_seq = since_seq
        last_step = since_step
        last_status: str | None = None
        failing_since: float | None = None
        delay = 0.2
        while True:
            params: dict[str, Any] = {"since_seq": last_seq}
            if metrics and last_step is not None:
                params["since_step"] = max(last_step, 0)
            headers = {"Last-Event-ID": f"run-{run}:{last_seq}"} if last_seq else {}
            try:
                with connect_sse(
                    self._client._http,
                    "GET",
                    path,
                    params=params,
                    headers=headers,
                    # Idle streams send a heartbeat every 15 s by default: a minute of
                    # silence is a dead connection.
                    timeout=httpx.Timeout(10.0, read=60.0),
                ) as source:
                    response = source.response
                    if response.status_code != 200:
                        error = _error_of(response)
                        # 429 (too many open streams) and 5xx (restarting) pass; others do not.
                        if error.status < 500 and error.status != 429:
                            raise error
                        if error.retry_after:
                            time.sleep(min(error.retry_after, 30.0))
                        raise _Retry(str(error))
                    failing_since, delay = None, 0.2
                    for event in source.iter_sse():
                        if event.event == "log":
                            data = event.json()
                            seq = int(data["seq"])
                            if seq <= last_seq:
                                continue  # already yielded before a reconnect
                            last_seq = seq
                            yield from _lines(seq, str(data["stream"]), str(data["chunk"]))
                            if until_seq is not None and seq >= until_seq:
                                return
                        elif event.event == "metric" and metrics:
                            data = event.json()
                            step = int(data["step"])
                            if last_step is not None and step <= last_step:
                                continue
                            last_step = step
                            yield MetricPoint(step, dict(data["values"]))
                        elif event.event == "status":
                            status = RunStatus.from_api(event.json())
                            if status.status != last_status:
                                last_status = status.status
                                if until_seq is None or status.terminal:
                                    yield status
                            if status.terminal:
                                return
                    # The stream ended without a terminal status: the server went away.
            except (httpx.TransportError, SSEError, _Retry) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._client.reconnect_for:
                    raise TransportError(
                        f"lost the log stream of run {run} and could not reconnect for "
                        f"{self._client.reconnect_for:g} s: {exc}"
                    ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class _Retry(Exception):
    """A 5xx while (re)connecting: the server is restarting or overloaded; try again."""


def _lines(seq: int, stream: str, chunk: str) -> Iterator[LogLine]:
    parts = chunk.split("\n")
    for text in parts[:-1]:
        yield LogLine(seq, stream, text)
    if parts[-1]:
        yield LogLine(seq, stream, parts[-1], complete=False)


def _id(run_id: str) -> str:
    """Run ids go into URL paths: refuse anything that is not a plain id."""
    text = str(run_id).strip()
    if not text or not all(c.isalnum() or c == "-" for c in text):
        raise InvalidInput(0, "invalid", "Invalid input.", {"run_id": [f"not a run id: {text!r}"]})
    return text


# -- artifacts ----------------------------------------------------------------------------------


class Artifacts:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, run_id: str) -> builtins.list[Artifact]:
        """Every file of the run, by name: the server lists them in pages of up to 100."""
        path = f"/api/tunix/runs/{_id(run_id)}/artifacts"
        artifacts: builtins.list[Artifact] = []
        page = 1
        while True:
            body = self._client.request("GET", path, params={"page": page, "page_size": 100})
            artifacts += [Artifact.from_api(a) for a in body["results"]]
            if not body.get("next"):
                return artifacts
            page += 1

    def checkpoints(self, run_id: str) -> builtins.list[dict[str, Any]]:
        return list(self._client.request("GET", f"/api/tunix/runs/{_id(run_id)}/checkpoints"))

    def select(
        self,
        run_id: str,
        *,
        artifact_id: int | None = None,
        step: int | None = None,
        every: bool = False,
    ) -> builtins.list[Artifact]:
        """The artifacts that one of `artifact_id`, `step` or `every` picks."""
        if sum((artifact_id is not None, step is not None, every)) != 1:
            raise ValueError("give exactly one of artifact_id, step or every")
        found = self.list(run_id)
        if artifact_id is not None:
            found = [a for a in found if a.id == artifact_id]
            what = f"artifact {artifact_id}"
        elif step is not None:
            found = [a for a in found if a.step == step]
            what = f"checkpoint step {step}"
        else:
            what = "artifacts"
        if not found:
            steps = sorted({a.step for a in self.list(run_id) if a.step is not None})
            hint = f" (checkpoint steps: {', '.join(map(str, steps))})" if steps else ""
            raise InvalidInput(0, "not_found", f"run {run_id} has no {what}{hint}")
        return found

    def download(
        self,
        run_id: str,
        artifact: Artifact | int,
        dest: str | os.PathLike[str] = ".",
        *,
        progress: Progress | None = None,
        retries: int = 3,
    ) -> Download:
        """Fetch one file to `dest/<its name>`, resuming a `.part` left by an interrupted
        download with a Range request, and checking the sha256 before it takes its name."""
        if not isinstance(artifact, Artifact):
            artifact = self.select(run_id, artifact_id=artifact)[0]
        target = safe_target(Path(dest), artifact.name)
        if (
            target.is_file()
            and target.stat().st_size == artifact.size_bytes
            and sha256_file(target) == artifact.sha256
        ):
            return Download(artifact, str(target), resumed_from=0, skipped=True)
        part = target.with_name(target.name + ".part")
        resumed_from = _size(part)
        for attempt in range(retries + 1):
            try:
                self._fetch(run_id, artifact, part, progress)
                break
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise TransportError(
                        f"download of {artifact.name} broke {retries + 1} times: {exc}"
                    ) from exc
                time.sleep(min(0.5 * 2**attempt, 5.0))
        digest = sha256_file(part)
        if digest != artifact.sha256:
            part.unlink()
            raise IntegrityError(
                f"{artifact.name}: sha256 {digest} is not the registered {artifact.sha256}; "
                "the partial file was removed, run the download again"
            )
        os.replace(part, target)
        return Download(artifact, str(target), resumed_from=resumed_from, skipped=False)

    def _fetch(
        self, run_id: str, artifact: Artifact, part: Path, progress: Progress | None
    ) -> None:
        offset = _size(part)
        if offset > artifact.size_bytes:
            part.unlink()
            offset = 0
        if offset == artifact.size_bytes and offset:
            return
        headers = {"Accept": "application/octet-stream"}
        if offset:
            # If-Range: a file that changed since is sent whole (200) rather than spliced.
            headers.update(Range=f"bytes={offset}-", **{"If-Range": f'"{artifact.sha256}"'})
        path = f"/api/tunix/runs/{_id(run_id)}/artifacts/{artifact.id}/download"
        with self._client.stream("GET", path, headers=headers) as response:
            if response.status_code == 416:
                part.unlink(missing_ok=True)
                raise httpx.RemoteProtocolError("range not satisfiable; starting over")
            if response.status_code >= 400:
                raise _error_of(response)
            if response.status_code == 200:
                offset = 0
            elif not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                raise TunixOpsError(f"unexpected Content-Range from the server for {path}")
            done = offset
            with _open_part(part, append=offset > 0) as out:
                for block in response.iter_bytes(CHUNK):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, artifact.size_bytes)

    def download_all(
        self,
        run_id: str,
        artifacts: Iterable[Artifact],
        dest: str | os.PathLike[str] = ".",
        *,
        progress: Callable[[Artifact, int, int], None] | None = None,
    ) -> builtins.list[Download]:
        results = []
        for artifact in artifacts:
            each: Progress | None = None
            if progress is not None:
                each = _bind(progress, artifact)
            results.append(self.download(run_id, artifact, dest, progress=each))
        return results


def _bind(progress: Callable[[Artifact, int, int], None], artifact: Artifact) -> Progress:
    return lambda done, total: progress(artifact, done, total)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _open_part(part: Path, *, append: bool) -> IO[bytes]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(os.open(part, flags, 0o644), "wb")


def safe_target(dest: Path, name: str) -> Path:
    """`dest/name` for an artifact name from the server, refusing any name or directory on the
    way that would put the file outside `dest` (`..`, an absolute path, a symlink)."""
    parts = name.replace("\\", "/").split("/")
    if (
        not name
        or "\x00" in name
        or name.startswith(("/", "\\"))
        or any(p in ("", ".", "..") for p in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
    ):
        raise UnsafePathError(f"refusing to write {name!r}: not a plain relative name")
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    here = root
    for part in parts[:-1]:
        here = here / part
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            raise UnsafePathError(f"refusing to write {name!r}: {here} is not a plain directory")
        here.mkdir(exist_ok=True)
    target = here / parts[-1]
    for candidate in (target, target.with_name(target.name + ".part")):
        if candidate.is_symlink():
            raise UnsafePathError(f"refusing to write through the symlink {candidate}")
    if not target.resolve().is_relative_to(root):
        raise UnsafePathError(f"refusing to write {name!r} outside {root}")
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# -- traces and datasets ------------------------------------------------------------------------


class TracePushError(TunixOpsError):
    """A push stopped at `line`; every trace before it is on the server."""

    def __init__(self, message: str, *, line: int, cause: ApiError | None = None) -> None:
        self.line = line
        self.cause = cause
        super().__init__(f"{message}\nresume with: --start-line {line}")


class Traces:
    def __init__(self, client: Client) -> None:
        self._client = client

    def push(
        self,
        path: str | os.PathLike[str],
        *,
        start_line: int = 1,
        batch_size: int = MAX_TRACE_BATCH,
        max_batch_bytes: int = DEFAULT_TRACE_BATCH_BYTES,
        progress: Progress | None = None,
    ) -> PushResult:
        """Upload a JSONL file of traces, one per line, in all-or-none batches of up to
        `batch_size` (at most 1,000) and `max_batch_bytes`. Lines before `start_line` are
        skipped, so a push that stopped resumes where it stopped (the error says the line)."""
        if not 1 <= batch_size <= MAX_TRACE_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_TRACE_BATCH}")
        total = Path(path).stat().st_size
        batch: list[tuple[int, bytes]] = []
        batch_bytes = 0
        pushed = batches = 0
        number = start_line - 1
        ids: list[int] = []

        def flush() -> None:
            nonlocal batch, batch_bytes, pushed, batches
            if batch:
                ids.extend(self._send(batch))
                pushed += len(batch)
                batches += 1
                batch, batch_bytes = [], 0

        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if progress is not None and number % 100 == 0:
                    progress(handle.tell(), total)
                if number < start_line:
                    continue
                line = raw.strip()
                if not line:
                    continue
                try:
                    parsed = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    flush()
                    raise TracePushError(
                        f"line {number}: not valid JSON ({exc})", line=number
                    ) from exc
                if not isinstance(parsed, dict):
                    flush()
                    raise TracePushError(f"line {number}: not a JSON object", line=number)
                if batch and (
                    len(batch) >= batch_size or batch_bytes + len(line) + 16 > max_batch_bytes
                ):
                    flush()
                batch.append((number, line))
                batch_bytes += len(line) + 1
            flush()
            if progress is not None:
                progress(total, total)
        return PushResult(traces=pushed, batches=batches, last_line=number, ids=ids)

    def _send(self, batch: list[tuple[int, bytes]]) -> list[int]:
        body = b'{"traces":[' + b",".join(line for _, line in batch) + b"]}"
        try:
            answer = self._client.request("POST", "/api/traces/batch", content=body)
        except TooLarge as exc:
            if len(batch) == 1:
                raise TracePushError(
                    f"line {batch[0][0]}: {exc.message}", line=batch[0][0], cause=exc
                ) from exc
            # Over the server's body limit: the same lines in two smaller batches.
            half = len(batch) // 2
            return self._send(batch[:half]) + self._send(batch[half:])
        except ApiError as exc:
            raise _push_error(batch, exc) from exc
        except TransportError as exc:
            raise TracePushError(str(exc), line=batch[0][0]) from exc
        return [int(i) for i in answer.get("ids", [])]


def _push_error(batch: list[tuple[int, bytes]], exc: ApiError) -> TracePushError:
    """The API names `traces.3.steps.0.content`; the user wants the file's line number."""
    lines = []
    for field, messages in sorted(exc.fields.items()):
        head, _, rest = field.partition(".")
        index, _, inner = rest.partition(".")
        if head == "traces" and index.isdigit() and int(index) < len(batch):
            where = f"line {batch[int(index)][0]}" + (f": {inner}" if inner else "")
        else:
            where = field
        lines.append(f"{where}: {'; '.join(messages)}")
    detail = "\n".join(lines) or exc.message
    return TracePushError(
        f"the server refused the batch ({exc.code}):\n{detail}", line=batch[0][0], cause=exc
    )


class Datasets:
    def __init__(self, client: Client) -> None:
        self._client = client

    def build(
        self,
        name: str,
        version: str,
        *,
        filters: dict[str, Any] | None = None,
        limit: int | None = None,
        selection: str = "latest",
        seed: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "version": version, "selection": selection}
        if filters:
            body["filters"] = filters
        if limit is not None:
            body["limit"] = limit
        if seed is not None:
            body["seed"] = seed
        return dict(self._client.request("POST", "/api/datasets/build", json_body=body))

    def get(self, key: str) -> dict[str, Any]:
        return dict(self._client.request("GET", f"/api/datasets/{_id_like(key)}"))

    def export(
        self,
        key: str,
        out: IO[bytes],
        *,
        format: str = "tunix_sft",
        progress: Progress | None = None,
    ) -> int:
        """Stream the dataset as JSONL into `out`; the number of bytes written."""
        path = f"/api/datasets/{_id_like(key)}/export.jsonl"
        written = 0
        with self._client.stream("GET", path, params={"format": format}) as response:
            if response.status_code >= 400:
                raise _error_of(response)
            for block in response.iter_bytes(CHUNK):
                out.write(block)
                written += len(block)
                if progress is not None:
                    progress(written, 0)
        return written


def _id_like(key: str) -> str:
    text = str(key)
    if not text or "/" in text or text in (".", "..") or "\x00" in text:
        raise InvalidInput(
            0, "invalid", "Invalid input.", {"key": [f"not a dataset key: {text!r}"]}
        )
    return text
