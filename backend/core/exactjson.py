"""JSON text to Python values and back, keeping every number exact.

orjson holds numbers as 64-bit integers and doubles, so `18446744073709551616` or
`0.1000000000000000000001` would silently change on the way through, while PostgreSQL's
`jsonb` keeps them. Only a number with at least 16 digits or a three-digit exponent can
change (up to 15 significant digits and exponents under 100 survive a double exactly),
so a cheap scan of the text decides: in the common case orjson does all the work. A
flagged number that is a double's shortest form (a Unix time with microseconds) comes
through orjson unchanged too, so only a text with some other long number takes the exact
parse, where just those numbers become `int` or `Decimal`, written back digit for digit.

Parsing also enforces the two rules every input shares: at most MAX_DEPTH levels of
nesting, and no NUL character (PostgreSQL cannot store one) in any string or key.
"""

from __future__ import annotations

import re
import secrets
from decimal import Decimal
from typing import Any, Final

import orjson

from backend.core.errors import InvalidEvent, InvalidJson

MAX_DEPTH: Final = 1024
"""Deepest nesting accepted: orjson's own parsing limit, enforced the same everywhere."""
MAX_INT_DIGITS: Final = 4000
"""Longer integers stay `Decimal`: Python refuses to convert over 4,300 digits."""
MAX_WHOLE_DIGITS: Final = 131_072
MAX_FRACTION_DIGITS: Final = 16_383
"""PostgreSQL's `numeric` (and so `jsonb`) holds no number with more digits than these."""

# The scan runs on every input, so it is a byte translation and two substring searches
# (a regex costs several times orjson's own parse): digits and "." become "9", exponent
# marks and signs "e"; then 16 nines or "e999" mark a text that may hold such a number.
_SHAPES = bytes.maketrans(b"0123456789.eE+-", b"99999999999eeee")
_LONG_MANTISSA = b"9" * 16
_LONG_EXPONENT = b"e999"
_RISKY = re.compile(r"[0-9.]{16,}|[eE][+-]?[0-9]{3,}")
_RISKY_BYTES = re.compile(_RISKY.pattern.encode())
# Every byte that cannot be part of a number becomes a space: splitting then gives the runs
# of number characters (a regex over the whole text cost several times orjson's parse).
_NUMBER_CHARS = b"0123456789.eE+-"
_NUMBER_RUNS = bytes.maketrans(
    bytes(range(256)), bytes(c if c in _NUMBER_CHARS else 32 for c in range(256))
)
# Strings are matched whole so that digits inside them are skipped; numbers per RFC 8259.
_STRING_OR_NUMBER = re.compile(
    r'"[^"\\]*(?:\\.[^"\\]*)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?', re.S
)
_NUL = "\x00"
# Drawn once per process: the tag never leaves it, and a fresh draw per parse cost a
# system call on every input holding a long number.
_NONCE = secrets.token_hex(16)


def loads(text: bytes | str, what: str = "the body", *, allow_nul: bool = False) -> Any:
    """The JSON value of `text`; InvalidJson if malformed or too deep, InvalidEvent if a
    string or key holds a NUL (naming where) unless `allow_nul` (the caller checks later).
    `what` names the text in messages."""
    risky = _risky_numbers(text)
    value = _parse_exactly(text, what) if risky and not _risky_keep(risky) else _parse(text, what)
    if not allow_nul and contains_nul(text):
        refuse_nul(value)
    return value


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """JSON of `value`, with `Decimal` and integers of any size written exactly and up to
    MAX_DEPTH levels of nesting; TypeError for what JSON cannot hold."""
    try:
        return orjson.dumps(
            value, default=_decimal, option=orjson.OPT_SORT_KEYS if sort_keys else 0
        )
    except orjson.JSONEncodeError:
        return _encode(value, sort_keys)


def contains_nul(text: bytes | str) -> bool:
    """Whether JSON text may hold a NUL; false positives (an escaped backslash) are fine."""
    return (b"\\u0000" in text) if isinstance(text, bytes) else ("\\u0000" in text)


def refuse_nul(value: Any, root: str = "$") -> None:
    """InvalidEvent naming the first string or key in `value` holding a NUL character."""
    pending: list[tuple[Any, str]] = [(value, root)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if _NUL in item:
                raise InvalidEvent(_nul_problem(f"the string at {path}"))
        elif isinstance(item, dict):
            for key, child in item.items():
                if _NUL in key:
                    raise InvalidEvent(_nul_problem(f"a key of {path}"))
                pending.append((child, _member(path, key)))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]") for index, child in enumerate(item))


def _nul_problem(where: str) -> str:
    return f"{where} holds a NUL character (\\u0000), which cannot be stored"


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{orjson.dumps(key).decode()}]"


def _risky_numbers(text: bytes | str) -> bytes | None:
    """`text` as bytes if orjson might change a number in it, else None (false positives
    only cost time)."""
    raw = text if isinstance(text, bytes) else text.encode(errors="surrogatepass")
    shapes = raw.translate(_SHAPES)
    return raw if _LONG_MANTISSA in shapes or _LONG_EXPONENT in shapes else None


