"""Result types shared by the scenarios, the report and the charts."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One figure: pgcast next to its baseline measured in the same run."""

    case: str
    metric: str
    pgcast: float | None
    baseline: float | None
    baseline_name: str
    better: str = "higher"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """pgcast ÷ baseline (for latencies and memory, above 1 means pgcast costs more)."""
        if self.pgcast is None or not self.baseline:
            return None
        return self.pgcast / self.baseline

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class ScenarioResult:
    """Everything one scenario measured."""

    key: str
    title: str
    method: str
    rows: list[Row] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "method": self.method,
            "rows": [row.as_json() for row in self.rows],
            "series": self.series,
            "details": self.details,
            "seconds": round(self.seconds, 1),
            "error": self.error,
        }


def latencies_from(chunks: Sequence[bytes]) -> list[float]:
    """Sorted latencies (seconds) from the raw `array("d")` bytes of several processes."""
    values = array("d")
    for chunk in chunks:
        values.frombytes(chunk)
    return sorted(values)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(ordered: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max, in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "count": len(ordered),
        "p50_ms": ms(percentile(ordered, 50)),
        "p90_ms": ms(percentile(ordered, 90)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


def cdf_points(ordered: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(latency ms, fraction) pairs thinned to about `points`, always keeping the max."""
    if not ordered:
        return []
    step = max(1, len(ordered) // points)
    picked = list(range(0, len(ordered), step))
    if picked[-1] != len(ordered) - 1:
        picked.append(len(ordered) - 1)
    return [(round(ordered[i] * 1000, 3), (i + 1) / len(ordered)) for i in picked]


def per_second(count: float, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None
