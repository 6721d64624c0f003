"""Hypothesis strategies for JSON texts whose numbers a double or a 64-bit integer cannot
hold, for the tests that check every number comes back digit for digit."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import strategies as st

DEPTH_LIMIT = 1024
"""How deep a body or frame may nest (docs/protocol.md §1.2)."""


def nested(depth: int) -> str:
    """A JSON value `depth` levels deep (an array is one level)."""
    return "[" * depth + "]" * depth


def exact(text: bytes | str) -> Any:
    """The reference reading: Python's parser with every number as a Decimal."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def numbers() -> st.SearchStrategy[str]:
    """JSON number literals: huge integers, long fractions, exponents up to 500."""
    digits = st.text("0123456789", min_size=1, max_size=60)
    integer = st.one_of(
        st.just("0"), st.builds(lambda a, b: a + b, st.sampled_from("123456789"), digits)
    )
    fraction = st.one_of(st.just(""), digits.map(lambda d: "." + d))
    exponent = st.one_of(
        st.just(""),
        st.builds(
            lambda e, s, n: f"{e}{s}{n}",
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.integers(0, 500),
        ),
    )
    sign = st.sampled_from(["", "-"])
    literal = st.builds(lambda s, i, f, e: s + i + f + e, sign, integer, fraction, exponent)
    # Doubles as orjson writes them: long ones are flagged by the scan and must stay floats.
    double = st.floats(allow_nan=False, allow_infinity=False).map(
        lambda f: orjson.dumps(f).decode()
    )
    return st.one_of(literal, double)


def _no_nul(text: str) -> bool:
    return "\x00" not in text


def documents() -> st.SearchStrategy[str]:
    """JSON texts mixing such numbers with strings that look like numbers or escapes."""
    scalars = st.one_of(
        numbers(),
        st.text(max_size=20).filter(_no_nul).map(json.dumps),
        st.sampled_from(
            [
                "true",
                "false",
                "null",
                '"12345678901234567890"',
                '"\\\\u0000"',
                '"e1796011917.5834508"',
                '"id-0.30000000000000004"',
            ]
        ),
    )
    keys = st.text(max_size=8).filter(_no_nul)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5).map(lambda items: "[" + ", ".join(items) + "]"),
            st.dictionaries(keys, inner, max_size=5).map(
                lambda obj: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in obj.items()) + "}"
            ),
        ),
        max_leaves=20,
    )
