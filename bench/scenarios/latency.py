"""Scenario 2: end-to-end latency, send to client, at a fixed publish rate.

A paced HTTP publisher sends single events at each of `latency_rates`, each carrying
`time.time()` in `data.ts`; SSE and WebSocket subscribers (spread over the subscriber
processes) record `now - ts` for every event. One host, one clock. Baseline: the same
rate of raw INSERT+NOTIFY transactions (timestamp in the payload) received by one
asyncpg LISTEN connection. SQL publishes (`pgcast.publish` from one connection, each its
own transaction, positioned by the background sequencer) are timed the same way at each
of `sql_latency_rates`, against raw INSERT+NOTIFY from one connection.
"""

from __future__ import annotations

from itertools import zip_longest
from typing import Any

from backend.testing.server import ServerProcess
from bench.fleet import listen_fleet, stream_fleet
from bench.loadgen import RAW_CHANNEL, http_publishers, sql_publishers
from bench.model import Row, ScenarioResult, cdf_points, latencies_from, latency_summary
from bench.procs import Child, Payload, expect_all, stop_all
from bench.scenarios.common import Context, client_cpu_pct, run_together, split
from bench.stack import head

KEY = "latency"
TITLE = "End-to-end latency, send to client"
METHOD = (
    "A paced publisher POSTs single events at a fixed rate over keep-alive connections; "
    "`data.ts` holds `time.time()` at send, so the figure includes the HTTP request, group "
    "commit, fsync, the sequencer, the hub and the write to the client. Subscribers are "
    "raw SSE and WebSocket clients in separate processes that timestamp every event on "
    "arrival. Baseline: the same rate of INSERT+NOTIFY transactions (8 connections) with "
    "the send time in the payload, received by one asyncpg LISTEN connection. Accepted: "
    "events/s answered 201 against the rate offered. Publish fairness: the publisher's "
    "round trips (request to 201) at a fixed rate while the server fans every event out "
    "to many SSE subscribers, against the same publisher with no subscriber. SQL: "
    "`SELECT pgcast.publish(...)` from one asyncpg connection at a fixed rate, each its own "
    "transaction, to the same SSE subscribers (no WebSockets); baseline: raw INSERT+NOTIFY from "
    "one connection at the same rate, received by one LISTEN connection."
)
TOPIC = "bench.latency"


def _delivery(reports: list[Payload], kind: str, published: int) -> dict[str, Any]:
    streams = sum(int(r[kind]["streams"]) for r in reports)
    events = sum(int(r[kind]["events"]) for r in reports)
    ordered = latencies_from([r[kind]["latencies"] for r in reports])
    expected = streams * published
    return {
        "subscribers": streams,
        "delivered": events,
        "delivered_ratio": round(events / expected, 4) if expected else None,
        "ordered": ordered,
        **latency_summary(ordered),
    }


def _paced(
    ctx: Context,
    server: ServerProcess,
    label: str,
    shares: list[tuple[int, int]],
    rate: float,
    sample: bool,
    sql: bool = False,
) -> tuple[Payload, dict[str, float], list[Payload], list[Payload]]:
    """Subscribers (`shares`: SSE and WebSocket counts per process) follow the topic while
    a paced publisher sends single events at `rate` (over HTTP, or with `sql` as
    `pgcast.publish` transactions from one connection); the publisher's result, the
    server's CPU, the fleets' ready reports and their results."""
    sizes = ctx.sizes
    after = head(server, TOPIC)
    fleets = [
        Child(
            stream_fleet,
            f"{label}-subscribers-{i}",
            port=server.port,
            topic=TOPIC,
            after=after,
            sse=sse,
            ws=ws,
            sample=sample,
        )
        for i, (sse, ws) in enumerate(shares)
        if sse or ws
    ]
    paced = {"topic": TOPIC, "seconds": sizes.latency_seconds, "rate": rate, "padding": ctx.padding}
    publisher = (
        Child(
            sql_publishers,
            f"{label}-publisher",
            dsn=ctx.stack.url,
            mode="pgcast",
            connections=1,
            **paced,
        )
        if sql
        else Child(
            http_publishers,
            f"{label}-publisher",
            port=server.port,
            connections=sizes.latency_publishers,
            batch=0,
            **paced,
        )
    )
    try:
        ready = expect_all(fleets, "ready", timeout=180)
        (sent,), cpu = run_together([publisher], ctx.meter(server.process.pid), 60)
        for fleet in fleets:
            fleet.send("expect", events=sent["events"], timeout=sizes.drain_seconds)
        reports = expect_all(fleets, "result", timeout=sizes.drain_seconds + 60)
    finally:
        stop_all([publisher, *fleets])
    return sent, cpu, ready, reports


