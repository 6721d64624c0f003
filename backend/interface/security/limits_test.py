"""Token buckets and connection slots with a fake clock."""

from __future__ import annotations

import pytest

from backend.interface.security.limits import ConnectionSlots, RateLimiter, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0  # other keys have their own bucket
    clock.now += 0.5
    assert limiter.take("a") == 0
    clock.now += 100  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0


def test_the_oldest_buckets_are_dropped_beyond_the_limit() -> None:
    limiter = RateLimiter(rate=1, burst=1, clock=Clock(), max_buckets=2)
    for key in ("a", "b", "a", "c"):
        limiter.take(key)
    assert limiter.take("a") > 0  # kept: recently used
    assert limiter.take("b") == 0  # dropped, so it starts full again


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after_seconds(w) for w in (0.01, 1.0, 1.2)] == [1, 1, 2]


def test_slots_count_up_to_the_limit() -> None:
    slots = ConnectionSlots(2)
    assert [slots.acquire() for _ in range(3)] == [True, True, False]
    slots.release()
    assert slots.acquire()
