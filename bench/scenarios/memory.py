"""Scenario 4: idle memory per connection, server RSS against open SSE connections.

A fresh server's RSS is read with no clients, then idle SSE subscriptions are opened in
steps up to the last of `memory_steps` (spread over the client processes, 100 connection
attempts in flight at a time), and RSS is read one second after each step. Baseline: the
raw asyncio ceiling server (`bench.ceiling`) holding the same SSE connections.
"""

from __future__ import annotations

import time
from typing import Any

from backend.connectors.embedded import free_port
from bench.ceiling import ceiling_server
from bench.fleet import idle_fleet
from bench.machine import rss_bytes
from bench.model import Row, ScenarioResult
from bench.procs import Child, expect_all, stop_all
from bench.scenarios.common import Context, split

KEY = "memory"
TITLE = "Idle memory per SSE connection"
METHOD = (
    "Server RSS (/proc VmRSS) with no clients, then after each step of idle SSE "
    "subscriptions (one topic, no events), read 1 s after the step completes. Per "
    "connection = (RSS - RSS at 0) / connections. Baseline: the raw asyncio server holding "
    "the same number of SSE connections."
)
TOPIC = "bench.idle"


def _climb(ctx: Context, port: int, pid: int, label: str) -> dict[str, Any]:
    """Open connections step by step; RSS at each step; stop at the first shortfall."""
    sizes = ctx.sizes
    shares_of = [split(step, sizes.client_processes) for step in sizes.memory_steps]
    fleets = [
        Child(idle_fleet, f"{label}-idle-{i}", port=port, path=f"/topics/{TOPIC}/events")
        for i in range(len(shares_of[-1]))
    ]
    time.sleep(sizes.memory_settle_seconds)
    base = rss_bytes(pid)
    points: list[tuple[int, int]] = [(0, base)]
    problems: list[str] = []
    try:
        for step, shares in zip(sizes.memory_steps, shares_of, strict=True):
            padded = shares + [0] * (len(fleets) - len(shares))
            for fleet, share in zip(fleets, padded, strict=True):
                fleet.send("grow", total=share)
            grown = expect_all(fleets, "grown", timeout=240)
            reached = sum(int(g["total"]) for g in grown)
            time.sleep(sizes.memory_settle_seconds)
            points.append((reached, rss_bytes(pid)))
            problems = [e for g in grown for e in g["errors"]]
            if reached < step:
                break
    finally:
        stop_all(fleets)
    top, top_rss = points[-1]
    return {
        "points": [{"connections": c, "rss_mib": round(r / 2**20, 1)} for c, r in points],
        "base_rss_mib": round(base / 2**20, 1),
        "connections": top,
        "target": sizes.memory_steps[-1],
        "kib_per_connection": round((top_rss - base) / top / 1024, 2) if top else None,
        "errors": problems,
    }


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(KEY, TITLE, METHOD)
    with ctx.stack.server() as server:
        ours = _climb(ctx, server.port, server.process.pid, "pgcast")
    ceiling = Child(ceiling_server, "memory-ceiling", port=free_port())
    try:
        port = int(ceiling.expect("ready", timeout=60)["port"])
        raw = _climb(ctx, port, ceiling.pid, "ceiling")
    finally:
        ceiling.stop()
    note = ""
    if ours["connections"] < ours["target"]:
        note = f"reached {ours['connections']} of {ours['target']}: {'; '.join(ours['errors'][:2])}"
    result.rows.append(
        Row(
            f"{ours['connections']} idle SSE connections",
            "KiB/connection",
            ours["kib_per_connection"],
            raw["kib_per_connection"],
            f"raw asyncio server ({raw['connections']} conn.)",
            better="lower",
            note=note or f"RSS {ours['base_rss_mib']} -> {ours['points'][-1]['rss_mib']} MiB",
        )
    )
    result.series = {
        "pgcast SSE": [(p["connections"], p["rss_mib"]) for p in ours["points"]],
        "raw asyncio server": [(p["connections"], p["rss_mib"]) for p in raw["points"]],
    }
    result.details = {"pgcast": ours, "ceiling": raw}
    return result
