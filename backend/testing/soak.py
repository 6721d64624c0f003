"""Size knobs of the fault-injection suite (`backend/faults`).

Every scenario runs in two sizes. The short size runs in `make test`. `make soak` sets
`PGCAST_SOAK=1`, which selects the long size: more faults, more events, longer runs.
`PGCAST_SOAK_SECONDS` sets the duration of the mixed-load soak (600 s by default).
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T", int, float)

SOAK = os.environ.get("PGCAST_SOAK", "") == "1"
SOAK_SECONDS = float(os.environ.get("PGCAST_SOAK_SECONDS", "600"))


def scale(short: T, soak: T) -> T:
    """`soak` under `make soak`, else `short`."""
    return soak if SOAK else short
