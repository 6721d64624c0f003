"""`python -m bench --peers`: pgcast and its peers, same clients, interleaved repetitions.

Each scenario runs every system once per repetition, in an order that rotates between
repetitions, each system started fresh for its measurement. Rows give the medians and
pgcast ÷ peer with the min–max of the ratios taken within each repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.fleet import stream_fleet
from bench.loadgen import http_publishers
from bench.machine import machine_info
from bench.model import ScenarioResult, latencies_from, percentile
from bench.peers import systems
from bench.peers.install import Nchan, PeersUnavailable, find_nchan, peer_python
from bench.peers.sizes import FULL, QUICK, PeerSizes
from bench.peers.systems import LineProcess, PubSub
from bench.peers.tally import Metrics, Tally
from bench.procs import Child, Payload, expect_all, stop_all
from bench.scenarios import queue
from bench.scenarios.common import Context, client_cpu_pct, run_together, split
from bench.scenarios.memory import _climb as climb
from bench.sizes import FULL as BASE_FULL
from bench.sizes import QUICK as BASE_QUICK
from bench.stack import Stack, execute
from bench.wire import HttpConn

PEERS_DIR = Path(__file__).resolve().parent
SERVER_AND_POSTGRES = "server + PostgreSQL CPU %"
Measured = dict[str, Metrics]
# A publisher process above this share of a core may be what limits the rate.
CLIENT_BOUND_PCT = 85.0
SystemStarter = Callable[[], contextlib.AbstractContextManager[PubSub]]


@dataclass
class Run:
    """Everything the scenarios need: the database, sizes and the installed peers."""

    ctx: Context
    sizes: PeerSizes
    python: Path
    nchan: Nchan

    def pubsub(self) -> list[tuple[str, SystemStarter]]:
        found: list[tuple[str, SystemStarter]] = [("pgcast", lambda: systems.pgcast(self.ctx))]
        if self.nchan.available:
            found.append(("Nchan", lambda: systems.nchan(self.nchan)))
        url = self.ctx.stack.postgres.url("peer_broadcaster")
        found.append(("broadcaster", lambda: systems.broadcaster(self.python, url)))
        return found

    def order(self, rep: int, items: list[Any]) -> list[Any]:
        shift = rep % len(items)
        return items[shift:] + items[:shift]


def _each(
    run: Run,
    tally: Tally,
    systems_: list[tuple[str, SystemStarter]],
    measure: Callable[[PubSub], Measured],
) -> None:
    for rep in range(run.sizes.repetitions):
        for name, start in run.order(rep, systems_):
            try:
                with start() as system:
                    tally.add(rep, name, measure(system))
            except Exception as exc:  # noqa: BLE001  (one failed run must not hide the rest)
                tally.errors.append(f"{name}, repetition {rep + 1}: {exc!r}")
                print(f"[bench] {name} failed:\n{traceback.format_exc()}", flush=True)


def _subscribers(run: Run, system: PubSub, topic: str, count: int, sample: bool) -> list[Child]:
    after = system.after(topic)
    return [
        Child(
            stream_fleet,
            f"peers-{system.name}-sse-{i}",
            port=system.port,
            topic=topic,
            after=after,
            sse=share,
            ws=0,
            sample=sample,
        )
        for i, share in enumerate(split(count, run.ctx.sizes.client_processes))
    ]


async def _post_each(system: PubSub, topic: str, events: int, padding: str) -> None:
    """`events` single-event POSTs, one after the other, on one keep-alive connection."""
    conn = await HttpConn.open(system.port)
    try:
        for _ in range(events):
            body = orjson.dumps({"data": {"ts": time.time(), "pad": padding}})
            await conn.expect("POST", f"/topics/{topic}/events", body, system.ok)
    finally:
        conn.close()


def _client_bound(
    tally: Tally, case: str, system: str, results: list[Payload], elapsed: float
) -> None:
    """Flag a run whose load generator, not the server, may have set the pace (CPU per
    process: `elapsed` is the wall time times the number of processes)."""
    busy = client_cpu_pct(results, elapsed)
    if busy >= CLIENT_BOUND_PCT:
        tally.note(case, system, f"{system}'s publisher at {busy:.0f}% CPU")


# --- scenarios ---------------------------------------------------------------------------


def fanout(run: Run, tally: Tally) -> ScenarioResult:
    sizes, drain = run.sizes, run.ctx.sizes.drain_seconds
    case = f"{sizes.fanout_subscribers:,} SSE subscribers, {sizes.fanout_events} single-event POSTs"
    topic = "bench.peers-fanout"

    def measure(system: PubSub) -> Measured:
        fleets = _subscribers(run, system, topic, sizes.fanout_subscribers, sample=False)
        try:
            expect_all(fleets, "ready", timeout=180)
            time.sleep(sizes.settle_seconds)
            for fleet in fleets:
                fleet.send("expect", events=sizes.fanout_events, timeout=drain)
            meter = run.ctx.meter(system.pid)
            meter.start()
            started = time.time()
            asyncio.run(_post_each(system, topic, sizes.fanout_events, run.ctx.padding))
            reports = expect_all(fleets, "result", timeout=drain + 60)
            cpu = meter.stop()
        finally:
            stop_all(fleets)
        deliveries = sum(int(r["sse"]["events"]) for r in reports)
        expected = sum(int(r["sse"]["streams"]) for r in reports) * sizes.fanout_events
        seconds = max(float(r["sse"]["last_at"]) for r in reports) - started
        if deliveries < expected:
            tally.note(case, system.name, f"delivered {deliveries / max(expected, 1):.1%}")
        return {
            case: {
                "deliveries/s": deliveries / seconds if seconds > 0 else None,
                "server CPU µs/delivery": (
                    1e6 * cpu["server_cpu_s"] / deliveries if deliveries else None
                ),
            }
        }

    _each(run, tally, run.pubsub(), measure)
    metrics = [("server CPU µs/delivery", "lower"), ("deliveries/s", "higher")]
    return _result(
        "fanout",
        "Single-event fan-out to SSE subscribers",
        "Subscribers (raw SSE clients in separate processes) connect; after a short settle, "
        "events are POSTed one at a time on one keep-alive connection. Deliveries/s = all "
        "deliveries / (last arrival - first POST); CPU per delivery = the server process's "
        "CPU (nginx's worker; not Postgres) over the run / deliveries.",
        tally,
        metrics,
        run,
    )


def sustained(run: Run, tally: Tally) -> ScenarioResult:
    sizes, drain = run.sizes, run.ctx.sizes.drain_seconds

    def measure(system: PubSub) -> Measured:
        measured: Measured = {}
        for rate in sizes.sustained_rates:
            case = f"{sizes.sustained_subscribers} SSE subscribers, offered {rate:,.0f} events/s"
            topic = f"bench.peers-rate-{rate:.0f}"
            fleets = _subscribers(run, system, topic, sizes.sustained_subscribers, sample=True)
            publisher = Child(
                http_publishers,
                f"peers-{system.name}-paced",
                port=system.port,
                topic=topic,
                connections=sizes.publish_clients,
                batch=0,
                seconds=sizes.sustained_seconds,
                rate=rate,
                padding=run.ctx.padding,
                ok=system.ok,
            )
            try:
                expect_all(fleets, "ready", timeout=180)
                time.sleep(sizes.settle_seconds)
                (sent,), cpu = run_together([publisher], run.ctx.meter(system.pid), 60)
                for fleet in fleets:
                    fleet.send("expect", events=sent["events"], timeout=drain)
                reports = expect_all(fleets, "result", timeout=drain + 60)
            finally:
                stop_all([publisher, *fleets])
            ordered = latencies_from([r["sse"]["latencies"] for r in reports])
            expected = sum(int(r["sse"]["streams"]) for r in reports) * int(sent["events"])
            if len(ordered) < expected:
                tally.note(case, system.name, f"delivered {len(ordered) / max(expected, 1):.1%}")
            if sent["errors"]:
                tally.note(case, system.name, f"publish errors: {sent['last_error']}")
            _client_bound(tally, case, system.name, [sent], float(sent["elapsed"]))
            p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
            measured[case] = {
                "accepted events/s": int(sent["events"]) / float(sent["elapsed"]),
                "p50 ms": None if p50 is None else 1000 * p50,
                "p99 ms": None if p99 is None else 1000 * p99,
                "server CPU %": cpu["server_cpu_pct"],
                SERVER_AND_POSTGRES: _with_postgres(cpu),
            }
        return measured

    _each(run, tally, run.pubsub(), measure)
    metrics = [
        ("accepted events/s", "higher"),
        ("p50 ms", "lower"),
        ("p99 ms", "lower"),
        ("server CPU %", "lower"),
        (SERVER_AND_POSTGRES, "lower"),
    ]
    return _result(
        "sustained",
        "Sustained fan-out at a fixed offered rate",
        f"A paced publisher ({sizes.publish_clients} keep-alive connections, single-event "
        f"POSTs carrying `time.time()`) offers each rate for {sizes.sustained_seconds:g} s "
        "to SSE subscribers that timestamp every event on arrival. Accepted/s = POSTs "
        "answered / time; latency from send to arrival; server CPU over the publishing "
        "window, and with PostgreSQL's added (pgcast and broadcaster use it; Nchan does "
        "not).",
        tally,
        metrics,
        run,
    )


def memory(run: Run, tally: Tally) -> ScenarioResult:
    target = run.ctx.sizes.memory_steps[-1]
    case = f"{target:,} idle SSE connections"

    def measure(system: PubSub) -> Measured:
        steps = run.ctx.sizes.memory_steps
        got = climb(run.ctx, system.port, system.pid, f"peers-{system.name}", steps)
        if got["connections"] < target:
            tally.note(case, system.name, f"{system.name} reached {got['connections']}")
        return {case: {"KiB/connection": got["kib_per_connection"]}}

    _each(run, tally, run.pubsub(), measure)
    return _result(
        "memory",
        "Idle memory per SSE connection",
        "RSS of the server process (nginx's worker) with no clients, then after each step of "
        f"idle SSE subscriptions up to {target:,}; per connection = RSS growth / connections.",
        tally,
        [("KiB/connection", "lower")],
        run,
    )


def publish(run: Run, tally: Tally) -> ScenarioResult:
    sizes = run.sizes
    case = f"{sizes.publish_clients} clients, 1 event/request, closed loop"

    def measure(system: PubSub) -> Measured:
        children = [
            Child(
                http_publishers,
                f"peers-{system.name}-publish-{i}",
                port=system.port,
                topic="bench.peers-publish",
                connections=share,
                batch=0,
                seconds=sizes.publish_seconds,
                padding=run.ctx.padding,
                ok=system.ok,
            )
            for i, share in enumerate(split(sizes.publish_clients, run.ctx.sizes.client_processes))
        ]
        try:
            results, cpu = run_together(children, run.ctx.meter(system.pid), sizes.publish_seconds)
        finally:
            stop_all(children)
        events = sum(int(r["events"]) for r in results)
        elapsed = max(float(r["elapsed"]) for r in results)
        errors = [r["last_error"] for r in results if r["errors"]]
        if errors:
            tally.note(case, system.name, f"errors: {errors[0]}")
        _client_bound(tally, case, system.name, results, elapsed * len(results))
        return {
            case: {
                "events/s": events / elapsed if elapsed > 0 else None,
                "server CPU %": cpu["server_cpu_pct"],
                SERVER_AND_POSTGRES: _with_postgres(cpu),
            }
        }

    _each(run, tally, run.pubsub(), measure)
    return _result(
        "publish",
        "Single-event publish over HTTP",
        "Keep-alive raw HTTP/1.1 clients, one POST of one event in flight per connection, "
        f"for {sizes.publish_seconds:g} s, no subscribers. pgcast answers once the event is "
        "committed (fsync on); Nchan once it is in shared memory; broadcaster once its "
        "NOTIFY is sent. CPU: the server's, and with PostgreSQL's added.",
        tally,
        [("events/s", "higher"), ("server CPU %", "lower"), (SERVER_AND_POSTGRES, "lower")],
        run,
    )


def _fresh_database(run: Run, name: str) -> str:
    url = run.ctx.stack.url
    asyncio.run(execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(execute(url, f'CREATE DATABASE "{name}"'))
    return run.ctx.stack.postgres.url(name)


def _with_postgres(cpu: dict[str, float]) -> float:
    """The server's CPU and PostgreSQL's together (a lower bound: backends that exit
    inside the window are not counted), in percent of one core."""
    return round(cpu["server_cpu_pct"] + cpu["postgres_cpu_pct"], 1)


def _queue_peer(run: Run, script: str, database: str, jobs: int) -> float:
    """Jobs/s of one peer worker: from the first enqueue to the last job run."""
    url = _fresh_database(run, database)
    command = [str(run.python), str(PEERS_DIR / script)]
    worker = LineProcess([*command, "work", url, str(jobs)])
    try:
        worker.expect("ready", timeout=60)
        producer = LineProcess([*command, "enqueue", url, str(jobs)])
        try:
            first_at = float(producer.expect("first_at", timeout=120)["first_at"])
        finally:
            producer.stop()
        done = worker.expect("done", timeout=180)
    finally:
        worker.stop()
    seconds = float(done["last_at"]) - first_at
    return int(done["done"]) / seconds


def _pgcast_jobs_per_s(ctx: Context, prefetch: int, jobs: int) -> float:
    return float(queue._pgcast(ctx, prefetch, jobs)["jobs_per_s"])


def queues(run: Run, tally: Tally) -> ScenarioResult:
    base = run.ctx.sizes
    ours = [f"pgcast prefetch {p}" for p in base.queue_prefetch]
    short = base.queue_jobs[0]
    for jobs in base.queue_jobs:
        case = f"{jobs:,} jobs, no work"
        peers: list[tuple[str, Callable[[], float]]] = [
            ("pgqueuer", partial(_queue_peer, run, "pgqueuer_worker.py", "peer_pgqueuer", jobs))
        ]
        if jobs == short:  # at about 500 jobs/s, longer runs would take minutes
            peers.append(
                (
                    "procrastinate",
                    partial(
                        _queue_peer, run, "procrastinate_worker.py", "peer_procrastinate", jobs
                    ),
                )
            )
        pgcast: list[tuple[str, Callable[[], float]]] = [
            (name, partial(_pgcast_jobs_per_s, run.ctx, p, jobs))
            for name, p in zip(ours, base.queue_prefetch, strict=True)
        ]
        everything = [*pgcast, *peers]
        for rep in range(run.sizes.repetitions):
            for name, measure in run.order(rep, everything):
                try:
                    tally.add(rep, name, {case: {"jobs/s": measure()}})
                except Exception as exc:  # noqa: BLE001  (one failed run must not hide the rest)
                    tally.errors.append(f"{name}, {case}, repetition {rep + 1}: {exc!r}")
                    print(f"[bench] {name} failed:\n{traceback.format_exc()}", flush=True)
    counts = " and ".join(f"{jobs:,}" for jobs in base.queue_jobs)
    result = _result(
        "queue",
        "Queue throughput, enqueue to done",
        f"{counts} jobs enqueued in batches of 100 once the workers are up; rate = "
        "jobs / (last job done - first enqueue). pgcast: "
        f"{base.queue_consumers} WebSocket consumers acking on arrival. pgqueuer: one "
        "QueueManager with its defaults (batch 10, no concurrency limit). procrastinate: "
        f"one worker, concurrency {base.queue_consumers}, {short:,} jobs only. Each peer in "
        "a fresh database.",
        tally,
        [("jobs/s", "higher")],
        run,
        ours=ours,
        peers=["pgqueuer", "procrastinate"],
    )
    measured = f"{short:,} jobs"
    result.rows = [
        row
        for row in result.rows
        if row.baseline_name != "procrastinate" or row.case.startswith(measured)
    ]
    return result


def _result(
    key: str,
    title: str,
    method: str,
    tally: Tally,
    metrics: list[tuple[str, str]],
    run: Run,
    ours: list[str] | None = None,
    peers: list[str] | None = None,
) -> ScenarioResult:
    names = peers or [name for name, _ in run.pubsub() if name != "pgcast"]
    result = ScenarioResult(key, title, method, rows=tally.rows(metrics, ours or ["pgcast"], names))
    result.details = {
        "values": {" | ".join(k): v for k, v in tally.values.items()},
        "errors": tally.errors,
    }
    if not result.rows or all(row.pgcast is None for row in result.rows):
        result.error = "no figures: " + "; ".join(tally.errors[:3])
    return result


SCENARIOS: dict[str, Callable[[Run, Tally], ScenarioResult]] = {
    "fanout": fanout,
    "sustained": sustained,
    "memory": memory,
    "publish": publish,
    "queue": queues,
}


# --- the run -----------------------------------------------------------------------------


def _scenario(key: str, run: Run) -> ScenarioResult:
    started = time.monotonic()
    print(f"[bench] peers {key} ...", flush=True)
    try:
        result = SCENARIOS[key](run, Tally())
    except Exception:  # noqa: BLE001  (one failed scenario must not hide the others)
        result = ScenarioResult(key, key, "", error=traceback.format_exc())
    result.seconds = time.monotonic() - started
    print(f"[bench] peers {key}: done in {result.seconds:.1f} s", flush=True)
    return result


@contextlib.contextmanager
def _stack(quick: bool) -> Iterator[Stack]:
    stack = Stack.start()
    try:
        if quick:
            stack.share_one_server()
        asyncio.run(execute(stack.url, 'CREATE DATABASE "peer_broadcaster"'))
        yield stack
    finally:
        stack.destroy()


def markdown(run: dict[str, Any], results: list[ScenarioResult]) -> str:
    machine = run["machine"]
    lines = [
        "# pgcast and its peers",
        "",
        f"Run `{run['command']}` at {run['started']} in {run['seconds']:.0f} s, "
        f"{run['repetitions']} repetition(s), interleaved. Machine: {machine['cpu']}, "
        f"{machine['cores']} cores; Python {machine['python']}; PostgreSQL "
        f"{machine['postgres']} (fsync on; 8 KiB write+fdatasync median "
        f"{machine['fsync_ms_median']} ms); pgcast `{machine['pgcast_commit']}`; load "
        f"average at start {machine['load_average_at_start']}, at end "
        f"{machine['load_average_at_end']}.",
        "",
        "Values are medians over the repetitions; the ratio column is pgcast ÷ peer of the "
        "medians, the note gives the min–max of the ratios taken within each repetition. "
        "What each peer guarantees: bench/peers/README.md.",
        "",
        "| Scenario | Case | Metric | pgcast | Peer | Peer value | pgcast ÷ peer | Note |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    lines.extend(
        f"| {r.key} | {row.case} | {row.metric} | {report.number(row.pgcast)} | "
        f"{row.baseline_name} | {report.number(row.baseline)} | {report.ratio(row)} | "
        f"{row.note} |"
        for r in results
        for row in r.rows
    )
    if run["notes"]:
        lines += ["", *(f"- {note}" for note in run["notes"])]
    for r in results:
        problems = [r.error] if r.error else r.details.get("errors", [])
        if problems:
            lines += ["", f"Failures in {r.key}:", *(f"- `{p.strip()[-300:]}`" for p in problems)]
    lines += ["", "## How each figure was measured", ""]
    lines += [f"- **{r.key}** ({r.seconds:.0f} s): {r.method}" for r in results]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Install the peers, run every scenario (or those `--only` names), print the table,
    write JSON and markdown."""
    try:
        python = peer_python()
    except PeersUnavailable as exc:
        print(f"[bench] the peers cannot be installed, nothing measured: {exc}", flush=True)
        return 2
    nchan = find_nchan()
    notes = [nchan.note] if nchan.note else []
    for note in notes:
        print(f"[bench] {note}", flush=True)
    keys = [key for key in SCENARIOS if not args.only or key in args.only]
    if not keys:
        print(f"[bench] no peer scenario among {args.only}; they are {list(SCENARIOS)}")
        return 2
    sizes = QUICK if args.quick else FULL
    if args.repetitions:
        sizes = PeerSizes(**{**vars(sizes), "repetitions": args.repetitions})
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    stamp = "peers-" + started_at.strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    with _stack(args.quick) as stack:
        machine = machine_info(stack.version(), stack.workdir)
        # The peers are measured up to 5,000 idle connections, as the raw server is.
        base = BASE_QUICK if args.quick else replace(BASE_FULL, memory_steps=(1000, 5000))
        ctx = Context(stack, base)
        run = Run(ctx, sizes, python, nchan)
        results = [_scenario(key, run) for key in keys]
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    only = "".join(f" --only {key}" for key in args.only or ())
    record = {
        "command": "python -m bench --peers" + (" --quick" if args.quick else "") + only,
        "started": started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "repetitions": sizes.repetitions,
        "sizes": vars(sizes),
        "notes": notes,
        "machine": machine,
    }
    report.write_json(out / f"{stamp}.json", report.record(record, results))
    text = markdown(record, results)
    (out / f"{stamp}.md").write_text(text)
    (out / "peers-summary.md").write_text(text)
    print()
    print(report.table(results))
    print(f"\n[bench] {record['seconds']:.0f} s; wrote {out / (stamp + '.md')}")
    return 1 if any(r.error for r in results) else 0