def _risky_keep(raw: bytes) -> bool:
    """Whether every number `_RISKY` flags in `raw` is a double's shortest form, which
    orjson reads and writes back unchanged (a Unix time with microseconds, say): then
    orjson alone parses `raw` exactly. A flagged run is taken with every number character
    around it. Runs inside strings are checked the same way, which is harmless: one that
    is such a double changes nothing (orjson reads strings as they are), and any other
    run, there or not, leaves the text to the exact parse, which only costs time."""
    runs = {
        run
        for run in raw.translate(_NUMBER_RUNS).split()
        if len(run) >= 16 or (len(run) > 3 and _RISKY_BYTES.search(run))
    }
    for run in runs:
        if not (b"." in run or b"e" in run or b"E" in run):
            return False  # an integer: orjson keeps it as one only up to 64 bits
        try:
            if orjson.dumps(float(run)) != run:
                return False
        except ValueError:
            return False
    return True


def _parse(text: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):
            raise InvalidJson(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
        raise InvalidJson(f"{what} is not valid JSON: {exc}") from None


def _parse_exactly(text: bytes | str, what: str) -> Any:
    """Numbers orjson would change travel through it as strings starting with a tag no
    client can guess (a NUL and a random nonce), then become `int` or `Decimal`. A long
    fraction that is already a double's shortest form (a Unix time with microseconds, say)
    comes back from orjson unchanged, so it stays a float."""
    source = text.decode(errors="surrogateescape") if isinstance(text, bytes) else text
    nonce = _NONCE
    tagged = False

    def tag(match: re.Match[str]) -> str:
        nonlocal tagged
        token = match.group()
        if token.startswith('"') or not _RISKY.search(token) or _double_keeps(token):
            return token
        tagged = True
        return f'"\\u0000{nonce}{token}"'

    value = _parse(_STRING_OR_NUMBER.sub(tag, source), what)
    return _untag(value, _NUL + nonce) if tagged else value


def _double_keeps(token: str) -> bool:
    """Whether orjson reads the number `token` as a double and writes it back the same."""
    if not any(mark in token for mark in ".eE"):
        return False  # an integer: orjson keeps it as one only up to 64 bits
    return orjson.dumps(float(token)) == token.encode()


def _exact_number(token: str) -> int | Decimal:
    if len(token) <= MAX_INT_DIGITS and not any(c in token for c in ".eE"):
        return int(token)
    number = Decimal(token)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int), "JSON numbers are finite"
    whole = 0 if number.is_zero() else number.adjusted() + 1
    if whole > MAX_WHOLE_DIGITS or -exponent > MAX_FRACTION_DIGITS:
        raise InvalidEvent(
            f"the number {token[:40]}{'...' if len(token) > 40 else ''} is out of range: at"
            f" most {MAX_WHOLE_DIGITS} digits before the point and {MAX_FRACTION_DIGITS} after"
        )
    return number


def _untag(value: Any, tag: str) -> Any:
    """Turn the tagged strings back into numbers."""

    def restore(item: Any) -> Any:
        if isinstance(item, str) and item.startswith(tag):
            return _exact_number(item[len(tag) :])
        return item

    value = restore(value)
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                item[key] = restore(child)
                pending.append(item[key])
        elif isinstance(item, list):
            for index, child in enumerate(item):
                item[index] = restore(child)
                pending.append(item[index])
    return value


def _decimal(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"type {type(value).__name__} is not JSON serializable")


def _scalar(value: Any) -> bytes:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value).encode()
        except ValueError:
            raise TypeError("the integer has too many digits") from None
    if isinstance(value, orjson.Fragment):
        contents: bytes | str = value.contents
        return contents if isinstance(contents, bytes) else contents.encode()
    return orjson.dumps(value, default=_decimal)


def _encode(value: Any, sort_keys: bool) -> bytes:
    """The slow path for what orjson refuses: integers over 64 bits, nesting over 254."""
    out: list[bytes] = []
    # Entries are punctuation (bytes) or (value, depth) pairs still to be written.
    pending: list[bytes | tuple[Any, int]] = [(value, 1)]
    while pending:
        entry = pending.pop()
        if isinstance(entry, bytes):
            out.append(entry)
            continue
        item, depth = entry
        if isinstance(item, dict | list | tuple) and depth > MAX_DEPTH:
            raise TypeError(f"the value is nested deeper than {MAX_DEPTH} levels")
        parts: list[bytes | tuple[Any, int]] = []
        if isinstance(item, dict):
            keys = sorted(item) if sort_keys else list(item)
            for index, key in enumerate(keys):
                if not isinstance(key, str):
                    raise TypeError("JSON object keys must be strings")
                parts.append((b"," if index else b"") + orjson.dumps(key) + b":")
                parts.append((item[key], depth + 1))
            pending.extend(reversed([b"{", *parts, b"}"]))
        elif isinstance(item, list | tuple):
            for index, child in enumerate(item):
                if index:
                    parts.append(b",")
                parts.append((child, depth + 1))
            pending.extend(reversed([b"[", *parts, b"]"]))
        else:
            out.append(_scalar(item))
    return b"".join(out)
