"""The metric-line reader: complete lines only, however the pipe splits them."""

import json

from runs.entrypoints.protocol import (
    MAX_LINE_CHARS,
    MetricLineReader,
    MetricPoint,
    parse_metric_line,
)

LINE_1 = 'tunixops.metric {"step": 1, "loss": 2.5, "learning_rate": 0.001}\n'
LINE_2 = 'tunixops.metric {"step": 2, "loss": 2.25, "perplexity": 9.49}\n'
TEXT = "step 1 loss 2.5\n" + LINE_1 + "noise tunixops.metric not at start\n" + LINE_2 + "done\n"
EXPECTED = [
    MetricPoint(1, {"loss": 2.5, "learning_rate": 0.001}),
    MetricPoint(2, {"loss": 2.25, "perplexity": 9.49}),
]


def read(*pieces: str) -> list[MetricPoint]:
    reader = MetricLineReader()
    points = [p for piece in pieces for p in reader.feed(piece)]
    return points + reader.finish()


def test_every_split_of_the_output_gives_the_same_points() -> None:
    for cut in range(len(TEXT) + 1):
        assert read(TEXT[:cut], TEXT[cut:]) == EXPECTED, cut
    for cut in range(0, len(TEXT), 7):
        assert read(TEXT[:cut], TEXT[cut : cut + 3], TEXT[cut + 3 :]) == EXPECTED, cut


def test_output_fed_a_character_at_a_time_gives_the_same_points() -> None:
    assert read(*TEXT) == EXPECTED


def test_a_line_is_parsed_only_once_it_is_complete() -> None:
    reader = MetricLineReader()
    assert reader.feed(LINE_1[:-1]) == []
    assert reader.feed("\n") == EXPECTED[:1]


def test_an_unterminated_last_line_counts_when_the_output_ends() -> None:
    assert read(LINE_1 + LINE_2.rstrip("\n")) == EXPECTED


def test_non_finite_values_become_null_and_non_numbers_are_dropped() -> None:
    point = parse_metric_line('{"step": 3, "loss": NaN, "grad_norm": Infinity, "note": "x"}')
    assert point == MetricPoint(3, {"loss": None, "grad_norm": None})
    assert parse_metric_line('{"step": 4, "loss": null, "lr": -Infinity}') == MetricPoint(
        4, {"loss": None, "lr": None}
    )


def test_lines_that_break_the_format_are_ignored() -> None:
    for payload in [
        "not json",
        "[1, 2]",
        '{"loss": 1.0}',
        '{"step": 1}',
        '{"step": 1.5, "loss": 1.0}',
        '{"step": true, "loss": 1.0}',
        '{"step": -1, "loss": 1.0}',
        '{"step": 3000000000, "loss": 1.0}',
        '{"step": 1, "loss": "low"}',
        '{"step": 1, "loss": true}',
    ]:
        assert parse_metric_line(payload) is None, payload


def test_windows_line_endings_are_accepted() -> None:
    assert read(LINE_1.replace("\n", "\r\n")) == EXPECTED[:1]


def test_an_overlong_line_is_not_held_and_does_not_hide_the_next_one() -> None:
    huge = "tunixops.metric " + json.dumps({"step": 9, "loss": 1.0, "pad": "x" * MAX_LINE_CHARS})
    reader = MetricLineReader()
    points = []
    for start in range(0, len(huge), 4096):
        points += reader.feed(huge[start : start + 4096])
    assert reader._line == ""  # nothing of the long line is buffered
    points += reader.feed("\n" + LINE_1)
    assert points == EXPECTED[:1]
