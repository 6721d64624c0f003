"""A subject trie: which subscription patterns select a topic, found by walking the topic.

Testing every pattern of every subscriber against each event costs time in proportion to
the number of patterns, so one connection with thousands of wildcards slowed delivery for
everyone. Here patterns are stored segment by segment; a topic walks down the literal
child and the `*` child of each node it reaches and collects the values of `>` children on
the way, so the cost depends on the topic's segments and the patterns that do match, not
on how many patterns are stored. Matching agrees exactly with `Pattern.matches`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from backend.core.names import ONE, REST, Pattern

T = TypeVar("T", bound=Hashable)


@dataclass(eq=False, slots=True)
class _Node(Generic[T]):
    """One segment position; `values` are the patterns that end exactly here."""

    children: dict[str, _Node[T]] = field(default_factory=dict)
    values: set[T] = field(default_factory=set)


class SubjectTrie(Generic[T]):
    """Maps patterns to sets of values (e.g. subscribers) and answers `match(topic)`."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()

    def add(self, pattern: Pattern, value: T) -> None:
        """Store `value` under `pattern` (a value stored twice under one pattern counts once)."""
        node = self._root
        for segment in pattern.segments:
            node = node.children.setdefault(segment, _Node())
        node.values.add(value)

    def discard(self, pattern: Pattern, value: T) -> None:
        """Forget `value` under `pattern` and prune the branches left empty."""
        path = [self._root]
        for segment in pattern.segments:
            child = path[-1].children.get(segment)
            if child is None:
                return
            path.append(child)
        path[-1].values.discard(value)
        for depth in range(len(pattern.segments), 0, -1):
            node = path[depth]
            if node.values or node.children:
                return
            del path[depth - 1].children[pattern.segments[depth - 1]]

    def match(self, topic: str) -> set[T]:
        """The values of every stored pattern that selects `topic`."""
        parts = topic.split(".")
        found: set[T] = set()
        if "" in parts:
            return found
        level = [self._root]
        for part in parts:
            following: list[_Node[T]] = []
            for node in level:
                rest = node.children.get(REST)
                if rest is not None:
                    found |= rest.values
                literal = node.children.get(part)
                if literal is not None:
                    following.append(literal)
                one = node.children.get(ONE)
                if one is not None and one is not literal:
                    following.append(one)
            if not following:
                return found
            level = following
        for node in level:
            found |= node.values
        return found

    def tables(self) -> Iterator[set[T] | dict[str, _Node[T]]]:
        """Every node's set of values and dict of children (for `backend.core.compaction`)."""
        pending = [self._root]
        while pending:
            node = pending.pop()
            yield node.values
            yield node.children
            pending.extend(node.children.values())

    def __bool__(self) -> bool:
        return bool(self._root.children)
