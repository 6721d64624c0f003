"""Exactly-once checks for fault-injection tests: streams against the log, queues against the DB.

Streams: each subscriber records the event ids it received, in arrival order, together with
the position it started after. The log (`pgcast.log` by `pos`, read after running the
sequencer) is the truth. A subscriber passes when it received every event of its topics
after its start, up to its final position (or up to `through`), exactly once and in log
order.

Publishes: every `201` must name an event that is in the log, and no event label (a
publisher's own name for an event, kept in its data) may appear in the log twice.

Queues: every enqueued message must end `acked` or `dead` (none `ready` or `leased`), the
consumers' ack logs must name each message at most once and only acked ones, and no
message may have been processed more often than it was delivered (`attempt`).

Every problem is reported as a sentence naming the first offending id.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.connectors.database import connect
from backend.entities.event import format_id

EARLIEST = format_id(0)
LABEL = "label"
MAX_SEQUENCER_RUNS = 100


@dataclass(frozen=True)
class LogEvent:
    """One positioned event of the log, as the checker sees it."""

    id: str
    topic: str
    data: Any

    @property
    def label(self) -> str | None:
        value = self.data.get(LABEL) if isinstance(self.data, dict) else None
        return value if isinstance(value, str) else None


@dataclass
class Received:
    """What one subscriber got, in arrival order, and when (monotonic seconds)."""

    name: str
    start: str = EARLIEST
    ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    reconnects: int = 0

    def add(self, event_id: str) -> None:
        self.ids.append(event_id)
        self.times.append(time.monotonic())

    @property
    def last(self) -> str:
        """The position to resume after: the last id received, else the start."""
        return self.ids[-1] if self.ids else self.start

    def max_gap(self, since: float = 0.0) -> float:
        """The longest pause between two deliveries that both arrived after `since`."""
        times = [t for t in self.times if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def stream_problem(received: Received, log_ids: Sequence[str], through: str = "") -> str | None:
    """How `received` departs from exactly-once-in-order delivery of `log_ids`, or None.

    `log_ids` are the ids of the subscriber's topics in log order. The subscriber must hold
    every one of them after its start and up to `max(its last id, through)`.
    """
    name = received.name
    in_log = set(log_ids)
    seen: set[str] = set()
    previous = received.start
    for index, event_id in enumerate(received.ids):
        if event_id in seen:
            return f"{name}: duplicate {event_id} (delivery #{index}, after {previous})"
        if event_id <= previous:
            return f"{name}: out of order: {event_id} arrived after {previous} (delivery #{index})"
        if event_id not in in_log:
            return f"{name}: received {event_id}, which is not in the log of its topics"
        seen.add(event_id)
        previous = event_id
    end = max(received.last, through)
    expected = [i for i in log_ids if received.start < i <= end]
    missing = [i for i in expected if i not in seen]
    if missing:
        first = missing[0]
        before = max((i for i in received.ids if i < first), default=received.start)
        return (
            f"{name}: missing {len(missing)} of {len(expected)} events after {received.start}"
            f" through {end}; first missing {first} (last received before it: {before},"
            f" last received: {received.last})"
        )
    return None


def stream_problems(
    subscribers: Iterable[Received], log_ids: Sequence[str], through: str = ""
) -> list[str]:
    return [
        problem
        for received in subscribers
        if (problem := stream_problem(received, log_ids, through)) is not None
    ]


def publish_problems(
    log: Sequence[LogEvent], acked: Mapping[str, str], expected: Collection[str] = ()
) -> list[str]:
    """Every 201 (label -> id) is in the log under that label; no label is in the log twice.

    `expected` lists labels that must have been acknowledged (publishers that retried until
    they got a 201).
    """
    problems: list[str] = []
    counts = Counter(e.label for e in log if e.label is not None)
    twice = [label for label, count in counts.items() if count > 1]
    if twice:
        ids = [e.id for e in log if e.label == twice[0]]
        problems.append(
            f"{len(twice)} labels were published more than once; first {twice[0]!r} as {ids}"
        )
    by_id = {e.id: e for e in log}
    for label, event_id in acked.items():
        found = by_id.get(event_id)
        if found is None:
            problems.append(f"a 201 gave {label!r} id {event_id}, which is not in the log")
            break
        if found.label != label:
            problems.append(f"a 201 gave {label!r} id {event_id}, but the log has {found.label!r}")
            break
    unacked = [label for label in expected if label not in acked]
    if unacked:
        problems.append(f"{len(unacked)} events never got a 201; first {unacked[0]!r}")
    return problems


def fail_on(problems: Sequence[str], context: str = "") -> None:
    """AssertionError listing every problem (the first one first), if there are any."""
    if problems:
        head = f"{context}: " if context else ""
        raise AssertionError(head + "\n  ".join([f"{len(problems)} problem(s)", *problems]))


async def read_log(database_url: str, topics: Collection[str]) -> list[LogEvent]:
    """The positioned events of `topics`, in log order, after sequencing what is committed."""
    conn = await connect(database_url)
    try:
        for _ in range(MAX_SEQUENCER_RUNS):
            if not await conn.fetchval("SELECT pgcast.sequence_pending()"):
                break
        # pgcast.log expands captured statements' chunks by a route of its own, not the
        # server's paging that the followers' streams came through.
        rows = await conn.fetch(
            "SELECT pos, topic, data FROM pgcast.log WHERE topic = ANY($1::text[]) ORDER BY pos",
            list(topics),
        )
    finally:
        await conn.close()
    return [LogEvent(format_id(r["pos"]), r["topic"], r["data"]) for r in rows]


async def check_streams(
    database_url: str,
    topics: Collection[str],
    subscribers: Iterable[Received],
    *,
    acked: Mapping[str, str] | None = None,
    expected: Collection[str] = (),
    through: str = "",
) -> list[LogEvent]:
    """Read the log and assert every subscriber (and publisher, if given) against it."""
    log = await read_log(database_url, topics)
    log_ids = [e.id for e in log]
    problems = stream_problems(subscribers, log_ids, through)
    if acked is not None:
        problems += publish_problems(log, acked, expected)
    fail_on(problems, f"{len(log)} events in the log of {sorted(topics)}")
    return log


@dataclass(frozen=True)
class QueueRow:
    id: int
    state: str
    attempt: int
    max_attempts: int


async def read_queue(database_url: str, queue: str) -> list[QueueRow]:
    conn = await connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, state, attempt, max_attempts FROM pgcast.queue_messages"
            " WHERE queue = $1 ORDER BY id",
            queue,
        )
    finally:
        await conn.close()
    return [QueueRow(r["id"], r["state"], r["attempt"], r["max_attempts"]) for r in rows]


async def unfinished(database_url: str, queue: str) -> int:
    """How many messages of `queue` are still ready or leased."""
    conn = await connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pgcast.queue_messages"
            " WHERE queue = $1 AND state IN ('ready', 'leased')",
            queue,
        )
    finally:
        await conn.close()
    return count


def queue_problems(
    rows: Sequence[QueueRow],
    *,
    enqueued: Collection[int],
    acks: Sequence[int],
    processed: Sequence[int] = (),
    unlogged_acks: int | None = 0,
) -> list[str]:
    """Every message acked exactly once or dead-lettered, and nothing left behind.

    `acks` are the ids from the consumers' ack logs (a line written after each ack got
    `200`). `unlogged_acks` is how many acked messages may be missing from those logs (a
    consumer killed between the `200` and the write); None when some consumers keep no ack
    log at all. `processed` are the ids the consumers started working on, one per delivery.
    """
    problems: list[str] = []
    by_id = {row.id: row for row in rows}
    lost = sorted(set(enqueued) - set(by_id))
    if lost:
        problems.append(f"{len(lost)} enqueued messages are not in the queue; first {lost[0]}")
    extra = sorted(set(by_id) - set(enqueued))
    if extra:
        problems.append(f"{len(extra)} messages were never enqueued by the test; first {extra[0]}")
    left = [row for row in rows if row.state not in ("acked", "dead")]
    if left:
        problems.append(
            f"{len(left)} messages are not finished; first {left[0].id} is {left[0].state}"
            f" (attempt {left[0].attempt})"
        )
    twice = sorted(i for i, count in Counter(acks).items() if count > 1)
    if twice:
        problems.append(
            f"{len(twice)} messages were acked more than once; first {twice[0]}"
            f" ({Counter(acks)[twice[0]]} acks)"
        )
    not_acked = [i for i in dict.fromkeys(acks) if i not in by_id or by_id[i].state != "acked"]
    if not_acked:
        state = by_id[not_acked[0]].state if not_acked[0] in by_id else "missing"
        problems.append(
            f"{len(not_acked)} messages in the ack logs are not acked; first {not_acked[0]}"
            f" is {state}"
        )
    early = [row for row in rows if row.state == "dead" and row.attempt < row.max_attempts]
    if early:
        problems.append(
            f"{len(early)} messages were dead-lettered early; first {early[0].id} after"
            f" {early[0].attempt} of {early[0].max_attempts} attempts"
        )
    times = Counter(processed)
    over = [i for i, count in times.items() if i in by_id and count > by_id[i].attempt]
    if over:
        problems.append(
            f"{len(over)} messages were processed more often than delivered; first {over[0]}"
            f" processed {times[over[0]]} times in {by_id[over[0]].attempt} deliveries"
        )
    acked = [row.id for row in rows if row.state == "acked"]
    if processed:
        unprocessed = [i for i in acked if i not in times]
        if unprocessed:
            problems.append(
                f"{len(unprocessed)} acked messages were never processed; first {unprocessed[0]}"
            )
    if unlogged_acks is not None:
        logged = set(acks)
        unlogged = [i for i in acked if i not in logged]
        if len(unlogged) > unlogged_acks:
            problems.append(
                f"{len(unlogged)} acked messages are in no ack log (at most {unlogged_acks}"
                f" allowed); first {unlogged[0]}"
            )
    return problems


async def check_queue(
    database_url: str,
    queue: str,
    *,
    enqueued: Collection[int],
    acks: Sequence[int],
    processed: Sequence[int] = (),
    unlogged_acks: int | None = 0,
) -> list[QueueRow]:
    """Read the queue and assert `queue_problems` finds nothing."""
    rows = await read_queue(database_url, queue)
    fail_on(
        queue_problems(
            rows, enqueued=enqueued, acks=acks, processed=processed, unlogged_acks=unlogged_acks
        ),
        f"queue {queue!r} with {len(rows)} messages",
    )
    return rows


def read_ids(paths: Iterable[Path]) -> list[int]:
    """The message ids logged one per line in the given files (missing files are empty)."""
    ids: list[int] = []
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        ids += [int(line) for line in text.split() if line.isdigit()]
    return ids
