"""The subject trie against the plain per-pattern matcher it replaces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backend.core.names import Pattern
from backend.core.subjects import SubjectTrie

# A tiny alphabet makes shared prefixes, collisions and wildcard overlaps common.
literal = st.sampled_from(["a", "b", "c"])
topics = st.lists(literal, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> Pattern:
    segments = draw(st.lists(st.one_of(literal, st.just("*")), min_size=0, max_size=4))
    if draw(st.booleans()) or not segments:
        segments.append(">")
    return Pattern(".".join(segments))


entries = st.lists(st.tuples(patterns(), st.integers(0, 5)), max_size=30)


def expected(stored: list[tuple[Pattern, int]], topic: str) -> set[int]:
    return {value for pattern, value in stored if pattern.matches(topic)}


@given(stored=entries, topic=topics)
def test_the_trie_selects_exactly_what_the_patterns_match(
    stored: list[tuple[Pattern, int]], topic: str
) -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    for pattern, value in stored:
        trie.add(pattern, value)
    assert trie.match(topic) == expected(stored, topic)


@given(stored=entries, removed=st.sets(st.integers(0, 29)), topic=topics)
def test_discarding_forgets_only_what_was_discarded(
    stored: list[tuple[Pattern, int]], removed: set[int], topic: str
) -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    unique = list(dict.fromkeys(stored))
    for pattern, value in unique:
        trie.add(pattern, value)
    kept = [entry for index, entry in enumerate(unique) if index not in removed]
    for index, (pattern, value) in enumerate(unique):
        if index in removed:
            trie.discard(pattern, value)
    assert trie.match(topic) == expected(kept, topic)
    for pattern, value in kept:
        trie.discard(pattern, value)
    assert not trie
    assert trie.match(topic) == set()


def test_literal_topics_and_wildcards_in_one_trie() -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    for text in ["orders.created", "orders.*", "orders.>", ">", "*", "*.created.x", "users.>"]:
        trie.add(Pattern(text), text)
    assert trie.match("orders.created") == {"orders.created", "orders.*", "orders.>", ">"}
    assert trie.match("orders") == {">", "*"}
    assert trie.match("orders.created.x") == {"orders.>", ">", "*.created.x"}
    assert trie.match("users") == {">", "*"}


def test_a_topic_with_an_empty_segment_matches_nothing() -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    trie.add(Pattern(">"), "all")
    trie.add(Pattern("*.*"), "two")
    assert trie.match("a..b") == set()
    assert trie.match("a.") == set()


def test_discarding_an_unknown_pattern_changes_nothing() -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    trie.add(Pattern("a.b"), "x")
    trie.discard(Pattern("a.c"), "x")
    trie.discard(Pattern("a.b.c"), "x")
    trie.discard(Pattern("a.b"), "y")
    assert trie.match("a.b") == {"x"}


def test_thousands_of_wildcards_under_one_prefix() -> None:
    trie: SubjectTrie[int] = SubjectTrie()
    for number in range(20_000):
        trie.add(Pattern(f"a.*.x{number}"), number)
    assert trie.match("a.b.x7") == {7}
    assert trie.match("a.b.y") == set()
    assert trie.match("b.c.x7") == set()


def test_tables_are_every_nodes_values_and_children() -> None:
    trie: SubjectTrie[str] = SubjectTrie()
    for text in ["a.b", "a.*", "c"]:
        trie.add(Pattern(text), text)
    tables = list(trie.tables())
    values = [table for table in tables if isinstance(table, set)]
    children = [table for table in tables if isinstance(table, dict)]
    assert sorted(map(sorted, values)) == [[], [], ["a.*"], ["a.b"], ["c"]]
    assert sorted(map(sorted, children)) == [[], [], [], ["*", "b"], ["a", "c"]]
