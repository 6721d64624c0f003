"""How big the peer comparison is: the full run (about 15 minutes on 2 cores) and `--quick`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerSizes:
    """The knobs of `--peers`; the idle-memory steps and queue sizes come from `Sizes`."""

    repetitions: int = 3
    fanout_subscribers: int = 1000
    fanout_events: int = 50
    sustained_subscribers: int = 200
    sustained_rates: tuple[float, ...] = (100.0, 300.0, 1000.0)
    sustained_seconds: float = 4.0
    publish_clients: int = 16
    publish_seconds: float = 3.0
    settle_seconds: float = 0.5


FULL = PeerSizes()

QUICK = PeerSizes(
    repetitions=1,
    fanout_subscribers=10,
    fanout_events=5,
    sustained_subscribers=4,
    sustained_rates=(50.0,),
    sustained_seconds=0.5,
    publish_clients=2,
    publish_seconds=0.3,
    settle_seconds=0.2,
)
