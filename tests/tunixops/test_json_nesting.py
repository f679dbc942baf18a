"""The API's JSON parser: nesting_exceeds() reads the nesting depth of JSON text as a JSON
reader would, and the body is read as DRF's own JSONParser reads it."""

import io
import json
import random
from typing import Any

import pytest
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser

from tunixops.api.parsers import LimitedJSONParser, nesting_exceeds


def depth_by_reading(text: str) -> int:
    """The nesting depth, one character at a time: what nesting_exceeds() must agree with."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


# Strings that look like structure, or end in escapes, to a reader that gets strings wrong.
TRICKY = [
    "[[[",
    "]}]}",
    '"',
    "\\",
    '\\"',
    '"[',
    "\\\\[",
    '{"a": [',
    "",
    "\u20ac[\U0001f600",
    "\x00",
]


def random_value(rng: random.Random, depth: int) -> Any:
    if depth == 0:
        return rng.choice([*TRICKY, 1, None, True, 2.5])
    children = [random_value(rng, rng.randrange(depth)) for _ in range(rng.randrange(1, 4))]
    children.append(random_value(rng, depth - 1))
    rng.shuffle(children)
    if rng.random() < 0.5:
        return children
    return {rng.choice(TRICKY) + str(n): child for n, child in enumerate(children)}


@pytest.mark.parametrize("seed", range(40))
def test_it_agrees_with_a_character_by_character_reading(seed: int) -> None:
    rng = random.Random(seed)
    value = {
        "traces": [random_value(rng, rng.randrange(1, 12)) for _ in range(rng.randrange(1, 20))]
    }
    for ensure_ascii in (True, False):
        text = json.dumps(value, ensure_ascii=ensure_ascii)
        depth = depth_by_reading(text)
        for limit in range(max(1, depth - 2), depth + 2):
            assert nesting_exceeds(text.encode(), limit) == (depth > limit), (text, limit)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('["[[[[", {"a": "]]]]"}]', 2),
        ('[["\\\\"], "\\\\\\"[[[["]', 2),
        ('{"k\\"[": [[["\\"]]"]]]}', 4),
        ("[" * 150 + "]" * 150, 150),
        ('[{"a": [1, {"b": [[2]]}]}, [[[[[3]]]]]]', 6),
    ],
)
def test_it_reads_structure_outside_strings_only(text: str, depth: int) -> None:
    assert depth_by_reading(text) == depth
    assert nesting_exceeds(text.encode(), depth - 1)
    assert not nesting_exceeds(text.encode(), depth)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, "\\u00e9", "\xc3\xa9", 2.5e3, null]}',
        b"\xff{}",
        b'"\xed\xa0\x80"',
        b"\xef\xbb\xbf{}",
        b'{"a": NaN}',
        b'{"a": -Infinity}',
        b'{"a": 1} x',
        b"",
    ],
)
def test_the_limited_parser_reads_and_refuses_what_drfs_json_parser_does(body: bytes) -> None:
    def outcome(parser: BaseParser) -> Any:
        try:
            return parser.parse(io.BytesIO(body), "application/json", {})
        except ParseError as exc:
            return ("ParseError", str(exc.detail))

    assert outcome(LimitedJSONParser()) == outcome(JSONParser())


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "bz2_codec", "no-such-codec"])
def test_the_limited_parser_decodes_a_declared_charset_as_drfs_json_parser_does(
    encoding: str,
) -> None:
    body = '{"a": "\u00e9t\u00e9"}'.encode("latin-1" if "codec" in encoding else encoding)

    def outcome(parser: BaseParser) -> Any:
        try:
            return parser.parse(io.BytesIO(body), "application/json", {"encoding": encoding})
        except ParseError as exc:
            return ("ParseError", str(exc.detail))

    assert outcome(LimitedJSONParser()) == outcome(JSONParser())
