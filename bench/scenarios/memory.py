"""Scenario 4: idle memory per connection, server RSS against open SSE and WS connections.

A fresh server's RSS is read with no clients, then idle SSE subscriptions are opened in
steps up to the last of `memory_steps` (spread over the client processes, 100 connection
attempts in flight at a time), and RSS is read one second after each step. The same on
another fresh server with WebSockets holding one subscription each. Baseline: the raw
asyncio ceiling server (`bench.ceiling`) holding the same SSE connections (WebSockets and
the ceiling stop at `memory_ceiling_max`), and RSS once they have all closed. With `crowd`
(19,000 by default), at the top SSE step: /healthz latency, one publish delivered to every
subscriber, and RSS once they have all closed.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from backend.connectors.embedded import free_port
from backend.interface.stream.trim import TRIM_MIN_CLOSED
from bench.ceiling import ceiling_server
from bench.fleet import idle_fleet
from bench.machine import rss_bytes
from bench.model import Row, ScenarioResult
from bench.procs import Child, expect_all, stop_all
from bench.scenarios.common import Context, split

KEY = "memory"
TITLE = "Idle memory per connection (SSE, WebSocket)"
METHOD = (
    "Server RSS (/proc VmRSS) with no clients, then after each step of idle SSE "
    "subscriptions (one topic, no events), read 1 s after the step completes; the same on a "
    "fresh server with WebSockets subscribed to one topic. Per connection = (RSS - RSS at "
    "0) / connections. Baseline: the raw asyncio server holding the same number of SSE "
    "connections. WebSockets: RSS once the clients have closed and the server has ended "
    "every socket, plus 16 s (1 s below 1,000, where nothing is trimmed). Crowd check at "
    "the top SSE step: /healthz round trip (worst of 10), one publish delivered to every "
    "subscriber, RSS 16 s after the server has ended every stream. Past the raw server's "
    "last step, the SSE row compares both at that step and a second row gives "
    "pgcast's figure at its own last step against the 10 KiB goal."
)
TOPIC = "bench.idle"
HEALTHZ_TRIES = 10
GOAL_KIB = 10.0  # the goal for an idle connection, SSE or WebSocket
DELIVERY_WAIT_SECONDS = 3.0
DRAIN_WAIT_SECONDS = 60.0
SWEEP_WAIT_SECONDS = 16.0  # two sweep rounds (SSE 3.75 s, WebSocket 7.5 s by default)


def _wait_for_no_streams(url: str, transport: str) -> bool:
    """Until the server's connections gauge for `transport` reads 0: idle SSE streams
    notice a closed client at their next heartbeat, WebSockets at once."""
    deadline = time.monotonic() + DRAIN_WAIT_SECONDS
    gauge = f'pgcast_connections{{transport="{transport}"}}'
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith(gauge) and float(line.split()[-1]) == 0:
                    return True
            time.sleep(0.5)
    return False


def _after_close(
    fleets: list[Child], url: str, pid: int, base: int, transport: str, count: int
) -> dict[str, Any]:
    """Close every client, wait until the server has ended every stream and its sweeps have
    had two rounds (they trim only after TRIM_MIN_CLOSED have closed), then read RSS."""
    stop_all(fleets)
    closed = time.monotonic()
    drained = _wait_for_no_streams(url, transport)
    seconds_to_drain = time.monotonic() - closed
    time.sleep(SWEEP_WAIT_SECONDS if count >= TRIM_MIN_CLOSED else 1.0)
    after = rss_bytes(pid)
    return {
        "seconds_to_drain": round(seconds_to_drain, 1) if drained else None,
        "rss_after_close_mib": round(after / 2**20, 1),
        "rss_after_close_ratio": round(after / base, 3),
    }


def _crowd(fleets: list[Child], port: int, pid: int, base: int, count: int) -> dict[str, Any]:
    """With every subscriber open: healthz, one publish to all; then RSS after closing."""
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=10) as client:
        worst = 0.0
        for _ in range(HEALTHZ_TRIES):
            started = time.perf_counter()
            client.get("/healthz").raise_for_status()
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.1)
        published = time.time()
        client.post(f"/topics/{TOPIC}/events", json={"data": "hello"}).raise_for_status()
    time.sleep(DELIVERY_WAIT_SECONDS)
    for fleet in fleets:
        fleet.send("count")
    counted = expect_all(fleets, "counted", timeout=60)
    delivered = sum(int(c["events"]) for c in counted)
    last = max(float(c["last_at"]) for c in counted)
    return {
        "healthz_ms": round(1000 * worst, 1),
        "delivered": delivered,
        "delivery_seconds": round(last - published, 3) if delivered else None,
        **_after_close(fleets, url, pid, base, "sse", count),
    }


def _climb(
    ctx: Context, port: int, pid: int, label: str, steps: tuple[int, ...], ws: bool = False
) -> dict[str, Any]:
    """Open connections step by step; RSS at each step; stop at the first shortfall."""
    sizes = ctx.sizes
    shares_of = [split(step, sizes.client_processes) for step in steps]
    fleets = [
        Child(
            idle_fleet,
            f"{label}-idle-{i}",
            port=port,
            path=f"/topics/{TOPIC}/events",
            ws_topic=TOPIC if ws else "",
        )
        for i in range(len(shares_of[-1]))
    ]
    time.sleep(sizes.memory_settle_seconds)
    base = rss_bytes(pid)
    points: list[tuple[int, int]] = [(0, base)]
    problems: list[str] = []
    crowd: dict[str, Any] = {}
    try:
        for step, shares in zip(steps, shares_of, strict=True):
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
        if sizes.crowd and not ws and label == "pgcast" and points[-1][0] >= sizes.crowd:
            crowd = _crowd(fleets, port, pid, base, points[-1][0])
        elif ws:
            url = f"http://127.0.0.1:{port}"
            crowd = _after_close(fleets, url, pid, base, "ws", points[-1][0])
    finally:
        stop_all(fleets)
    top, top_rss = points[-1]
    return {
        "points": [{"connections": c, "rss_mib": round(r / 2**20, 1)} for c, r in points],
        "base_rss_mib": round(base / 2**20, 1),
        "connections": top,
        "target": steps[-1],
        "kib_per_connection": round((top_rss - base) / top / 1024, 2) if top else None,
        "errors": problems,
        "crowd": crowd,
    }


def _at(measured: dict[str, Any], connections: int) -> dict[str, Any]:
    """The climb as it stood at `connections` (a step it reached), to compare like with
    like when it went on past the raw server's last step."""
    points = [p for p in measured["points"] if p["connections"] <= connections]
    if len(points) == len(measured["points"]) or len(points) < 2:
        return measured
    top = points[-1]
    base = measured["points"][0]["rss_mib"]
    kib = (top["rss_mib"] - base) * 1024 / top["connections"]
    return {
        **measured,
        "points": points,
        "connections": top["connections"],
        "target": top["connections"],
        "kib_per_connection": round(kib, 2),
    }


