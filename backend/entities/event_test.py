"""Event value helpers: the wire form of times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from backend.entities.event import format_time


def test_times_are_rfc3339_in_utc_with_microseconds_and_z() -> None:
    assert format_time(datetime(2026, 11, 30, 8, 5, 9, 42, tzinfo=UTC)) == (
        "2026-11-30T08:05:09.000042Z"
    )
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"


def test_other_offsets_are_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 1, 1, 1, 30, 0, 123456, tzinfo=plus_two)
    assert format_time(moment) == "2025-12-31T23:30:00.123456Z"
    assert format_time(moment) == moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_years_before_1000_keep_four_digits() -> None:
    assert format_time(datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == (
        "0999-12-31T23:59:59.999999Z"
    )


def test_a_remembered_time_is_the_same_instant_whatever_its_offset() -> None:
    utc = datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=UTC)
    same_instant = utc.astimezone(timezone(timedelta(hours=-5)))
    assert format_time(utc) == format_time(same_instant) == "2026-03-01T12:00:00.000005Z"
    assert format_time(utc + timedelta(microseconds=1)) == "2026-03-01T12:00:00.000006Z"
