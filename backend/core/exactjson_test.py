"""exactjson: numbers survive parse and encode digit for digit; depth and NUL rules hold."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings

from backend.core import exactjson
from backend.core.errors import InvalidEvent, InvalidJson
from backend.testing.json_documents import documents, exact


@settings(max_examples=400, deadline=None)
@given(documents())
def test_every_number_survives_parse_and_encode(text: str) -> None:
    value = exactjson.loads(text)
    assert exact(exactjson.dumps(value)) == exact(text)
    assert exact(exactjson.dumps(exactjson.loads(text.encode()))) == exact(text)


def same_digits(value: object, expected: object) -> bool:
    """Equal and, for Decimals, digit for digit: Decimal("1.0") == Decimal("1.00") too."""
    if isinstance(expected, Decimal):
        return isinstance(value, Decimal) and value.as_tuple() == expected.as_tuple()
    return value == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18446744073709551616", 18446744073709551616),
        ("12345678901234567890123", 12345678901234567890123),
        ("0.1000000000000000000001", Decimal("0.1000000000000000000001")),
        ("2.50000000000000000000000", Decimal("2.50000000000000000000000")),
        ("1e400", Decimal("1e400")),
        ("-1E-400", Decimal("-1E-400")),
        ("1.5", 1.5),
        ("9223372036854775807", 9223372036854775807),
    ],
)
def test_numbers_orjson_would_change_become_int_or_decimal(text: str, expected: object) -> None:
    value = exactjson.loads(text)
    assert type(value) is type(expected)
    assert same_digits(value, expected)


@pytest.mark.parametrize(
    "text",
    ['{"ts":1796011917.5834508}', "[0.30000000000000004,-1796011917.5834508]"],
)
def test_a_long_fraction_that_is_a_doubles_shortest_form_stays_a_float(text: str) -> None:
    value = exactjson.loads(text)
    assert value == orjson.loads(text)
    assert exactjson.dumps(value) == text.encode()


def test_a_kept_double_beside_a_long_integer_leaves_each_exact() -> None:
    value = exactjson.loads('{"ts": 1796011917.5834508, "n": 12345678901234567890}')
    assert value == {"ts": 1796011917.5834508, "n": 12345678901234567890}
    assert type(value["ts"]) is float


@pytest.mark.parametrize(
    ("text", "orjson_alone"),
    [
        (b'{"ts":1796011917.5834508}', True),
        (b"[-0.30000000000000004, 1.7976931348623157e+308, -123]", True),
        (b'["1796011917.5834508", 2.2250738585072014e-308]', True),
        (b"[0.30000000000000004, 12345678901234567890]", False),
        (b"[1.23456789012345678]", False),
        (b"1e400", False),
        (b'["e1796011917.5834508"]', False),  # widened into the string: left to the exact parse
    ],
)
def test_the_scan_leaves_to_orjson_only_doubles_shortest_forms(
    text: bytes, orjson_alone: bool
) -> None:
    assert exactjson._risky_keep(text) is orjson_alone
    assert exact(exactjson.dumps(exactjson.loads(text))) == exact(text)


def test_a_long_fraction_a_double_would_round_is_still_exact() -> None:
    (kept, rounded) = exactjson.loads("[1.2345678901234567, 1.23456789012345678]")
    assert kept == 1.2345678901234567
    assert type(kept) is float
    assert rounded == Decimal("1.23456789012345678")


def test_common_documents_parse_like_orjson() -> None:
    text = b'{"a":[1,2.5,-3e10,"x"],"b":{"c":null,"d":true}}'
    assert exactjson.loads(text) == orjson.loads(text)


def test_digits_inside_strings_stay_strings() -> None:
    text, number = exactjson.loads('["123456789012345678901", 1e400]')
    assert text == "123456789012345678901"
    assert same_digits(number, Decimal("1e400"))


@pytest.mark.parametrize("text", ["01", "[1e400, 01]", "[1e400 1]", "1.", "-", "[1e400,]", "NaN"])
def test_malformed_numbers_are_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson, match="the body is not valid JSON"):
        exactjson.loads(text)


@pytest.mark.parametrize("prefix", ["", "[1E+400,"])
def test_nesting_up_to_the_limit_parses_and_encodes(prefix: str) -> None:
    depth = exactjson.MAX_DEPTH - (1 if prefix else 0)
    text = prefix + "[" * depth + "]" * depth + ("]" if prefix else "")
    assert exactjson.dumps(exactjson.loads(text)) == text.encode()


@pytest.mark.parametrize("prefix", ["", "[1e400,"])
def test_deeper_nesting_is_invalid_json_naming_the_limit(prefix: str) -> None:
    depth = exactjson.MAX_DEPTH + 1
    text = prefix + "[" * depth + "]" * depth + ("]" if prefix else "")
    with pytest.raises(InvalidJson, match="the frame is nested deeper than 1024 levels"):
        exactjson.loads(text, "the frame")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"data":{"a":"x\\u0000y"}}', "the string at $.data.a "),
        ('[{"data":1},{"data":["ok","\\u0000"]}]', "the string at $[1].data[1] "),
        ('{"data":{"k\\u0000":1}}', "a key of $.data "),
        ('{"lease":"\\u0000", "n": 1e400}', "the string at $.lease "),
        ('{"a b":{"\\u0000":1}, "n": 123456789012345678901}', 'a key of $["a b"] '),
    ],
)
def test_a_nul_anywhere_is_refused_naming_where(text: str, where: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        exactjson.loads(text)
    assert caught.value.message.startswith(where)
    assert "NUL" in caught.value.message


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    text, number = exactjson.loads('["\\\\u0000", 1e400]')
    assert text == "\\u0000"
    assert same_digits(number, Decimal("1e400"))


def test_dumps_writes_big_ints_decimals_and_deep_values() -> None:
    deep: Any = []
    for _ in range(600):
        deep = [deep]
    assert exactjson.dumps({"n": 2**70, "d": Decimal("0.1000000000000000000001")}) == (
        b'{"n":1180591620717411303424,"d":0.1000000000000000000001}'
    )
    assert exactjson.dumps(deep) == b"[" * 601 + b"]" * 601
    assert (
        exactjson.dumps({"b": 2**70, "a": 1}, sort_keys=True)
        == b'{"a":1,"b":1180591620717411303424}'
    )


@pytest.mark.parametrize("value", [{1, 2}, Decimal("NaN"), {1: 2**70}, [b"x", 2**70]])
def test_dumps_refuses_what_json_cannot_hold(value: object) -> None:
    with pytest.raises(TypeError):
        exactjson.dumps(value)


def test_dumps_refuses_a_cycle() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(TypeError):
        exactjson.dumps(cycle)


@pytest.mark.parametrize(
    "text", ["1e131071", "-1e131071", "1e-16383", "0e200000", "1" * 131_072, "0." + "1" * 16_383]
)
def test_numbers_postgresql_can_hold_are_kept(text: str) -> None:
    (number,) = exactjson.loads(f"[{text}]")
    assert same_digits(number, Decimal(text))


@pytest.mark.parametrize(
    "text", ["1e131072", "1e-16384", "1.5e-16383", "0e-20000", "1" * 131_073, "0." + "1" * 16_384]
)
def test_numbers_beyond_postgresql_numeric_are_refused(text: str) -> None:
    with pytest.raises(InvalidEvent, match="is out of range: at most 131072 digits"):
        exactjson.loads(f"[{text}]")
