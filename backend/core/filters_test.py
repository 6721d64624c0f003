"""The filter language: operators, typed comparison, paths, limits and error messages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.core import exactjson
from backend.core.errors import InvalidFilter
from backend.core.filters import Filter, compile_filter

ITEMS = [{"sku": "A-1", "qty": 2}, {"sku": "B,2", "qty": 1}]
EVENT: dict[str, object] = {
    "id": 42,
    "topic": "orders.created",
    "type": "order.created",
    "key": "customer-7",
    "time": "2024-05-01T12:00:00+00:00",
    "data": {
        "status": "paid",
        "amount": 150,
        "price": 9.5,
        "text_amount": "150",
        "express": True,
        "gift": False,
        "note": None,
        "customer": {"id": "c7", "tier": 2},
        "items": ITEMS,
        "tags": ["x", "y"],
        "0": "zero-key",
    },
}


def check(text: str, envelope: Mapping[str, object] = EVENT) -> bool:
    compiled = compile_filter(text)
    assert compiled is not None
    return compiled.matches(envelope)


def test_empty_or_none_means_no_filter() -> None:
    assert compile_filter(None) is None
    assert compile_filter("") is None


def test_filter_keeps_its_text() -> None:
    compiled = compile_filter("data.status=eq.paid")
    assert isinstance(compiled, Filter)
    assert compiled.text == "data.status=eq.paid"
    assert repr(compiled) == "Filter('data.status=eq.paid')"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.status=eq.paid", True),
        ("data.status=eq.open", False),
        ("data.status=neq.open", True),
        ("data.status=neq.paid", False),
        ("data.amount=eq.150", True),
        ("data.amount=eq.150.0", True),
        ("data.amount=eq.1.5e2", True),
        ("data.amount=neq.151", True),
        ("data.amount=gt.100", True),
        ("data.amount=gt.150", False),
        ("data.amount=gte.150", True),
        ("data.amount=lt.150", False),
        ("data.amount=lte.150", True),
        ("data.amount=lt.1000", True),
        ("data.price=gt.9.25", True),
        ("data.price=lt.-1", False),
        ("data.status=gt.open", True),
        ("data.status=lt.open", False),
        ("data.status=gte.paid", True),
        ("data.status=lte.paid", True),
        ("data.status=in.(open,paid)", True),
        ("data.status=in.(open,closed)", False),
        ("data.amount=in.(1,150)", True),
        ("data.amount=in.(1,2)", False),
        ("data.note=is.null", True),
        ("data.status=is.null", False),
        ("data.express=is.true", True),
        ("data.express=is.false", False),
        ("data.gift=is.false", True),
        ("data.gift=is.true", False),
        ("data.status=is.true", False),
        ("id=eq.42", True),
        ("id=gt.41", True),
        ("topic=eq.orders.created", True),
        ("type=eq.order.created", True),
        ("key=eq.customer-7", True),
        ("time=gte.2024-05-01", True),
        ("time=lt.2024-05-01", False),
    ],
)
def test_operators(text: str, expected: bool) -> None:
    assert check(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A JSON string is compared as a string even when it looks like a number.
        ("data.text_amount=eq.150", True),
        ("data.text_amount=gt.100", True),
        ("data.text_amount=gt.1000", True),
        ("data.text_amount=lt.99", True),
        # A number against a non-numeric literal is never equal and has no order.
        ("data.amount=eq.abc", False),
        ("data.amount=neq.abc", True),
        ("data.amount=gt.abc", False),
        ("data.amount=lt.abc", False),
        # Only JSON number syntax makes a literal numeric.
        ("data.amount=eq.0150", False),
        ("data.amount=eq.+150", False),
        ("data.amount=eq.150 ", False),
    ],
)
def test_numbers_versus_strings(text: str, expected: bool) -> None:
    assert check(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.express=eq.true", True),
        ("data.express=eq.false", False),
        ("data.express=neq.false", True),
        ("data.gift=eq.false", True),
        ("data.express=eq.1", False),
        ("data.express=eq.True", False),
        ("data.express=neq.yes", True),
        ("data.express=gt.false", False),
        ("data.express=lt.true", False),
        ("data.amount=eq.true", False),
        ("data.status=eq.true", False),
    ],
)
def test_booleans(text: str, expected: bool) -> None:
    assert check(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.customer.id=eq.c7", True),
        ("data.customer.tier=gte.2", True),
        ("data.items.0.sku=eq.A-1", True),
        ("data.items.1.qty=eq.1", True),
        ("data.items.1.sku=eq.B,2", True),
        ("data.tags.1=eq.y", True),
        ("data.tags.01=eq.y", True),
        ("data.0=eq.zero-key", True),
        ("data.items.2.sku=is.null", True),
        ("data.items.sku=is.null", True),
        ("data.status.x=is.null", True),
        ("data.tags.x=is.null", True),
        ("data.customer.id.x=is.null", True),
    ],
)
def test_nested_paths_and_indexes(text: str, expected: bool) -> None:
    assert check(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "data.missing=eq.x",
        "data.missing=neq.x",
        "data.missing=gt.1",
        "data.missing=gte.1",
        "data.missing=lt.1",
        "data.missing=lte.1",
        "data.missing=in.(x,y)",
        "data.missing=is.true",
        "data.missing=is.false",
        "data.note=eq.null",
        "data.note=neq.x",
        "data.note=gt.1",
        "data.note=in.(null)",
        "data.items.9.sku=neq.x",
    ],
)
def test_missing_and_null_are_like_sql_null(text: str) -> None:
    assert check(text) is False


@pytest.mark.parametrize("text", ["data.missing=is.null", "data.note=is.null"])
def test_missing_and_null_satisfy_is_null(text: str) -> None:
    assert check(text) is True


def test_missing_top_level_field_is_null() -> None:
    assert check("key=is.null", {"id": 1, "data": None})
    assert not check("key=neq.x", {"id": 1, "data": None})
    assert check("data.x=is.null", {"id": 1, "data": None})
    assert check("data.x=is.null", {"id": 1, "data": "scalar"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.customer=eq.c7", False),
        ("data.customer=neq.c7", True),
        ("data.customer=gt.a", False),
        ("data.tags=eq.x", False),
        ("data.tags=neq.x", True),
        ("data.tags=lt.z", False),
        ("data=eq.x", False),
    ],
)
def test_objects_and_arrays_never_equal_a_literal(text: str, expected: bool) -> None:
    assert check(text) is expected


def test_whole_data_compares_when_scalar() -> None:
    assert check("data=eq.hello", {"data": "hello"})
    assert check("data=gt.3", {"data": 4})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('data.items.1.sku=in.("B,2",C)', True),
        ('data.items.1.sku=in.(B,"2")', False),
        ('data.v=in.("(x)")', True),
        ('data.q=in.("say \\"hi\\"")', True),
        ('data.b=in.("back\\\\slash")', True),
        ('data.e=in.("",z)', True),
        ("data.s=in.(a b)", True),
        ("data.s=in.(a,b)", False),
    ],
)
def test_in_with_quoting(text: str, expected: bool) -> None:
    envelope: dict[str, object] = {
        "data": {
            "items": ITEMS,
            "v": "(x)",
            "q": 'say "hi"',
            "b": "back\\slash",
            "e": "",
            "s": "a b",
        }
    }
    assert check(text, envelope) is expected


def test_conditions_are_anded() -> None:
    assert check("data.status=eq.paid&data.amount=gte.100&topic=eq.orders.created")
    assert not check("data.status=eq.paid&data.amount=gte.200&topic=eq.orders.created")
    assert not check("data.status=eq.open&data.amount=gte.100")


def test_datetime_values_compare_with_iso_literals() -> None:
    aware = {"time": datetime(2024, 5, 1, 12, tzinfo=UTC)}
    naive = {"time": datetime(2024, 5, 1, 12)}
    assert check("time=eq.2024-05-01T12:00:00+00:00", aware)
    assert check("time=gt.2024-05-01T11:00:00Z", aware)
    assert check("time=lt.2024-05-01T13:00:00", naive)
    assert check("time=in.(2024-05-01T12:00:00)", naive)
    # Naive against aware has no defined order: no match instead of an error.
    assert not check("time=lt.2024-05-01T13:00:00", aware)
    assert not check("time=eq.2024-05-01T12:00:00Z", naive)
    assert check("time=neq.2024-05-01T12:00:00Z", naive)
    assert not check("time=gt.yesterday", aware)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data.x", "filter condition 1 'data.x': missing '=' (write FIELD=OP.VALUE)"),
        (
            "id=eq.1&data.x=foo.1",
            "filter condition 2 'data.x=foo.1': unknown operator 'foo'"
            " (use eq, neq, gt, gte, lt, lte, in, is)",
        ),
        (
            "status=eq.x",
            "filter condition 1 'status=eq.x': unknown field 'status'"
            " (use id, topic, type, key, time or data.<path>)",
        ),
        ("=eq.x", "filter condition 1 '=eq.x': unknown field ''"),
        (
            "topic.a=eq.x",
            "filter condition 1 'topic.a=eq.x': field 'topic' has no sub-fields;"
            " only data.<path> does",
        ),
        ("data..a=eq.x", "filter condition 1 'data..a=eq.x': empty path segment in 'data..a'"),
        ("data.=eq.x", "filter condition 1 'data.=eq.x': empty path segment in 'data.'"),
        ("data.a=eq", "filter condition 1 'data.a=eq': missing '.' after operator 'eq'"),
        ("data.a=", "filter condition 1 'data.a=': unknown operator ''"),
        (
            "data.a=is.nil",
            "filter condition 1 'data.a=is.nil': 'is' takes null, true or false, not 'nil'",
        ),
        ("data.a=is.NULL", "'is' takes null, true or false"),
        ("id=eq.1&", "filter condition 2 '': is empty"),
        ("&id=eq.1", "filter condition 1 '': is empty"),
        ("data.a=in.a,b", "filter condition 1 'data.a=in.a,b': 'in' takes a parenthesized list"),
        ("data.a=in.(a,b", "filter condition 1 'data.a=in.(a,b': unbalanced parentheses"),
        ("data.a=in.(a,b))", "unbalanced parentheses: unexpected ')' after ')'"),
        ("data.a=in.(a)x", "unbalanced parentheses: unexpected 'x' after ')'"),
        ("data.a=in.(a(b))", "unbalanced parentheses: quote a value that contains '('"),
        ("data.a=in.(", "unbalanced parentheses: missing ')'"),
        ("data.a=in.()", "'in' needs at least one value"),
        ("data.a=in.(a,)", "empty value in 'in' list"),
        ("data.a=in.(,a)", "empty value in 'in' list"),
        ('data.a=in.("a,b)', "unterminated quote in 'in' list"),
        ('data.a=in.(a"b")', "stray '\"' in 'in' list"),
        ('data.a=in.("a"b)', "unexpected 'b' after a quoted value in 'in' list"),
    ],
)
def test_error_messages(text: str, message: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        compile_filter(text)
    assert message in caught.value.message
    assert caught.value.message.startswith("filter condition ")


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidFilter, match=r"^filter must be a string$"):
        compile_filter(123)  # type: ignore[arg-type]


def test_limits() -> None:
    assert check("&".join(["id=eq.42"] * 20))
    with pytest.raises(InvalidFilter, match=r"^filter has 21 conditions; at most 20 are allowed$"):
        compile_filter("&".join(["id=eq.42"] * 21))

    assert not check("data.a=in.(" + ",".join(str(i) for i in range(100)) + ")")
    with pytest.raises(InvalidFilter, match="'in' takes at most 100 values"):
        compile_filter("data.a=in.(" + ",".join(str(i) for i in range(101)) + ")")

    assert check("data." + ".".join(["a"] * 10) + "=is.null")
    with pytest.raises(InvalidFilter, match="path is deeper than 10 segments"):
        compile_filter("data." + ".".join(["a"] * 11) + "=is.null")

    assert check("data.a=neq." + "x" * 1989, {"data": {"a": "y"}})
    with pytest.raises(InvalidFilter, match=r"^filter is longer than 2000 characters \(2001\)$"):
        compile_filter("data.a=neq." + "x" * 1990)


def test_long_condition_is_quoted_short() -> None:
    with pytest.raises(InvalidFilter) as caught:
        compile_filter("data.a=bad." + "x" * 1000)
    assert len(caught.value.message) < 200


_GRAMMAR_CHARS = 'datimeopckyx.=&(),"\\ eqngtlsu0129-_'


@given(st.text(max_size=80) | st.text(alphabet=_GRAMMAR_CHARS, max_size=80))
def test_garbage_only_ever_raises_invalid_filter(text: str) -> None:
    try:
        compiled = compile_filter(text)
    except InvalidFilter:
        return
    if compiled is not None:
        compiled.matches(EVENT)
        compiled.matches({})


_LITERALS = st.sampled_from(["a", "b", "1", "2.5", "-3", "true", "false", "null", "2024-01-01"])
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.sampled_from(["a", "b", "1", "true"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.datetimes(),
    st.datetimes(timezones=st.just(UTC)),
)


@given(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"]), _LITERALS, _VALUES)
def test_any_value_against_any_literal_never_raises(op: str, literal: str, value: object) -> None:
    for field in ("data", "time"):
        compiled = compile_filter(f"{field}={op}.{literal}")
        assert compiled is not None
        compiled.matches({field: value})


@given(_LITERALS, _VALUES)
def test_neq_is_eq_negated_except_for_null(literal: str, value: object) -> None:
    eq = check(f"data=eq.{literal}", {"data": value})
    neq = check(f"data=neq.{literal}", {"data": value})
    assert neq is (value is not None and not eq)


EXACT: dict[str, object] = {
    "data": {
        "big": exactjson.loads("18446744073709551616"),
        "precise": exactjson.loads("0.1000000000000000000001"),
        "tiny": exactjson.loads("1e-400"),
        "plain": 0.1,
    }
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.big=eq.18446744073709551616", True),
        ("data.big=eq.18446744073709551617", False),
        ("data.big=gt.18446744073709551615", True),
        ("data.big=gt.1e19", True),
        ("data.precise=eq.0.1000000000000000000001", True),
        ("data.precise=eq.0.1", False),
        ("data.precise=gt.0.1", True),
        ("data.tiny=gt.0", True),
        ("data.tiny=lt.1e-399", True),
        # A double meets a long literal as the decimal it was written as.
        ("data.plain=lt.0.1000000000000000000001", True),
        ("data.plain=gt.0.1000000000000000000001", False),
        ("data.plain=eq.0.10000000000000000000", True),
        ("data.plain=eq.0.1", True),
    ],
)
def test_numbers_beyond_a_double_compare_exactly(text: str, expected: bool) -> None:
    assert check(text, EXACT) is expected


def test_a_literal_beyond_postgresql_numeric_is_an_invalid_filter() -> None:
    with pytest.raises(InvalidFilter, match="is out of range"):
        compile_filter("data.n=gt.1e131072")
