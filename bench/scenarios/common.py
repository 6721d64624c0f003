"""What every scenario gets (`Context`) and helpers to drive groups of child processes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.machine import CpuMeter
from bench.procs import Child, Payload, expect_all
from bench.sizes import Sizes
from bench.stack import Stack


@dataclass
class Context:
    """The running database, the sizes of this run and the event padding."""

    stack: Stack
    sizes: Sizes

    @property
    def padding(self) -> str:
        return "x" * self.sizes.payload_padding

    def meter(self, server_pid: int | None) -> CpuMeter:
        return CpuMeter(server_pid, self.stack.postmaster_pid)


def split(total: int, parts: int) -> list[int]:
    """`total` spread over at most `parts` shares, none of them empty."""
    parts = max(1, min(parts, total)) if total else 1
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def run_together(
    children: list[Child], meter: CpuMeter, seconds: float, lead: float = 0.3
) -> tuple[list[Payload], dict[str, float]]:
    """Start every (ready) child at the same instant, collect their results and the CPU."""
    expect_all(children, "ready", timeout=120)
    at = time.time() + lead
    for child in children:
        child.send("go", at=at)
    time.sleep(max(0.0, at - time.time()))
    meter.start()
    results = expect_all(children, "result", timeout=seconds + 120)
    return results, meter.stop()


def client_cpu_pct(results: list[Payload], elapsed: float) -> float:
    """CPU of the load-generating processes, in percent of one core."""
    return round(100 * sum(float(r["cpu"]) for r in results) / max(elapsed, 1e-6), 1)
