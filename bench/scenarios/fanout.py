"""Scenario 3: fan-out, deliveries/s to many subscribers of one topic.

`fanout_clients` SSE (then WebSocket) subscribers, spread over the subscriber processes,
follow one topic; `fanout_events` events are published in HTTP arrays of 100, and the
rate is all deliveries divided by the time from the first publish to the last arrival.
Ceiling: `bench.ceiling`, a raw asyncio server writing pre-encoded frames to the same
number of clients of the same client code. Naive baseline: one asyncpg LISTEN connection
per client (`naive_listeners`, bounded by max_connections) receiving one NOTIFY per event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx

from backend.connectors.embedded import free_port
from backend.testing.server import ServerProcess
from bench.ceiling import ceiling_server
from bench.fleet import listen_fleet, stream_fleet
from bench.machine import CpuMeter
from bench.model import Row, ScenarioResult
from bench.procs import Child, Payload, expect_all, stop_all
from bench.scenarios.common import Context, split
from bench.stack import head, publish_batches

KEY = "fanout"
TITLE = "Fan-out to subscribers of one topic (deliveries/s)"
METHOD = (
    "N subscribers connect first (raw clients, separate processes); then M events are "
    "published in HTTP arrays of 100. Rate = N x M deliveries / (last arrival - first "
    "publish). Ceiling: a minimal asyncio server (no framework, no database) writing each "
    "pre-encoded frame to every connection, same clients. Single-event POSTs: the same M "
    "events published one request each, one after another; server CPU per delivery next to "
    "the ceiling's. Naive: one asyncpg LISTEN "
    "connection per client, M NOTIFYs committed in one transaction."
)
TOPIC = "bench.fanout"
CHANNEL = "bench_fanout"


def _fleets(
    ctx: Context, port: int, kind: str, clients: int, after: str, label: str
) -> list[Child]:
    shares = split(clients, ctx.sizes.client_processes)
    return [
        Child(
            stream_fleet,
            f"{label}-{kind}-{i}",
            port=port,
            topic=TOPIC,
            after=after,
            sse=share if kind == "sse" else 0,
            ws=share if kind == "ws" else 0,
            sample=False,
        )
        for i, share in enumerate(shares)
    ]


def _rate(
    reports: list[Payload], part: str, started: float, cpu: dict[str, float]
) -> dict[str, Any]:
    deliveries = sum(int(r[part]["events"]) for r in reports)
    streams = sum(int(r[part]["streams"]) for r in reports)
    last = max(float(r[part]["last_at"]) for r in reports)
    seconds = last - started if last > started else 0.0
    server_cpu = cpu.get("server_cpu_s", 0.0)
    return {
        "clients": streams,
        "deliveries": deliveries,
        "complete_clients": sum(int(r[part]["complete"]) for r in reports),
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(deliveries / seconds, 1) if seconds else None,
        "server_cpu_us_per_delivery": (
            round(1e6 * server_cpu / deliveries, 2) if deliveries and server_cpu else None
        ),
        "client_cpu_s": round(sum(float(r["cpu"]) for r in reports), 3),
        **cpu,
    }


def _collect(
    fleets: list[Child], meter: CpuMeter, drain: float
) -> tuple[list[Payload], dict[str, float]]:
    reports = expect_all(fleets, "result", timeout=drain + 60)
    return reports, meter.stop()


def _publish_singly(server: ServerProcess, topic: str, events: int, padding: str) -> None:
    """Publish `events` events one HTTP request each, one after the other (a live feed)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(events):
            body = {"data": {"ts": time.time(), "pad": padding}}
            client.post(f"/topics/{topic}/events", json=body).raise_for_status()


def _pgcast(ctx: Context, kind: str, singly: bool = False) -> dict[str, Any]:
    sizes = ctx.sizes
    publish = _publish_singly if singly else publish_batches
    with ctx.stack.server() as server:
        after = head(server, TOPIC)
        fleets = _fleets(ctx, server.port, kind, sizes.fanout_clients, after, "fanout")
        try:
            expect_all(fleets, "ready", timeout=180)
            for fleet in fleets:
                fleet.send("expect", events=sizes.fanout_events, timeout=sizes.drain_seconds)
            meter = ctx.meter(server.process.pid)
            meter.start()
            started = time.time()
            publish(server, TOPIC, sizes.fanout_events, ctx.padding)
            reports, cpu = _collect(fleets, meter, sizes.drain_seconds)
        finally:
            stop_all(fleets)
    return _rate(reports, kind, started, cpu)


