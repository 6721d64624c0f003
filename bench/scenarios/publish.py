"""Scenario 1: publish throughput, events/s committed.

pgcast over HTTP (single events at each concurrency, and arrays of `batch_size`) and
over SQL (`pgcast.publish`, one transaction per event), against the baseline: raw asyncpg
INSERT into a plain table plus NOTIFY in the same statement, one transaction per event,
at the same concurrency. Every load is closed-loop (one request in flight per connection)
for `publish_seconds`, from separate processes.
"""

from __future__ import annotations

from typing import Any

from bench.loadgen import http_publishers, sql_publishers
from bench.model import Row, ScenarioResult
from bench.procs import Child, stop_all
from bench.scenarios.common import Context, client_cpu_pct, run_together, split
from bench.stack import publish_batches

KEY = "publish"
TITLE = "Publish throughput (events/s committed)"
METHOD = (
    "Closed loop for a fixed time, one request or transaction in flight per connection, "
    "connections spread over the load-generator processes. HTTP: keep-alive raw HTTP/1.1 "
    "clients POSTing one event (or an array of events) per request; a 201 means committed "
    "and sequenced. SQL: `SELECT pgcast.publish(...)`, one transaction per event. Baseline: "
    "`INSERT` into a plain table and `pg_notify` in the same statement, one transaction per "
    "event, same number of connections."
)
TOPIC = "bench.publish"


def _summarise(results: list[dict[str, Any]], cpu: dict[str, float]) -> dict[str, Any]:
    events = sum(int(r["events"]) for r in results)
    elapsed = max(float(r["elapsed"]) for r in results)
    return {
        "events_per_s": round(events / elapsed, 1) if elapsed > 0 else None,
        "events": events,
        "errors": sum(int(r["errors"]) for r in results),
        "last_error": next((r["last_error"] for r in results if r["last_error"]), ""),
        "client_cpu_pct": client_cpu_pct(results, elapsed),
        **cpu,
        **_cpu_per_event(cpu, events),
    }


def _cpu_per_event(cpu: dict[str, float], events: int) -> dict[str, int | None]:
    """Microseconds of server and of PostgreSQL CPU per committed event: what decides how
    far more workers can go on a machine that also runs PostgreSQL."""

    def per_event(pct: float) -> int | None:
        return round(1e4 * pct * cpu["window_s"] / events) if events else None

    return {
        "server_us_per_event": per_event(cpu["server_cpu_pct"]),
        "postgres_us_per_event": per_event(cpu["postgres_cpu_pct"]),
    }


def _cpu_note(figures: dict[str, Any]) -> str:
    return (
        f"CPU per event: server {figures['server_us_per_event']} µs,"
        f" PostgreSQL {figures['postgres_us_per_event']} µs"
    )


def _http(ctx: Context, port: int, pid: int, clients: int, batch: int) -> dict[str, Any]:
    sizes = ctx.sizes
    children = [
        Child(
            http_publishers,
            f"http-publisher-{i}",
            port=port,
            topic=TOPIC,
            connections=share,
            batch=batch,
            seconds=sizes.publish_seconds,
            padding=ctx.padding,
        )
        for i, share in enumerate(split(clients, sizes.client_processes))
    ]
    return _measure(ctx, pid, children)


def _sql(ctx: Context, pid: int | None, mode: str, connections: int) -> dict[str, Any]:
    sizes = ctx.sizes
    children = [
        Child(
            sql_publishers,
            f"sql-{mode}-{i}",
            dsn=ctx.stack.url,
            mode=mode,
            topic=TOPIC,
            connections=share,
            seconds=sizes.publish_seconds,
            padding=ctx.padding,
        )
        for i, share in enumerate(split(connections, sizes.client_processes))
    ]
    return _measure(ctx, pid, children)


def _measure(ctx: Context, pid: int | None, children: list[Child]) -> dict[str, Any]:
    """Run the load processes together for the scenario's time, then summarise them."""
    try:
        results, cpu = run_together(children, ctx.meter(pid), ctx.sizes.publish_seconds)
    finally:
        stop_all(children)
    return _summarise(results, cpu)


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    result = ScenarioResult(KEY, TITLE, METHOD)
    levels = sorted({*sizes.publish_concurrency, sizes.batch_concurrency})
    raw: dict[int, dict[str, Any]] = {}
    http: dict[int, dict[str, Any]] = {}
    sql: dict[int, dict[str, Any]] = {}
    with ctx.stack.server() as server:
        pid = server.process.pid
        publish_batches(server, TOPIC, 200, ctx.padding)  # warm-up
        for level in sizes.publish_concurrency:
            http[level] = _http(ctx, server.port, pid, level, batch=0)
            sql[level] = _sql(ctx, pid, "pgcast", level)
        batch = _http(ctx, server.port, pid, sizes.batch_concurrency, batch=sizes.batch_size)
    top = max(sizes.publish_concurrency)
    with ctx.stack.server(workers=2) as two:
        publish_batches(two, TOPIC, 200, ctx.padding)
        http_two = _http(ctx, two.port, two.process.pid, top, batch=0)
    for level in levels:
        raw[level] = _sql(ctx, None, "raw", level)

    def raw_name(level: int) -> str:
        return f"raw INSERT+NOTIFY, {level} conn."

    for level in sizes.publish_concurrency:
        result.rows.append(
            Row(
                f"HTTP, 1 event/request, {level} clients",
                "events/s",
                http[level]["events_per_s"],
                raw[level]["events_per_s"],
                raw_name(level),
                note=_cpu_note(http[level]) if level == top else "",
            )
        )
    for level in sizes.publish_concurrency:
        result.rows.append(
            Row(
                f"SQL pgcast.publish, {level} conn.",
                "events/s",
                sql[level]["events_per_s"],
                raw[level]["events_per_s"],
                raw_name(level),
            )
        )
    result.rows.append(
        Row(
            f"HTTP, 1 event/request, {top} clients, serve --workers 2",
            "events/s",
            http_two["events_per_s"],
            http[top]["events_per_s"],
            "the same with one worker",
            note=_cpu_note(http_two),
        )
    )
    result.rows.append(
        Row(
            f"HTTP, {sizes.batch_size} events/request, {sizes.batch_concurrency} clients",
            "events/s",
            batch["events_per_s"],
            raw[sizes.batch_concurrency]["events_per_s"],
            raw_name(sizes.batch_concurrency),
        )
    )
    result.series = {
        "concurrency": list(sizes.publish_concurrency),
        "http_single": [http[c]["events_per_s"] for c in sizes.publish_concurrency],
        "sql_publish": [sql[c]["events_per_s"] for c in sizes.publish_concurrency],
        "raw_baseline": [raw[c]["events_per_s"] for c in sizes.publish_concurrency],
        "http_batch": {
            "concurrency": sizes.batch_concurrency,
            "events_per_s": batch["events_per_s"],
        },
    }
    result.details = {
        "http_single": http,
        "sql_publish": sql,
        "http_batch": batch,
        "http_single_2_workers": http_two,
        "raw_baseline": raw,
    }
    return result
