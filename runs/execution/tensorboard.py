"""Training metrics from the TensorBoard event files a run writes, read while it trains.

Tunix's trainers log their scalars (loss, perplexity, learning rate, grad norm, GRPO rewards, KL,
completion lengths, ...) through their metrics logger into TensorBoard event files; the recipes
point its log directory into the run directory. `TensorBoardMetrics.poll()` reads what was
appended since the last poll and stores it as `RunMetric` rows through
`runs.services.run_metrics_merge_tensorboard`; the supervisor polls next to its artifact sync and
once more after the child ended, before the terminal status.

Reading uses TensorBoard's own record loader (`RawEventFileLoader`): it keeps each file open at
the last whole record, so a record the child is still writing is read on a later poll. What is
kept in memory is bounded: at most MAX_FILES open files, MAX_RECORDS_PER_POLL records read per
poll (the rest on the next one), and only the latest step's values between polls.

Names: a tag's `train` part is dropped (`train/loss` is `loss`, `actor/train/kl` is `actor/kl`,
`rewards/train/mean` is `rewards/mean`); `eval/...` tags keep theirs; `jax/...` tags (JAX and
Orbax timings that Tunix's logger also receives) are skipped. NUL, control characters and
unpaired surrogates in a name become U+FFFD, a name is cut at MAX_NAME_CHARS, a step keeps at
most MAX_NAMES names, non-finite values are stored as null, and a record that does not parse is
skipped: nothing a child writes makes a poll fail again and again.

A step is passed on once a later step shows up (or at the final poll), so a step whose metrics are
logged in several places (GRPO logs rewards and the actor's loss apart) reaches live charts whole.
"""

import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.db import DatabaseError, Error

from runs.entrypoints.protocol import MAX_NAME_CHARS, MAX_NAMES, MAX_STEP, Values

log = logging.getLogger(__name__)

EVENT_FILE_MARK = "tfevents"
MAX_FILES = 32
MAX_RECORDS_PER_POLL = 50_000
# The walk for event files skips checkpoint steps and stops after this many directory entries.
MAX_SCAN_ENTRIES = 5_000
MAX_SCAN_DEPTH = 5
# Steps kept for the next poll when the database is away; beyond that the oldest are dropped.
MAX_UNSTORED_STEPS = 10_000
SKIPPED_TAG_PREFIXES = ("jax/",)
_UNSAFE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def metric_name(tag: str) -> str | None:
    """The stored name of a TensorBoard tag, or None for a tag that is not a training metric."""
    if not tag or tag.startswith(SKIPPED_TAG_PREFIXES):
        return None
    name = "/".join(part for part in tag.split("/") if part != "train") or tag
    return _UNSAFE.sub("\ufffd", name)[:MAX_NAME_CHARS]


