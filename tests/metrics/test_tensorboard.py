"""The worker's TensorBoard reader and the store behind it, on event files written here."""

import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from runs.execution import tensorboard as tb
from runs.models import RunMetric
from runs.selectors import metric_points_after, metric_series
from runs.services import run_metrics_merge_tensorboard


class Events:
    """Event files the way Tunix's metrics logger leaves them, written and flushed on demand."""

    def __init__(self, directory: Path) -> None:
        self.writer = EventFileWriter(str(directory), flush_secs=3600)
        self.path = next(directory.glob("events.out.tfevents.*"))

    def scalar(self, step: int, tag: str, value: float, *, tensor: bool = True) -> None:
        if tensor:
            proto = tensor_util.make_tensor_proto(value)
            summary_value = summary_pb2.Summary.Value(tag=tag, tensor=proto)
            summary_value.metadata.plugin_data.plugin_name = "scalars"
        else:
            summary_value = summary_pb2.Summary.Value(tag=tag, simple_value=value)
        self.writer.add_event(
            event_pb2.Event(
                step=step, wall_time=1.0, summary=summary_pb2.Summary(value=[summary_value])
            )
        )

    def flush(self) -> None:
        self.writer.flush()


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events(tmp_path / "tb")


def test_names_drop_the_train_part_skip_jax_telemetry_and_lose_unsafe_characters() -> None:
    assert tb.metric_name("train/loss") == "loss"
    assert tb.metric_name("actor/train/kl") == "actor/kl"
    assert tb.metric_name("rewards/train/score/mean") == "rewards/score/mean"
    assert tb.metric_name("eval/loss") == "eval/loss"
    assert tb.metric_name("train") == "train"
    assert tb.metric_name("jax/core/compile/backend_compile_duration") is None
    assert tb.metric_name("") is None
    assert tb.metric_name("lo\x00ss\ud800") == "lo\ufffdss\ufffd"
    assert tb.metric_name("x" * 500) == "x" * 100


def test_a_poll_returns_only_what_is_new_and_holds_the_latest_step_until_a_later_one(
    events: Events, tmp_path: Path
) -> None:
    reader = tb.EventReader(tmp_path)
    assert reader.poll() == {}
    events.scalar(1, "train/loss", 2.5)
    events.scalar(1, "train/perplexity", 12.0, tensor=False)
    events.flush()
    assert reader.poll() == {}  # step 1 may still get values
    events.scalar(2, "train/loss", 2.0)
    events.scalar(1, "rewards/train/mean", 0.5)  # a straggler for a step already passed on
    events.flush()
    assert reader.poll() == {1: {"loss": 2.5, "perplexity": 12.0, "rewards/mean": 0.5}}
    assert reader.poll() == {}
    assert reader.poll(final=True) == {2: {"loss": 2.0}}
    assert reader.poll(final=True) == {}


def test_non_finite_values_are_null_and_other_summaries_are_ignored(
    events: Events, tmp_path: Path
) -> None:
    events.scalar(3, "train/loss", math.nan)
    events.scalar(3, "train/grad_norm", math.inf, tensor=False)
    events.scalar(3, "jax/orbax/write/gbytes", 1.0)
    histogram = summary_pb2.Summary.Value(tag="weights", histo=summary_pb2.HistogramProto(num=3))
    events.writer.add_event(event_pb2.Event(step=3, summary=summary_pb2.Summary(value=[histogram])))
    vector = summary_pb2.Summary.Value(
        tag="train/vector", tensor=tensor_util.make_tensor_proto([1.0, 2.0])
    )
    events.writer.add_event(event_pb2.Event(step=3, summary=summary_pb2.Summary(value=[vector])))
    events.writer.add_event(event_pb2.Event(step=-4, summary=summary_pb2.Summary(value=[vector])))
    events.flush()
    assert tb.EventReader(tmp_path).poll(final=True) == {3: {"loss": None, "grad_norm": None}}


def test_a_record_written_half_way_is_read_once_it_is_whole(events: Events, tmp_path: Path) -> None:
    events.scalar(1, "train/loss", 1.0)
    events.scalar(2, "train/loss", 0.5)
    events.flush()
    whole = events.path.read_bytes()
    events.writer.close()
    # The child is cut off in the middle of its last record.
    events.path.write_bytes(whole[:-7])
    reader = tb.EventReader(tmp_path)
    assert reader.poll() == {}
    with events.path.open("ab") as file:
        file.write(whole[-7:])
    assert reader.poll(final=True) == {1: {"loss": 1.0}, 2: {"loss": 0.5}}


