"""Per-process limits: publish token buckets and streaming connection slots.

Both are plain in-memory counters: a process protects itself, and N processes behind a
load balancer allow N times as much. Neither touches the event loop, so they are
unit-tested with a fake clock in `limits_test.py`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(eq=False)
class RateLimiter:
    """One token bucket per key: `rate` per second on average, bursts up to `burst`.

    Buckets are kept in least-recently-used order; beyond `max_buckets` the oldest is
    dropped, which at worst lets an idle key start again with a full bucket.
    """

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    max_buckets: int = MAX_BUCKETS
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def take(self, key: str) -> float:
        """Spend one token: 0 when allowed, else the seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


def retry_after_seconds(wait: float) -> int:
    """A wait as the whole seconds of a `Retry-After` header (at least 1)."""
    return max(1, math.ceil(wait))


@dataclass(eq=False)
class ConnectionSlots:
    """Counts open SSE and WebSocket streams against MAX_CONNECTIONS."""

    limit: int
    used: int = 0

    def acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1
