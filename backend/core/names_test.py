"""Naming rules, pattern matching, the SQL regex twin of matching, and pattern coverage."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.core.errors import InvalidName, TooManyPatterns
from backend.core.names import Pattern, matches_any, parse_patterns, validate_name


@pytest.mark.parametrize(
    "name",
    ["a", "orders", "orders.created", "A-b_c:d.0.x", "a" * 200, ".".join(["ab"] * 66) + ".c"],
)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (None, "topic must be a string"),
        (b"orders", "topic must be a string"),
        ("", "topic '': must not be empty"),
        ("a" * 201, "topic 'aaaaa"),
        ("a..b", "topic 'a..b': segment 2 is empty"),
        (".a", "topic '.a': segment 1 is empty"),
        ("a.", "topic 'a.': segment 2 is empty"),
        ("a b", "topic 'a b': segment 1 has an invalid character ' '"),
        ("a.b/c", "topic 'a.b/c': segment 2 has an invalid character '/'"),
        ("a.é", "topic 'a.é': segment 2 has an invalid character 'é'"),
        ("a.*", "topic 'a.*': segment 2 has an invalid character '*'"),
        ("a.>", "topic 'a.>': segment 2 has an invalid character '>'"),
        ("a\n", "topic 'a\\n': segment 1 has an invalid character '\\n'"),
    ],
)
def test_invalid_names_say_what_is_wrong(name: object, message: str) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_name(name)
    assert caught.value.message.startswith(message)


def test_too_long_name_message_is_cut_short() -> None:
    with pytest.raises(InvalidName) as caught:
        validate_name("x" * 5000)
    message = caught.value.message
    assert message.endswith("...': longer than 200 characters (5000)")
    assert len(message) < 120


def test_kind_labels_the_message() -> None:
    with pytest.raises(InvalidName, match=r"^queue 'a\.\.b': segment 2 is empty$"):
        validate_name("a..b", kind="queue")


def test_pattern_attributes() -> None:
    literal = Pattern.parse("orders.created")
    wild = Pattern.parse("orders.*.>")
    assert literal.text == "orders.created"
    assert literal.segments == ("orders", "created")
    assert literal.is_literal
    assert wild.segments == ("orders", "*", ">")
    assert not wild.is_literal
    assert Pattern.parse("a.*") == Pattern("a.*")
    assert hash(Pattern.parse("a.*")) == hash(Pattern("a.*"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "pattern must be a string"),
        (3, "pattern must be a string"),
        ("", "pattern '': must not be empty"),
        ("a." * 100 + "a", "pattern 'a.a.a."),
        ("a.>.b", "pattern 'a.>.b': '>' is only allowed as the last segment (found in segment 2)"),
        (">.>", "pattern '>.>': '>' is only allowed as the last segment (found in segment 1)"),
        ("a*", "pattern 'a*': segment 1 'a*' mixes a wildcard with other characters"),
        ("a.b>", "pattern 'a.b>': segment 2 'b>' mixes a wildcard with other characters"),
        ("**", "pattern '**': segment 1 '**' mixes a wildcard"),
        ("a..*", "pattern 'a..*': segment 2 is empty"),
        ("a.*.", "pattern 'a.*.': segment 3 is empty"),
        ("a.b c", "pattern 'a.b c': segment 2 has an invalid character ' '"),
        ("a.#", "pattern 'a.#': segment 2 has an invalid character '#'"),
    ],
)
def test_invalid_patterns_say_what_is_wrong(text: object, message: str) -> None:
    with pytest.raises(InvalidName) as caught:
        Pattern.parse(text)
    assert caught.value.message.startswith(message)


def test_constructing_directly_validates_too() -> None:
    with pytest.raises(InvalidName, match="segment 2 is empty"):
        Pattern("a..b")


MATCH_TABLE = [
    ("orders.created", "orders.created", True),
    ("orders.created", "orders.created.x", False),
    ("orders.created", "orders", False),
    ("orders.created", "orders.updated", False),
    ("orders.*", "orders.created", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.created.eu", False),
    ("orders.*", "users.created", False),
    ("*.created", "orders.created", True),
    ("*.created", "orders.updated", False),
    ("*", "orders", True),
    ("*", "orders.created", False),
    ("*.*", "a.b", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("a.*.c", "a.c", False),
    ("orders.>", "orders", False),
    ("orders.>", "orders.created", True),
    ("orders.>", "orders.created.eu.west", True),
    ("orders.>", "users.created", False),
    (">", "a", True),
    (">", "a.b.c", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
    # Malformed topics never match a wildcard, in Python exactly as in SQL.
    ("a.*", "a.", False),
    (">", "", False),
    ("a.>", "a.b.", False),
    ("a.>", "a..b", False),
]


@pytest.mark.parametrize(("text", "topic", "expected"), MATCH_TABLE)
def test_matches(text: str, topic: str, expected: bool) -> None:
    assert Pattern.parse(text).matches(topic) is expected


@pytest.mark.parametrize(("text", "topic", "expected"), MATCH_TABLE)
def test_sql_regex_agrees_with_matches(text: str, topic: str, expected: bool) -> None:
    assert (re.fullmatch(Pattern.parse(text).sql_regex(), topic) is not None) is expected


@pytest.mark.parametrize(
    ("text", "regex"),
    [
        ("orders.created", r"^orders\.created$"),
        ("orders.*", r"^orders\.[^.]+$"),
        ("orders.>", r"^orders\.[^.]+(\.[^.]+)*$"),
        (">", r"^[^.]+(\.[^.]+)*$"),
        ("a-b:c_d.*.e", r"^a-b:c_d\.[^.]+\.e$"),
    ],
)
def test_sql_regex_text(text: str, regex: str) -> None:
    assert Pattern.parse(text).sql_regex() == regex


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        ("orders.>", "orders.*", True),
        ("orders.*", "orders.>", False),
        ("orders.>", "orders.>", True),
        ("orders.>", "orders.a.b", True),
        ("orders.>", "orders", False),
        ("orders.>", "*.a", False),
        ("*.x", "a.x", True),
        ("*.x", "*.x", True),
        ("a.x", "*.x", False),
        ("*.x", "a.y", False),
        ("*.x", "a.x.y", False),
        (">", "a", True),
        (">", "*.*.>", True),
        (">", ">", True),
        ("*", ">", False),
        ("*.>", ">", False),
        ("*.>", "*.>", True),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.*", False),
        ("a.b", "a", False),
    ],
)
def test_covers(mine: str, theirs: str, expected: bool) -> None:
    assert Pattern.parse(mine).covers(Pattern.parse(theirs)) is expected


def test_matches_any() -> None:
    patterns = parse_patterns(["orders.*", "users.>"])
    assert matches_any(patterns, "orders.created")
    assert matches_any(patterns, "users.a.b")
    assert not matches_any(patterns, "orders.a.b")
    assert Pattern.any_matches(patterns, "users.x")
    assert not matches_any((), "orders.created")


def test_parse_patterns() -> None:
    assert parse_patterns(iter(["a", "b.*"])) == (Pattern("a"), Pattern("b.*"))
    with pytest.raises(InvalidName, match=r"^at least one topic pattern is required$"):
        parse_patterns([])
    with pytest.raises(InvalidName, match=r"^pattern 'a\.\.b': segment 2 is empty$"):
        parse_patterns(["ok", "a..b", "b c"])
    with pytest.raises(InvalidName, match="not a single string"):
        parse_patterns("orders.*")


# A tiny alphabet makes overlaps between random patterns and topics frequent.
_SEGMENTS = st.sampled_from(["a", "b", "*", ">"])
_TOPIC_SEGMENTS = st.sampled_from(["a", "b", "c"])


@st.composite
def patterns(draw: st.DrawFn) -> Pattern:
    segments = draw(st.lists(_SEGMENTS, min_size=1, max_size=5))
    segments = [s for s in segments[:-1] if s != ">"] + segments[-1:]
    return Pattern(".".join(segments))


topics = st.lists(_TOPIC_SEGMENTS, min_size=1, max_size=6).map(".".join)


@given(patterns(), patterns(), topics)
def test_covers_is_sound(mine: Pattern, theirs: Pattern, topic: str) -> None:
    if mine.covers(theirs) and theirs.matches(topic):
        assert mine.matches(topic)


@given(patterns(), patterns())
def test_covers_is_exact(mine: Pattern, theirs: Pattern) -> None:
    """Against brute force: lengths up to one past the longest pattern decide coverage."""
    longest = max(len(mine.segments), len(theirs.segments)) + 1
    witnesses = (
        ".".join(parts)
        for size in range(1, longest + 1)
        for parts in itertools.product("abz", repeat=size)
    )
    expected = all(mine.matches(t) for t in witnesses if theirs.matches(t))
    assert mine.covers(theirs) is expected


@given(patterns(), topics | st.text(alphabet="ab.* ", max_size=8))
def test_sql_regex_agrees_with_matches_randomly(pattern: Pattern, topic: str) -> None:
    assert (re.fullmatch(pattern.sql_regex(), topic) is not None) is pattern.matches(topic)


@given(st.text(max_size=20))
def test_validate_name_accepts_exactly_the_grammar(text: str) -> None:
    grammar = re.fullmatch(r"[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*", text) is not None
    try:
        validate_name(text)
    except InvalidName:
        assert not grammar
    else:
        assert grammar


def test_parse_patterns_refuses_more_than_the_limit_before_parsing_any() -> None:
    assert len(parse_patterns(["a"] * 3, limit=3)) == 3
    with pytest.raises(TooManyPatterns, match="4 topic patterns; at most 3 are allowed"):
        parse_patterns(["a", "b", "c", "not valid"], limit=3)


def test_subscriptions_of_one_topic_share_its_parsed_pattern() -> None:
    first = parse_patterns(["orders.*"])
    again = parse_patterns(["orders.*", "payments.>"])
    assert again[0] is first[0]
    assert again[1] is not first[0]
    with pytest.raises(InvalidName):  # refusals are not remembered as patterns
        Pattern.parse("orders..x")
    with pytest.raises(InvalidName):
        Pattern.parse("orders..x")