def _pgcast(ctx: Context, rate: float, workers: int = 1, sql: bool = False) -> dict[str, Any]:
    sizes = ctx.sizes
    processes = sizes.client_processes
    # SQL publishes go to SSE subscribers only: with WebSockets too, this 2-core box runs
    # out of CPU for the fan-out before the sequencer's spacing shows.
    ws = 0 if sql else sizes.latency_ws
    shares = list(
        zip_longest(split(sizes.latency_sse, processes), split(ws, processes), fillvalue=0)
    )
    with ctx.stack.server(workers) as server:
        label = "sql-latency" if sql else "latency"
        sent, cpu, ready, reports = _paced(ctx, server, label, shares, rate, True, sql)
    published = int(sent["events"])
    return {
        "published": published,
        "rate": round(published / float(sent["elapsed"]), 1),
        "publish_errors": sent["errors"],
        "publish_round_trip": sent["round_trip"],
        "connect_errors": [e for r in ready for e in r["errors"]],
        "sse": _delivery(reports, "sse", published),
        "ws": _delivery(reports, "ws", published),
        "publisher_cpu_pct": client_cpu_pct([sent], float(sent["elapsed"])),
        "subscriber_cpu_s": round(sum(float(r["cpu"]) for r in reports), 2),
        **cpu,
    }


def _sql_rows(ctx: Context, result: ScenarioResult) -> None:
    for offered in ctx.sizes.sql_latency_rates:
        ours = _pgcast(ctx, offered, sql=True)
        base = _baseline(ctx, offered, connections=1)
        baseline = f"1 LISTEN conn., INSERT+NOTIFY from 1 conn. at {base['rate']:.0f}/s"
        case = (
            f"{ours['sse']['subscribers']} SSE subscribers, SQL pgcast.publish from 1 conn."
            f" offered {offered:.0f} events/s (took {ours['rate']:.0f}/s)"
        )
        _delivery_rows(result, case, ours, "sse", base, baseline, ("p50", "p99"))
        for summary in (ours["sse"], ours["ws"], base["listen"]):
            summary.pop("ordered")
        result.details[f"SQL {offered:.0f}/s"] = {"pgcast": ours, "baseline": base}


def _delivery_rows(
    result: ScenarioResult,
    case: str,
    ours: dict[str, Any],
    kind: str,
    base: dict[str, Any],
    baseline: str,
    names: tuple[str, ...],
) -> None:
    """One row per percentile in `names`: `ours[kind]` against the LISTEN baseline."""
    got, listen = ours[kind], base["listen"]
    for name in names:
        note = ""
        if name == "p50":
            note = (
                f"delivered {got['delivered_ratio']:.1%}, server {ours['server_cpu_pct']:.0f}% CPU"
            )
        result.rows.append(
            Row(
                case,
                f"{name} ms",
                got[f"{name}_ms"],
                listen[f"{name}_ms"],
                baseline,
                better="lower",
                note=note,
            )
        )


def _round_trips(ctx: Context, subscribers: int) -> dict[str, Any]:
    """The publisher's round trips at `fairness_rate` with `subscribers` SSE followers."""
    sizes = ctx.sizes
    shares = [(share, 0) for share in split(subscribers, sizes.client_processes)]
    with ctx.stack.server() as server:
        sent, cpu, _, reports = _paced(
            ctx, server, "fairness", shares, sizes.fairness_rate, sample=False
        )
    delivered = sum(int(r["sse"]["events"]) for r in reports)
    return {
        "subscribers": subscribers,
        "published": int(sent["events"]),
        "delivered_ratio": (
            round(delivered / (subscribers * int(sent["events"])), 4) if subscribers else None
        ),
        "round_trip": sent["round_trip"],
        "subscriber_cpu_pct": _own_windows_cpu_pct(reports),
        **cpu,
    }


def _own_windows_cpu_pct(reports: list[Payload]) -> float:
    """The subscriber processes' CPU, each over its own receiving window (which also holds
    the drain after the publisher stops), summed, in percent of one core."""
    return round(100 * sum(float(r["cpu"]) / max(float(r["elapsed"]), 1e-6) for r in reports), 1)


