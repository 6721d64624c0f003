"""Subscriber processes: SSE and WebSocket streams, LISTEN connections, queue consumers.

Each function is a child entry (see `bench.procs`): it connects, reports `ready`, waits
for the parent's instruction and reports `result`. Counts, first/last arrival times
(`time.time()`, one host clock) and, when sampling, every latency are sent back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import orjson

from bench.procs import Control, Payload
from bench.wire import Fleet, SseStream, Stream, WsStream, open_streams, read_ts

MAX_ERRORS_REPORTED = 5


def fleet_report(fleet: Fleet, streams: int) -> Payload:
    return {
        "streams": streams,
        "events": fleet.events,
        "complete": fleet.complete,
        "first_at": fleet.first_at,
        "last_at": fleet.last_at,
        "latencies": fleet.latencies.tobytes(),
    }


def subscribe_frame(topic: str, after: str) -> bytes:
    return orjson.dumps({"op": "subscribe", "id": 1, "topic": topic, "after": after})


async def _open(
    port: int, kind: str, count: int, topic: str, after: str, fleet: Fleet
) -> tuple[list[Stream], list[str]]:
    make: Callable[[], Stream]
    if kind == "sse":
        path = f"/topics/{topic}/events?after={after}"

        def make() -> Stream:
            return SseStream(fleet, path)
    else:
        hello = subscribe_frame(topic, after)

        def make() -> Stream:
            return WsStream(fleet, hello)

    if count == 0:
        return [], []
    return await open_streams(make, count, port)


async def stream_fleet(
    ctl: Control,
    port: int,
    topic: str,
    after: str,
    sse: int,
    ws: int,
    sample: bool,
) -> None:
    """Hold `sse` + `ws` subscriptions of `topic`; on `expect`, wait until each stream has
    that many events (or the time-out) and report per transport."""
    fleets = {"sse": Fleet(sample=sample), "ws": Fleet(sample=sample)}
    opened: dict[str, list[Stream]] = {}
    errors: list[str] = []
    for kind, count in (("sse", sse), ("ws", ws)):
        streams, failed = await _open(port, kind, count, topic, after, fleets[kind])
        opened[kind] = streams
        errors += failed
    ctl.send(
        "ready",
        sse=len(opened["sse"]),
        ws=len(opened["ws"]),
        errors=errors[:MAX_ERRORS_REPORTED],
        error_count=len(errors),
    )
    started = time.process_time()  # receiving starts now (latency runs say `expect` later)
    started_at = time.monotonic()
    order = await ctl.expect("expect", within=600)
    for kind, fleet in fleets.items():
        fleet.expect(order["events"], opened[kind])
    waits = [fleet.done.wait() for kind, fleet in fleets.items() if opened[kind]]
    try:
        async with asyncio.timeout(order["timeout"]):
            await asyncio.gather(*waits)
    except TimeoutError:
        pass
    report = {kind: fleet_report(fleets[kind], len(opened[kind])) for kind in fleets}
    ctl.send(
        "result",
        cpu=time.process_time() - started,
        elapsed=time.monotonic() - started_at,
        **report,
    )
    for streams in opened.values():
        for stream in streams:
            stream.close()


async def idle_fleet(ctl: Control, port: int, path: str, ws_topic: str = "") -> None:
    """Hold idle SSE connections (or WebSockets with one subscription to `ws_topic`);
    `grow` to a total, `count` what arrived, `stop` to close them all."""
    fleet = Fleet()
    streams: list[Stream] = []
    errors: list[str] = []
    hello = orjson.dumps({"op": "subscribe", "id": 1, "topic": ws_topic})

    def make() -> Stream:
        return WsStream(fleet, hello) if ws_topic else SseStream(fleet, path)

    for _ in range(1000):
        kind, payload = await ctl.recv(within=600)
        if kind == "stop":
            break
        if kind == "count":
            ctl.send("counted", events=fleet.events, last_at=fleet.last_at)
            continue
        missing = payload["total"] - len(streams)
        if missing > 0:
            more, failed = await open_streams(make, missing, port, wave=payload.get("wave", 100))
            streams += more
            errors += failed
        open_now = sum(1 for stream in streams if not stream.closed)
        ctl.send("grown", total=open_now, errors=errors[:MAX_ERRORS_REPORTED], failed=len(errors))
    for stream in streams:
        stream.close()


class Listener:
    """One asyncpg LISTEN connection counted as one subscriber."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.received = 0

    def notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        now = time.time()
        if self.fleet.sample and isinstance(payload, str):
            ts = read_ts(payload.encode())
            if ts is not None:
                self.fleet.latencies.append(now - ts)
        self.fleet.arrived(self, 1, now)


