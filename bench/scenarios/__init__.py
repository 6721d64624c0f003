"""The benchmark scenarios, in the order the suite runs them."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from bench.model import ScenarioResult
from bench.scenarios import capture, fanout, latency, memory, publish, queue
from bench.scenarios.common import Context

MODULES: tuple[ModuleType, ...] = (publish, latency, fanout, memory, queue, capture)


def registry() -> dict[str, tuple[str, str, Callable[[Context], ScenarioResult]]]:
    """Scenario key -> (title, method, run function)."""
    return {m.KEY: (m.TITLE, m.METHOD, m.run) for m in MODULES}
