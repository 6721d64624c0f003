"""Figures per repetition, turned into rows of pgcast ÷ peer with their spread."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.model import Row

Metrics = Mapping[str, float | None]


@dataclass
class Tally:
    """values[(case, metric, system)][repetition]; notes[(case, system)]."""

    values: dict[tuple[str, str, str], dict[int, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    notes: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    cases: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, rep: int, system: str, measured: Mapping[str, Metrics]) -> None:
        for case, metrics in measured.items():
            if case not in self.cases:
                self.cases.append(case)
            for metric, value in metrics.items():
                if value is not None:
                    self.values[(case, metric, system)][rep] = value

    def note(self, case: str, system: str, text: str) -> None:
        self.notes[(case, system)].add(text)

    def rows(
        self, metrics: Sequence[tuple[str, str]], ours: Sequence[str], peers: Sequence[str]
    ) -> list[Row]:
        """One row per case, metric, pgcast variant and peer; medians over repetitions and
        the min–max of the ratios taken within each repetition."""
        rows = []
        for case in self.cases:
            for metric, better in metrics:
                for variant in ours:
                    mine = self.values.get((case, metric, variant), {})
                    for peer in peers:
                        theirs = self.values.get((case, metric, peer), {})
                        label = case if len(ours) == 1 else f"{case}, {variant}"
                        rows.append(
                            Row(
                                label,
                                metric,
                                _median(mine),
                                _median(theirs),
                                peer,
                                better=better,
                                note=self._note(case, variant, peer, mine, theirs),
                            )
                        )
        return rows

    def _note(
        self,
        case: str,
        variant: str,
        peer: str,
        mine: Mapping[int, float],
        theirs: Mapping[int, float],
    ) -> str:
        ratios = [mine[r] / theirs[r] for r in mine if theirs.get(r)]
        parts = []
        if ratios:
            parts.append(f"ratio {min(ratios):.2f}–{max(ratios):.2f} over {len(ratios)} reps")
        if mine:
            parts.append(f"pgcast {_span(mine)}")
        if theirs:
            parts.append(f"{peer} {_span(theirs)}")
        parts += sorted(self.notes.get((case, variant), set()))
        parts += sorted(self.notes.get((case, peer), set()))
        return "; ".join(parts)


def _median(values: Mapping[int, float]) -> float | None:
    return round(statistics.median(values.values()), 2) if values else None


def _span(values: Mapping[int, float]) -> str:
    low, high = min(values.values()), max(values.values())
    return f"{_short(low)}–{_short(high)}"


def _short(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}"