def scalar_value(value: Any) -> tuple[bool, float | None]:
    """(is a scalar, its value as a finite float or None) of one `Summary.Value`."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        number = float(value.simple_value)
    elif kind == "tensor":
        from tensorboard.util import tensor_util

        try:
            array = tensor_util.make_ndarray(value.tensor)
        except Exception:  # a tensor TensorBoard itself cannot decode
            return False, None
        if array.size != 1 or array.dtype.kind not in "fiub":
            return False, None
        number = float(array.reshape(()))
    else:
        return False, None
    return True, number if math.isfinite(number) else None


def find_event_files(root: Path) -> Iterator[Path]:
    """Event files under `root`, not following symlinks, skipping Orbax checkpoint steps."""
    budget = MAX_SCAN_ENTRIES
    stack = [(root, 0)]
    while stack and budget > 0:
        directory, depth = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries[:budget]:
            budget -= 1
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < MAX_SCAN_DEPTH and not name.isdigit() and "orbax" not in name:
                        stack.append((Path(entry.path), depth + 1))
                elif EVENT_FILE_MARK in name and entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)
            except OSError:
                continue


class EventReader:
    """New scalar points of a run directory's event files, by step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaders: dict[Path, Any] = {}
        self._top_step = -1
        self._held: Values = {}
        self.skipped_records = 0

    def poll(self, *, final: bool = False) -> dict[int, Values]:
        """Points since the last poll; the latest step waits for a later one unless `final`."""
        out: dict[int, Values] = {}
        budget = MAX_RECORDS_PER_POLL
        for path in sorted(find_event_files(self.root)):
            loader = self._loader(path)
            if loader is None:
                continue
            for record in loader.Load():
                self._take(record, out)
                budget -= 1
                if budget <= 0:
                    break
            if budget <= 0:
                break
        if final and self._held:
            _merge(out, self._top_step, self._held)
            self._held = {}
        return out

    def _loader(self, path: Path) -> Any:
        loader = self._loaders.get(path)
        if loader is None and len(self._loaders) < MAX_FILES:
            from tensorboard.backend.event_processing.event_file_loader import (
                RawEventFileLoader,
            )

            try:
                loader = self._loaders[path] = RawEventFileLoader(str(path))
            except OSError:
                return None
        return loader

    def _take(self, record: bytes, out: dict[int, Values]) -> None:
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto import event_pb2

        try:
            event = event_pb2.Event.FromString(record)
        except (DecodeError, ValueError):
            self.skipped_records += 1
            return
        if not event.HasField("summary") or not 0 <= event.step <= MAX_STEP:
            return
        step = int(event.step)
        values: Values = {}
        for value in event.summary.value:
            name = metric_name(value.tag)
            if name is None:
                continue
            is_scalar, number = scalar_value(value)
            if is_scalar:
                values[name] = number
        if not values:
            return
        if step > self._top_step:
            if self._held:
                _merge(out, self._top_step, self._held)
            self._top_step, self._held = step, values
        elif step == self._top_step:
            _add_names(self._held, values)
        else:
            _merge(out, step, values)


def _add_names(into: Values, values: Values) -> None:
    for name, number in values.items():
        if name in into or len(into) < MAX_NAMES:
            into[name] = number


def _merge(out: dict[int, Values], step: int, values: Values) -> None:
    _add_names(out.setdefault(step, {}), values)


class TensorBoardMetrics:
    """The supervisor's handle: poll the run's event files and store what is new."""

    def __init__(self, run_id: uuid.UUID, root: Path) -> None:
        self.run_id = run_id
        self.reader = EventReader(root)
        self._unstored: dict[int, Values] = {}

    def poll(self, *, final: bool = False) -> int:
        """Read and store new points; returns how many steps were stored. Never raises."""
        try:
            for step, values in self.reader.poll(final=final).items():
                _merge(self._unstored, step, values)
        except Exception:
            log.exception("run %s: reading TensorBoard metrics failed", self.run_id)
        # The last poll rides out a short database hiccup; earlier ones leave it to the next.
        for attempt in range(3 if final else 1):
            if attempt:
                time.sleep(0.5 * attempt)
            stored = self._store()
            if stored is not None:
                return stored
        return 0

    def _store(self) -> int | None:
        """Steps stored (0 when there were none, or they were dropped); None: try again later."""
        from runs.services import run_metrics_merge_tensorboard

        if not self._unstored:
            return 0
        steps, self._unstored = self._unstored, {}
        try:
            run_metrics_merge_tensorboard(run_id=self.run_id, steps=steps)
        except DatabaseError as exc:
            if not _is_transient(exc):
                # Not the database being away: these values can never be stored, so they go.
                log.error("run %s: dropping TensorBoard metrics: %s", self.run_id, exc)
                return 0
            log.warning("run %s: TensorBoard metrics not stored yet: %s", self.run_id, exc)
            self._unstored = _keep_latest(steps)
            return None
        except Error as exc:
            log.warning("run %s: TensorBoard metrics not stored yet: %s", self.run_id, exc)
            self._unstored = _keep_latest(steps)
            return None
        return len(steps)


def _is_transient(exc: DatabaseError) -> bool:
    from django.db import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


def _keep_latest(steps: dict[int, Values]) -> dict[int, Values]:
    if len(steps) <= MAX_UNSTORED_STEPS:
        return steps
    return {step: steps[step] for step in sorted(steps)[-MAX_UNSTORED_STEPS:]}
