"""Topic and queue names, and NATS-style subscription patterns over them.

A name is 1-200 characters of dot-separated segments made of `[A-Za-z0-9_:-]`. A pattern
may also use `*` (exactly one segment) and, as its last segment only, `>` (one or more
segments). The same pattern is matched in Python per event and, via `sql_regex`, inside
PostgreSQL, so both forms must agree exactly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from backend.core.errors import InvalidName, InvalidQueueName, TooManyPatterns

MAX_NAME_LENGTH = 200
KNOWN_PATTERNS = 1024
ONE = "*"
REST = ">"

_NAME = re.compile(r"[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*")
_SEGMENT = re.compile(r"[A-Za-z0-9_:-]+")
_SEGMENT_CHAR = re.compile(r"[^A-Za-z0-9_:-]")
_QUOTE_LIMIT = 60
# Literal segments only hold characters that are not special in a POSIX regex, so they are
# emitted verbatim; only the separating dots need escaping.
_SQL_SEPARATOR = r"\."
_SQL_ONE = "[^.]+"


def _quote(text: str) -> str:
    """Quote user input for a message, cut short so a huge input cannot flood logs."""
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return repr(text)


def _check(text: object, kind: str, *, wildcards: bool) -> str:
    """Validate a name or pattern, raising InvalidName that pinpoints the first problem."""
    error = InvalidQueueName if kind == "queue" else InvalidName
    if not isinstance(text, str):
        raise error(f"{kind} must be a string")
    if not text:
        raise error(f"{kind} '': must not be empty")
    if len(text) > MAX_NAME_LENGTH:
        raise error(
            f"{kind} {_quote(text)}: longer than {MAX_NAME_LENGTH} characters ({len(text)})"
        )
    if _NAME.fullmatch(text):
        return text
    segments = text.split(".")
    last = len(segments)
    for number, segment in enumerate(segments, start=1):
        problem = _segment_problem(segment, number, last, wildcards=wildcards)
        if problem:
            raise error(f"{kind} {_quote(text)}: {problem}")
    return text


def _segment_problem(segment: str, number: int, last: int, *, wildcards: bool) -> str | None:
    """Describe what is wrong with one segment, or None when it is fine."""
    if not segment:
        return f"segment {number} is empty"
    if wildcards:
        if segment == ONE:
            return None
        if segment == REST:
            if number == last:
                return None
            return f"'>' is only allowed as the last segment (found in segment {number})"
        if ONE in segment or REST in segment:
            return (
                f"segment {number} {segment!r} mixes a wildcard with other characters;"
                " '*' and '>' must stand alone"
            )
    bad = _SEGMENT_CHAR.search(segment)
    if bad:
        return f"segment {number} has an invalid character {bad.group()!r}"
    return None


def is_segment(text: str) -> bool:
    """Whether `text` is one literal name segment (no dot, no wildcard)."""
    return _SEGMENT.fullmatch(text) is not None


def validate_name(name: object, kind: str = "topic") -> str:
    """Return `name` when it is a valid topic or queue name; `kind` labels the message."""
    return _check(name, kind, wildcards=False)


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed subscription pattern, with its matching data precomputed once.

    Matching runs per event per subscriber, so the split into segments, the positions of
    literal segments and the length rule are all worked out at construction.
    """

    text: str
    segments: tuple[str, ...] = field(init=False)
    is_literal: bool = field(init=False)
    _open_ended: bool = field(init=False, repr=False, compare=False)
    _literals: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.text, "pattern", wildcards=True)
        segments = tuple(self.text.split("."))
        literals = tuple((i, s) for i, s in enumerate(segments) if s not in (ONE, REST))
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "is_literal", len(literals) == len(segments))
        object.__setattr__(self, "_open_ended", segments[-1] == REST)
        object.__setattr__(self, "_literals", literals)

    @classmethod
    def parse(cls, text: object) -> Pattern:
        """Parse untrusted input; raises InvalidName naming the exact problem. Patterns are
        immutable, so the subscriptions of one topic share one (`_known_pattern`)."""
        if not isinstance(text, str):
            raise InvalidName("pattern must be a string")
        return _known_pattern(text)

    def matches(self, topic: str) -> bool:
        """Whether `topic` is selected by this pattern."""
        if self.is_literal:
            return topic == self.text
        parts = topic.split(".")
        size = len(self.segments)
        if self._open_ended:
            if len(parts) < size:
                return False
        elif len(parts) != size:
            return False
        if "" in parts:
            return False
        return all(parts[i] == literal for i, literal in self._literals)

    def sql_regex(self) -> str:
        """An anchored regex for PostgreSQL's `~` that selects exactly what `matches` does."""
        pieces = [_SQL_ONE if s in (ONE, REST) else s for s in self.segments]
        body = _SQL_SEPARATOR.join(pieces)
        if self._open_ended:
            body += f"({_SQL_SEPARATOR}{_SQL_ONE})*"
        return f"^{body}$"

    def covers(self, other: Pattern) -> bool:
        """Whether every topic `other` can match is also matched by this pattern.

        Lets callers drop redundant subscriptions. Each segment of `self` must accept
        everything the aligned segment of `other` accepts; a trailing `>` in `self`
        absorbs any remaining segments of `other`, while without one the lengths must agree.
        """
        mine = self.segments
        theirs = other.segments
        if self._open_ended:
            fixed = len(mine) - 1
            if len(theirs) <= fixed:
                return False
        else:
            if other._open_ended or len(theirs) != len(mine):
                return False
            fixed = len(mine)
        return all(mine[i] == ONE or mine[i] == theirs[i] for i in range(fixed))

    @staticmethod
    def any_matches(patterns: Iterable[Pattern], topic: str) -> bool:
        """Whether at least one of `patterns` selects `topic`."""
        return matches_any(patterns, topic)


def matches_any(patterns: Iterable[Pattern], topic: str) -> bool:
    """Whether at least one of `patterns` selects `topic`."""
    return any(pattern.matches(topic) for pattern in patterns)


@functools.lru_cache(maxsize=KNOWN_PATTERNS)
def _known_pattern(text: str) -> Pattern:
    """The pattern for `text`, shared while it is among the KNOWN_PATTERNS last used: every
    idle subscription holds its patterns, and most subscribe to a few topics."""
    return Pattern(text)


def parse_patterns(texts: Iterable[object], limit: int | None = None) -> tuple[Pattern, ...]:
    """Parse a subscription's patterns, failing on the first invalid one.

    With `limit`, more than that many patterns fail before any is parsed.
    """
    if isinstance(texts, str):
        raise InvalidName("topic patterns must be a list of strings, not a single string")
    texts = list(texts)
    if limit is not None and len(texts) > limit:
        raise TooManyPatterns(
            f"{len(texts)} topic patterns; at most {limit} are allowed per subscription"
        )
    patterns = tuple(Pattern.parse(text) for text in texts)
    if not patterns:
        raise InvalidName("at least one topic pattern is required")
    return patterns
