"""A small PostgREST-style filter language over event envelopes.

`data.status=eq.paid&data.amount=gte.100` keeps the events whose every condition holds.
A condition is `FIELD=OP.VALUE`; FIELD is `id`, `topic`, `type`, `key`, `time` or
`data[.segment...]`, where a segment of digits also indexes into an array.

Values are taken literally: `&` always separates conditions, so no value can contain it,
and no whitespace is trimmed. Only `in.(...)` lists give double quotes a meaning
(`in.("a,b",c)`, with `\\"` and `\\\\` as escapes inside quotes).

Comparison semantics, chosen to be predictable rather than clever:

* A missing path behaves like JSON null, and null behaves like SQL NULL: only `is.null`
  is true; every other operator, `neq` included, is false.
* A JSON number (not a bool) against a numeric literal compares numerically.
* A bool compares with `eq.true` / `eq.false` (and `neq`); it has no order.
* A string compares as a string with the literal, so the JSON string "99" is `gt.100`
  (lexicographic); put numbers in events as numbers to compare them as numbers.
* Envelope `id` and `time` are strings that sort correctly as strings (fixed-width ids,
  RFC 3339 UTC times), so `time=gte.2026-11-26T00:00:00Z` and `id=gt.0000000000000042`
  work; a `datetime` value (Python callers) compares with an ISO 8601 literal.
* Anything else (object, array, number against a non-numeric literal) never equals a
  literal, so `eq` is false and `neq` true, and has no order, so gt/gte/lt/lte are false.
* `in` is true when any listed value would satisfy `eq`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from backend.core import exactjson
from backend.core.errors import InvalidEvent, InvalidFilter

MAX_FILTER_LENGTH = 2000
MAX_CONDITIONS = 20
MAX_IN_VALUES = 100
MAX_PATH_DEPTH = 10

FIELDS = ("id", "topic", "type", "key", "time", "data")
OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "is")

_QUOTE_LIMIT = 80
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?P<real>(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)")
# Operands are checked to share a type (str, number or datetime) before these are applied.
_ORDERS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}

Test = Callable[[object], bool]
Accessor = Callable[[Mapping[str, object]], object]


class _Missing:
    """Marks a path that leads nowhere; distinct from a JSON null only in name."""

    __slots__ = ()


_MISSING = _Missing()


def _quote(text: str) -> str:
    """Quote user input for a message, cut short so a huge input cannot flood logs."""
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return repr(text)


class _ConditionError(Exception):
    """A problem in one condition; the caller adds the condition's number and text."""


@dataclass(frozen=True, slots=True)
class _Literal:
    """A filter value parsed once into every type it could be compared as."""

    text: str
    number: int | float | Decimal | None
    boolean: bool | None
    moment: datetime | None

    @classmethod
    def parse(cls, text: str) -> _Literal:
        number: int | float | Decimal | None = None
        found = _JSON_NUMBER.fullmatch(text)
        if found:
            try:
                number = exactjson.loads(text)  # the same type as the data it meets
            except InvalidEvent as exc:
                raise _ConditionError(exc.message) from None
        boolean = {"true": True, "false": False}.get(text)
        try:
            moment: datetime | None = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        return cls(text, number, boolean, moment)

    def equals(self, value: object) -> bool:
        """Typed equality for a present, non-null value."""
        if isinstance(value, bool):
            return value is self.boolean
        pair = self.operands(value)
        return pair is not None and pair[0] == pair[1]

    def operands(self, value: object) -> tuple[Any, Any] | None:
        """`value` and this literal in a type they share, or None when there is none."""
        if isinstance(value, str):
            return value, self.text
        if isinstance(value, datetime):
            return (value, self.moment) if _comparable(value, self.moment) else None
        numeric = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
        if not numeric or self.number is None:
            return None
        if isinstance(value, Decimal) or isinstance(self.number, Decimal):
            # A number beyond a double on either side: both compare as written in decimal.
            return _decimal(value), _decimal(self.number)
        return value, self.number


def _decimal(number: object) -> object:
    """A JSON float as the decimal it was written as (its shortest round-trip form)."""
    if isinstance(number, float) and math.isfinite(number):
        return Decimal(repr(number))
    return number


def _comparable(value: datetime, moment: datetime | None) -> bool:
    """Naive and aware datetimes cannot be compared; treat that as no match, not an error."""
    return moment is not None and (value.utcoffset() is None) == (moment.utcoffset() is None)


def _present(value: object) -> bool:
    return value is not None and value is not _MISSING


def _build_test(op: str, value: str) -> Test:
    """Turn an operator and its raw value into a predicate over the field's value."""
    if op == "is":
        return _build_is(value)
    if op == "in":
        choices = tuple(_Literal.parse(item) for item in _parse_list(value))
        return lambda v: _present(v) and any(c.equals(v) for c in choices)
    literal = _Literal.parse(value)
    if op == "eq":
        return lambda v: _present(v) and literal.equals(v)
    if op == "neq":
        return lambda v: _present(v) and not literal.equals(v)
    order = _ORDERS[op]

    def ordered(v: object) -> bool:
        if not _present(v):
            return False
        pair = literal.operands(v)
        return pair is not None and order(*pair)

    return ordered


