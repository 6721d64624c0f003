"""How the sequencer spaces its runs by the log's growth, run by run (no database: the
spacing is worked out from the heads and start times of the runs alone)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import cast

from backend.connectors.database import Pool
from backend.entities.event import Event
from backend.services.sequencer import Sequencer


class _NoRecipient:
    """No run is made here, so nothing is handed over."""

    def hand_over(self, events: list[Event]) -> None:
        raise AssertionError(events)

    def wake(self) -> None:
        raise AssertionError("woken")

    def expecting_hand_over(self) -> AbstractContextManager[None]:
        raise AssertionError("expecting")


@dataclass
class _Log:
    """Runs `every` seconds apart, the log growing at a given rate between two of them."""

    sequencer: Sequencer = field(
        default_factory=lambda: Sequencer(
            cast(Pool, None),  # never used: no run is made
            _NoRecipient(),
            min_interval=0.002,
            max_interval=0.008,
            busy_rate=2000,
        )
    )
    every: float = 0.005
    head: int = 0
    at: float = 0.0

    def run_after(self, rate: float) -> Sequencer:
        self.at += self.every
        self.head += round(rate * self.every)
        self.sequencer._started = self.at
        self.sequencer._space(self.head)
        return self.sequencer


def test_a_busy_log_stays_busy_until_its_rate_falls_below_half() -> None:
    log = _Log()
    rates = [0, 2400, 1600, 2400, 1200, 1600, 800, 1600, 2400]
    busy = [log.run_after(rate).busy for rate in rates]
    assert busy == [False, True, True, True, True, True, False, False, True]


def test_the_spacing_doubles_while_busy_and_halves_after() -> None:
    log = _Log()
    rates = [0, 3000, 3000, 3000, 1400, 800, 800, 800]
    spacings = [log.run_after(rate).spacing for rate in rates]
    assert spacings == [0.002, 0.004, 0.008, 0.008, 0.008, 0.004, 0.002, 0.002]