def test_a_record_that_does_not_parse_is_skipped_not_retried(tmp_path: Path) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter

    (tmp_path / "tb").mkdir()
    with (tmp_path / "tb" / "events.out.tfevents.1.host").open("wb") as file:
        writer = RecordWriter(file)
        writer.write(b"\xff\xfe not a protobuf")
        good = event_pb2.Event(
            step=5,
            summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag="loss", simple_value=1.5)]
            ),
        )
        writer.write(good.SerializeToString())
    reader = tb.EventReader(tmp_path)
    assert reader.poll(final=True) == {5: {"loss": 1.5}}
    assert reader.skipped_records == 1
    assert reader.poll(final=True) == {}


def test_event_files_are_found_anywhere_but_in_checkpoint_steps_and_symlinks(
    tmp_path: Path,
) -> None:
    for rel in ("tb/events.out.tfevents.1.a", "deep/a/b/events.out.tfevents.2.b"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "checkpoints/10").mkdir(parents=True)
    (tmp_path / "checkpoints/10/events.out.tfevents.3.c").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/events.out.tfevents.4.d").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "tb/events.out.tfevents.5.e").symlink_to(
        tmp_path / "elsewhere/events.out.tfevents.4.d"
    )
    found = {str(p.relative_to(tmp_path)) for p in tb.find_event_files(tmp_path)}
    assert found == {
        "tb/events.out.tfevents.1.a",
        "deep/a/b/events.out.tfevents.2.b",
        "elsewhere/events.out.tfevents.4.d",
    }


def test_one_poll_reads_a_bounded_number_of_records_and_the_next_goes_on(
    events: Events, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(tb, "MAX_RECORDS_PER_POLL", 4)
    for step in range(1, 11):
        events.scalar(step, "train/loss", float(step))
    events.flush()
    reader = tb.EventReader(tmp_path)
    seen: dict[int, Any] = {}
    for _ in range(3):
        seen.update(reader.poll())
    seen.update(reader.poll(final=True))
    assert seen == {step: {"loss": float(step)} for step in range(1, 11)}


@pytest.mark.django_db(transaction=True)
def test_stored_values_merge_by_name_and_the_metric_line_wins(
    make_run: Any, tmp_path: Path, events: Events
) -> None:
    run = make_run()
    RunMetric.objects.create(run=run, step=2, values={"loss": 9.0})
    run_metrics_merge_tensorboard(
        run_id=run.pk, steps={1: {"loss": 3.0}, 2: {"loss": 2.0, "kl": 0.1}}
    )
    run_metrics_merge_tensorboard(run_id=run.pk, steps={2: {"reward": 1.0}})
    series = metric_series(run.pk, max_points=100)
    assert [(p.step, p.values) for p in series.points] == [
        (1, {"loss": 3.0}),
        (2, {"loss": 9.0, "kl": 0.1, "reward": 1.0}),
    ]
    assert metric_points_after(run.pk, 1)[0].values == {"loss": 9.0, "kl": 0.1, "reward": 1.0}
    # The worker's handle reads the run's files and stores through the same service.
    events.scalar(7, "train/perplexity", 4.0)
    events.flush()
    handle = tb.TensorBoardMetrics(run.pk, tmp_path)
    assert handle.poll() == 0
    assert handle.poll(final=True) == 1
    assert RunMetric.objects.get(run=run, step=7).tb_values == {"perplexity": 4.0}


@pytest.mark.django_db(transaction=True)
def test_values_the_database_refuses_are_dropped_not_retried(make_run: Any, tmp_path: Path) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores a NUL; PostgreSQL's jsonb refuses it")
    run = make_run()
    handle = tb.TensorBoardMetrics(run.pk, tmp_path)
    # A name the reader would have cleaned, to get a real refusal from the database.
    handle._unstored = {1: {"lo\x00ss": 1.0}}
    assert handle.poll() == 0
    assert handle._unstored == {}
    assert not RunMetric.objects.exists()
    handle._unstored = {2: {"loss": 2.0}}
    assert handle.poll() == 1
    assert RunMetric.objects.get(run=run, step=2).tb_values == {"loss": 2.0}


@pytest.mark.django_db(transaction=True)
def test_a_run_that_is_gone_drops_its_metrics(tmp_path: Path, events: Events) -> None:
    handle = tb.TensorBoardMetrics(uuid.uuid4(), tmp_path)
    events.scalar(1, "loss", 1.0)
    events.flush()
    assert handle.poll(final=True) == 0
    assert handle.poll(final=True) == 0
    assert not RunMetric.objects.exists()