def _ceiling(ctx: Context, kind: str) -> dict[str, Any]:
    sizes = ctx.sizes
    server = Child(ceiling_server, "ceiling-server", port=free_port())
    try:
        port = int(server.expect("ready", timeout=60)["port"])
        fleets = _fleets(ctx, port, kind, sizes.fanout_clients, "0", "ceiling")
        try:
            expect_all(fleets, "ready", timeout=180)
            for fleet in fleets:
                fleet.send("expect", events=sizes.fanout_events, timeout=sizes.drain_seconds)
            meter = CpuMeter(server.pid, None)
            meter.start()
            started = time.time()
            server.send("broadcast", kind=kind, events=sizes.fanout_events, padding=ctx.padding)
            reports, cpu = _collect(fleets, meter, sizes.drain_seconds)
            server.expect("broadcasted", timeout=60)
        finally:
            stop_all(fleets)
    finally:
        server.stop()
    return _rate(reports, kind, started, cpu)


async def _notify_all(dsn: str, events: int, padding: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(
            "SELECT pg_notify($1, json_build_object('ts', extract(epoch FROM clock_timestamp()),"
            " 'i', i, 'pad', $3::text)::text) FROM generate_series(1, $2::int) AS i",
            CHANNEL,
            events,
            padding,
        )
    finally:
        await conn.close()


def _naive(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    fleets = [
        Child(
            listen_fleet,
            f"naive-listen-{i}",
            dsn=ctx.stack.url,
            channel=CHANNEL,
            connections=share,
            sample=False,
        )
        for i, share in enumerate(split(sizes.naive_listeners, sizes.client_processes))
    ]
    try:
        ready = expect_all(fleets, "ready", timeout=180)
        for fleet in fleets:
            fleet.send("expect", events=sizes.fanout_events, timeout=sizes.drain_seconds)
        meter = ctx.meter(None)
        meter.start()
        started = time.time()
        asyncio.run(_notify_all(ctx.stack.url, sizes.fanout_events, ctx.padding))
        reports, cpu = _collect(fleets, meter, sizes.drain_seconds)
    finally:
        stop_all(fleets)
    rate = _rate(reports, "listen", started, cpu)
    rate["connect_errors"] = [e for r in ready for e in r["errors"]]
    return rate


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    result = ScenarioResult(KEY, TITLE, METHOD)
    measured: dict[str, dict[str, Any]] = {}
    for kind in ("sse", "ws"):
        measured[f"pgcast_{kind}"] = _pgcast(ctx, kind)
        measured[f"pgcast_{kind}_single"] = _pgcast(ctx, kind, singly=True)
        measured[f"ceiling_{kind}"] = _ceiling(ctx, kind)
    measured["naive_listen"] = _naive(ctx)
    for kind, label in (("sse", "SSE"), ("ws", "WebSocket")):
        ours, ceiling = measured[f"pgcast_{kind}"], measured[f"ceiling_{kind}"]
        us = ours["server_cpu_us_per_delivery"]
        result.rows.append(
            Row(
                f"{ours['clients']} {label} subscribers, {sizes.fanout_events} events",
                "deliveries/s",
                ours["deliveries_per_s"],
                ceiling["deliveries_per_s"],
                "raw asyncio server (ceiling)",
                note=f"server {ours['server_cpu_pct']:.0f}% CPU, {us} µs/delivery",
            )
        )
        single = measured[f"pgcast_{kind}_single"]
        if None in (ceiling["server_cpu_us_per_delivery"], single["server_cpu_us_per_delivery"]):
            continue  # a run too short for either side's CPU to be sampled (--quick)
        result.rows.append(
            Row(
                f"{single['clients']} {label} subscribers, {sizes.fanout_events} single POSTs",
                "server CPU µs/delivery",
                single["server_cpu_us_per_delivery"],
                ceiling["server_cpu_us_per_delivery"],
                "raw asyncio writer (ceiling)",
                better="lower",
                note=f"{single['deliveries_per_s']} deliveries/s",
            )
        )
    naive = measured["naive_listen"]
    result.rows.append(
        Row(
            f"{measured['pgcast_sse']['clients']} SSE subscribers vs naive",
            "deliveries/s",
            measured["pgcast_sse"]["deliveries_per_s"],
            naive["deliveries_per_s"],
            f"1 LISTEN conn. per client ({naive['clients']} conn.)",
            note=(
                f"naive run took {naive['seconds']:.2f} s, Postgres at"
                f" {naive['postgres_cpu_pct']:.0f}% CPU"
                if naive["window_s"] >= 1
                else f"naive run took {naive['seconds']:.2f} s (too short to sample CPU)"
            ),
        )
    )
    result.details = measured
    return result