def _steps(measured: dict[str, Any]) -> str:
    """RSS at every step, e.g. `0 / 1000 / 5000 conn.: 74 / 92 / 167 MiB`."""
    counts = " / ".join(str(p["connections"]) for p in measured["points"])
    rss = " / ".join(f"{p['rss_mib']:.0f}" for p in measured["points"])
    return f"{counts} conn.: {rss} MiB"


def _note(ours: dict[str, Any], raw: dict[str, Any]) -> str:
    if ours["connections"] < ours["target"]:
        return f"reached {ours['connections']} of {ours['target']}: {'; '.join(ours['errors'][:2])}"
    return f"RSS at {_steps(ours)} (raw server: {_steps(raw)})"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(KEY, TITLE, METHOD)
    steps = ctx.sizes.memory_steps
    with ctx.stack.server() as server:
        ours = _climb(ctx, server.port, server.process.pid, "pgcast", steps)
    # Past memory_ceiling_max the ephemeral ports left in TIME_WAIT would run out.
    capped = tuple(s for s in steps if s <= ctx.sizes.memory_ceiling_max) or steps[:1]
    with ctx.stack.server() as server:
        ws = _climb(ctx, server.port, server.process.pid, "pgcast-ws", capped, ws=True)
    ceiling = Child(ceiling_server, "memory-ceiling", port=free_port())
    try:
        port = int(ceiling.expect("ready", timeout=60)["port"])
        raw = _climb(ctx, port, ceiling.pid, "ceiling", capped)
    finally:
        ceiling.stop()
    baseline = f"raw asyncio server ({raw['connections']} SSE conn.)"
    same = _at(ours, raw["connections"])
    for case, measured in (
        (f"{same['connections']} idle SSE connections", same),
        (f"{ws['connections']} idle WebSockets, 1 subscription each", ws),
    ):
        result.rows.append(
            Row(
                case,
                "KiB/connection",
                measured["kib_per_connection"],
                raw["kib_per_connection"],
                baseline,
                better="lower",
                note=_note(measured, raw),
            )
        )
    if ours["connections"] > same["connections"]:
        result.rows.append(
            Row(
                f"{ours['connections']} idle SSE connections",
                "KiB/connection",
                ours["kib_per_connection"],
                GOAL_KIB,
                "goal",
                better="lower",
                note=f"RSS at {_steps(ours)}",
            )
        )
    if ws["crowd"]:
        result.rows.append(
            Row(
                f"{ws['connections']} idle WebSockets: RSS after closing",
                "x start",
                ws["crowd"]["rss_after_close_ratio"],
                1.1,
                "goal",
                better="lower",
                note=f"{ws['crowd']['rss_after_close_mib']} MiB",
            )
        )
    crowd = ours["crowd"]
    if crowd:
        size = ours["connections"]
        result.rows += [
            Row(
                f"{size} idle SSE: /healthz",
                "ms",
                crowd["healthz_ms"],
                50.0,
                "goal",
                better="lower",
                note="worst of 10",
            ),
            Row(
                f"{size} idle SSE: one publish to all",
                "s",
                crowd["delivery_seconds"],
                1.0,
                "goal",
                better="lower",
                note=f"{crowd['delivered']} of {size} delivered",
            ),
            Row(
                f"{size} idle SSE: RSS after closing",
                "x start",
                crowd["rss_after_close_ratio"],
                1.1,
                "goal",
                better="lower",
                note=f"{crowd['rss_after_close_mib']} MiB",
            ),
        ]
    result.series = {
        "pgcast SSE": [(p["connections"], p["rss_mib"]) for p in ours["points"]],
        "pgcast WebSocket": [(p["connections"], p["rss_mib"]) for p in ws["points"]],
        "raw asyncio server": [(p["connections"], p["rss_mib"]) for p in raw["points"]],
    }
    result.details = {"pgcast": ours, "pgcast_ws": ws, "ceiling": raw}
    return result