async def listen_fleet(
    ctl: Control, dsn: str, channel: str, connections: int, sample: bool
) -> None:
    """`connections` LISTEN connections on `channel`, reported like a stream fleet."""
    fleet = Fleet(sample=sample)
    listeners = [Listener(fleet) for _ in range(connections)]
    conns: list[asyncpg.Connection[asyncpg.Record]] = []
    attached: list[Listener] = []
    errors: list[str] = []

    async def attach(listener: Listener) -> None:
        conn = await asyncpg.connect(dsn, timeout=30)
        conns.append(conn)
        await conn.add_listener(channel, listener.notified)
        attached.append(listener)

    for start in range(0, connections, 25):
        results = await asyncio.gather(
            *(attach(listener) for listener in listeners[start : start + 25]),
            return_exceptions=True,
        )
        errors += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    ctl.send("ready", listeners=len(attached), errors=errors[:MAX_ERRORS_REPORTED])
    order = await ctl.expect("expect", within=600)
    started = time.process_time()
    fleet.expect(order["events"], attached)
    try:
        async with asyncio.timeout(order["timeout"]):
            await fleet.done.wait()
    except TimeoutError:
        pass
    ctl.send("result", cpu=time.process_time() - started, listen=fleet_report(fleet, len(attached)))
    await ctl.linger()
    await asyncio.gather(*(conn.close(timeout=5) for conn in conns), return_exceptions=True)


class QueueTally:
    """Acks counted across the consumers of one process."""

    def __init__(self) -> None:
        self.acked = 0
        self.target = 0
        self.last_at = 0.0
        self.done = asyncio.Event()

    def on_text(self, stream: WsStream, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"op":"message"'):
            message_id = orjson.loads(payload)["id"]
            stream.send_text(b'{"op":"ack","message":"%s"}' % message_id.encode())
        elif payload.startswith(b'{"op":"acked"'):
            self.acked += 1
            self.last_at = now
            if self.target and self.acked >= self.target:
                self.done.set()
        elif stream.ready.done():
            return
        elif payload.startswith(b'{"op":"subscribed"'):
            stream.ready.set_result(None)
        elif payload.startswith(b'{"op":"error"'):
            stream.ready.set_exception(ConnectionError(payload.decode(errors="replace")))


async def queue_consumers(
    ctl: Control, port: int, queue: str, consumers: int, prefetch: int
) -> None:
    """WebSocket queue consumers that ack every message at once; on `expect`, wait for
    that many acks in this process."""
    tally = QueueTally()
    hello = orjson.dumps(
        {"op": "consume", "id": "c", "queue": queue, "prefetch": prefetch, "lease": 60}
    )
    streams, errors = await open_streams(
        lambda: WsStream(Fleet(), hello, on_text=tally.on_text), consumers, port
    )
    ctl.send("ready", consumers=len(streams), errors=errors[:MAX_ERRORS_REPORTED])
    order = await ctl.expect("expect", within=600)
    started = time.process_time()
    tally.target = order["jobs"]
    if tally.acked >= tally.target:
        tally.done.set()
    try:
        async with asyncio.timeout(order["timeout"]):
            await tally.done.wait()
    except TimeoutError:
        pass
    ctl.send("result", acked=tally.acked, last_at=tally.last_at, cpu=time.process_time() - started)
    for stream in streams:
        stream.close()