def _fairness(ctx: Context, result: ScenarioResult) -> None:
    loaded = _round_trips(ctx, ctx.sizes.fairness_subscribers)
    alone = _round_trips(ctx, 0)
    case = (
        f"publish round trip at {ctx.sizes.fairness_rate:.0f} events/s,"
        f" {loaded['subscribers']} SSE subscribers"
    )
    for name in ("p50", "p99"):
        result.rows.append(
            Row(
                case,
                f"{name} ms",
                loaded["round_trip"][f"{name}_ms"],
                alone["round_trip"][f"{name}_ms"],
                "same publisher, no subscriber",
                better="lower",
                note=(
                    f"delivered {loaded['delivered_ratio']:.1%},"
                    f" server {loaded['server_cpu_pct']:.0f}% CPU,"
                    f" subscriber processes {loaded['subscriber_cpu_pct']:.0f}%"
                    if name == "p99"
                    else ""
                ),
            )
        )
    result.details["fairness"] = {"loaded": loaded, "alone": alone}


def _baseline(ctx: Context, rate: float, connections: int = 8) -> dict[str, Any]:
    sizes = ctx.sizes
    listener = Child(
        listen_fleet,
        "latency-listen",
        dsn=ctx.stack.url,
        channel=RAW_CHANNEL,
        connections=1,
        sample=True,
    )
    producer = Child(
        sql_publishers,
        "latency-raw-producer",
        dsn=ctx.stack.url,
        mode="raw",
        topic=TOPIC,
        connections=connections,
        seconds=sizes.latency_seconds,
        rate=rate,
        padding=ctx.padding,
    )
    try:
        listener.expect("ready", timeout=60)
        (sent,), _cpu = run_together([producer], ctx.meter(None), 60)
        listener.send("expect", events=sent["events"], timeout=sizes.drain_seconds)
        report = listener.expect("result", timeout=sizes.drain_seconds + 60)
    finally:
        stop_all([producer, listener])
    published = int(sent["events"])
    return {
        "published": published,
        "rate": round(published / float(sent["elapsed"]), 1),
        "listen": _delivery([report], "listen", published),
    }


def _compare_workers(
    result: ScenarioResult, offered: float, one: dict[str, Any], two: dict[str, Any]
) -> None:
    """Rows for `serve --workers 2` at the same offered rate, against one worker."""
    case = f"offered {offered:.0f} events/s, serve --workers 2 (took {two['rate']:.0f}/s)"
    result.rows.append(Row(case, "events/s accepted", two["rate"], one["rate"], "one worker"))
    for kind, label in (("sse", "SSE"), ("ws", "WebSocket")):
        result.rows.append(
            Row(
                f"{label}, {case}",
                "p99 ms",
                two[kind]["p99_ms"],
                one[kind]["p99_ms"],
                "one worker",
                better="lower",
                note=f"delivered {two[kind]['delivered_ratio']:.1%}",
            )
        )


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(KEY, TITLE, METHOD)
    cdf: dict[str, list[tuple[float, float]]] = {}
    for offered in ctx.sizes.latency_rates:
        pgcast = _pgcast(ctx, offered)
        base = _baseline(ctx, offered)
        listen = base["listen"]
        result.rows.append(
            Row(
                f"{pgcast['sse']['subscribers']} SSE + {pgcast['ws']['subscribers']} WebSocket"
                f" subscribers, single events offered at {offered:.0f}/s",
                "events/s accepted",
                pgcast["rate"],
                offered,
                "rate offered",
                note=f"{pgcast['publish_errors']} publish errors",
            )
        )
        baseline = f"1 LISTEN conn., INSERT+NOTIFY at {base['rate']:.0f}/s"
        for kind, label in (("sse", "SSE"), ("ws", "WebSocket")):
            case = (
                f"{pgcast[kind]['subscribers']} {label} subscribers, offered {offered:.0f}"
                f" events/s (pgcast took {pgcast['rate']:.0f}/s)"
            )
            _delivery_rows(result, case, pgcast, kind, base, baseline, ("p50", "p99", "max"))
        if offered == max(ctx.sizes.latency_rates):
            two = _pgcast(ctx, offered, workers=2)
            _compare_workers(result, offered, pgcast, two)
            for kind in ("sse", "ws"):
                two[kind].pop("ordered")
            result.details[f"{offered:.0f}/s, 2 workers"] = two
        cdf[f"pgcast SSE @ {offered:.0f}/s"] = cdf_points(pgcast["sse"]["ordered"])
        cdf[f"pgcast WS @ {offered:.0f}/s"] = cdf_points(pgcast["ws"]["ordered"])
        cdf[f"LISTEN baseline @ {offered:.0f}/s"] = cdf_points(listen["ordered"])
        for summary in (pgcast["sse"], pgcast["ws"], listen):
            summary.pop("ordered")
        result.details[f"{offered:.0f}/s"] = {"pgcast": pgcast, "baseline": base}
    _sql_rows(ctx, result)
    _fairness(ctx, result)
    result.series = {"cdf": cdf}
    return result
