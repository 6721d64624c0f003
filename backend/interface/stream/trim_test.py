"""When the sweeps hand freed memory back: only after a large drop in open connections,
and once more at the round after."""

from __future__ import annotations

import sys

import pytest

from backend.interface.stream.trim import TRIM_MIN_CLOSED, Trimmer


def test_trims_once_the_count_has_fallen_by_half_and_by_the_minimum() -> None:
    trimmer = Trimmer()
    for count in (0, 5000, 19_000, 18_000, 10_000):
        trimmer.note(count)
    assert trimmer.trims == 0
    trimmer.note(9_500)
    assert (trimmer.trims, trimmer.high) == (1, 9_500)
    trimmer.note(9_000)  # once more, for what the crowd freed since
    assert trimmer.trims == 2
    trimmer.note(8_800)
    trimmer.note(9_000)
    assert trimmer.trims == 2


def test_small_servers_never_trim() -> None:
    trimmer = Trimmer()
    for count in (TRIM_MIN_CLOSED - 1, 0, TRIM_MIN_CLOSED - 1, 0):
        trimmer.note(count)
    assert trimmer.trims == 0


def test_a_crowd_that_came_and_went_between_two_rounds_is_trimmed_after() -> None:
    trimmer = Trimmer()
    trimmer.note(0)
    for count in range(1, 5001):
        trimmer.opened(count)
    trimmer.note(0)
    assert trimmer.trims == 1


def test_a_trim_re_sizes_the_tables_it_is_given_after_collecting() -> None:
    held = set(range(20_000))
    grown = sys.getsizeof(held)
    trimmer = Trimmer(lambda: (held,))
    trimmer.note(20_000)
    held.difference_update(range(1, 20_000))
    trimmer.note(0)
    assert trimmer.trims == 1
    assert held == {0}
    assert sys.getsizeof(held) < grown / 100


def test_a_failing_source_is_logged_and_the_others_are_still_compacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> tuple[set[int], ...]:
        raise RuntimeError("an internal moved")

    held = set(range(20_000))
    trimmer = Trimmer(broken, lambda: (held,))
    trimmer.note(20_000)
    held.difference_update(range(1, 20_000))
    trimmer.note(0)
    assert trimmer.trims == 1
    assert "could not re-size the tables a crowd left" in caplog.text
    assert sys.getsizeof(held) < 1024