def _build_is(value: str) -> Test:
    if value == "null":
        return lambda v: not _present(v)
    if value == "true":
        return lambda v: v is True
    if value == "false":
        return lambda v: v is False
    raise _ConditionError(f"'is' takes null, true or false, not {_quote(value)}")


def _parse_list(value: str) -> list[str]:
    """Parse `(a,"b,c",d)`; quotes let a value hold commas, parentheses or quotes."""
    if not value.startswith("("):
        raise _ConditionError("'in' takes a parenthesized list, e.g. in.(a,b)")
    items: list[str] = []
    size = len(value)
    i = 1
    while True:
        if i < size and value[i] == '"':
            chars: list[str] = []
            i += 1
            while i < size and value[i] != '"':
                if value[i] == "\\" and i + 1 < size:
                    i += 1
                chars.append(value[i])
                i += 1
            if i >= size:
                raise _ConditionError("unterminated quote in 'in' list")
            i += 1
            items.append("".join(chars))
        else:
            start = i
            while i < size and value[i] not in ',()"':
                i += 1
            if i == start:
                if not items and i < size and value[i] == ")":
                    raise _ConditionError("'in' needs at least one value")
                if i < size and value[i] in ",)":
                    raise _ConditionError("empty value in 'in' list (write \"\" for one)")
            items.append(value[start:i])
        if len(items) > MAX_IN_VALUES:
            raise _ConditionError(f"'in' takes at most {MAX_IN_VALUES} values")
        if i >= size:
            raise _ConditionError("unbalanced parentheses: missing ')'")
        char = value[i]
        if char == ",":
            i += 1
        elif char == ")":
            if i != size - 1:
                raise _ConditionError(
                    f"unbalanced parentheses: unexpected {_quote(value[i + 1 :])} after ')'"
                )
            return items
        elif char == "(":
            raise _ConditionError("unbalanced parentheses: quote a value that contains '('")
        elif char == '"':
            raise _ConditionError("stray '\"' in 'in' list: quote the whole value")
        else:
            raise _ConditionError(f"unexpected {char!r} after a quoted value in 'in' list")


def _build_accessor(field: str) -> Accessor:
    """Resolve the field once into a top-level key and a path of (key, index) steps."""
    head, *path = field.split(".")
    if head not in FIELDS:
        raise _ConditionError(
            f"unknown field {_quote(head)} (use id, topic, type, key, time or data.<path>)"
        )
    if path and head != "data":
        raise _ConditionError(f"field {_quote(head)} has no sub-fields; only data.<path> does")
    if len(path) > MAX_PATH_DEPTH:
        raise _ConditionError(f"path is deeper than {MAX_PATH_DEPTH} segments")
    if "" in path:
        raise _ConditionError(f"empty path segment in {_quote(field)}")
    steps = tuple((key, int(key) if key.isascii() and key.isdigit() else None) for key in path)

    def access(envelope: Mapping[str, object]) -> object:
        value = envelope.get(head, _MISSING)
        for key, index in steps:
            if isinstance(value, Mapping):
                value = value.get(key, _MISSING)
            elif isinstance(value, list | tuple) and index is not None and index < len(value):
                value = value[index]
            else:
                return _MISSING
        return value

    return access


def _compile_condition(text: str) -> tuple[Accessor, Test]:
    if not text:
        raise _ConditionError("is empty")
    field, equals, rest = text.partition("=")
    if not equals:
        raise _ConditionError("missing '=' (write FIELD=OP.VALUE)")
    accessor = _build_accessor(field)
    op, dot, value = rest.partition(".")
    if op not in OPERATORS:
        raise _ConditionError(
            f"unknown operator {_quote(op)} (use eq, neq, gt, gte, lt, lte, in, is)"
        )
    if not dot:
        raise _ConditionError(f"missing '.' after operator '{op}' (write {op}.VALUE)")
    return accessor, _build_test(op, value)


class Filter:
    """A compiled filter: parsed once, then matched against every candidate event."""

    __slots__ = ("_checks", "text")

    def __init__(self, text: str, checks: tuple[tuple[Accessor, Test], ...]) -> None:
        self.text = text
        self._checks = checks

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"

    def matches(self, envelope: Mapping[str, object]) -> bool:
        """Whether every condition holds for this event envelope."""
        return all(test(access(envelope)) for access, test in self._checks)


def compile_filter(text: str | None) -> Filter | None:
    """Parse a filter expression; None or an empty string means no filter at all."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise InvalidFilter("filter must be a string")
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"filter is longer than {MAX_FILTER_LENGTH} characters ({len(text)})")
    conditions = text.split("&")
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidFilter(
            f"filter has {len(conditions)} conditions; at most {MAX_CONDITIONS} are allowed"
        )
    checks = []
    for number, condition in enumerate(conditions, start=1):
        try:
            checks.append(_compile_condition(condition))
        except _ConditionError as error:
            raise InvalidFilter(f"filter condition {number} {_quote(condition)}: {error}") from None
    return Filter(text, tuple(checks))
