"""SQL over the event log. One module so every statement that touches the log is in view."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from backend.connectors.database import Connection, Pool
from backend.core.errors import InvalidEvent
from backend.core.names import Pattern
from backend.entities.event import Event, NewEvent

# What Postgres (or the driver, encoding a value) says about an event it will not store:
# bad data (class 22, e.g. \u0000 in jsonb), a violated constraint (23), a limit (54).
_REJECTED: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
    ValueError,
)


@dataclass(frozen=True, slots=True)
class TopicSelector:
    """Patterns turned into SQL: exact topics use the (topic, pos) index, wildcards a regex."""

    literals: tuple[str, ...]
    regex: str | None

    @classmethod
    def of(cls, patterns: Sequence[Pattern]) -> TopicSelector:
        literals = tuple(p.text for p in patterns if p.is_literal)
        wild = [f"(?:{p.sql_regex()})" for p in patterns if not p.is_literal]
        return cls(literals, "|".join(wild) if wild else None)

    def clause(self, first_param: int) -> tuple[str, list[Any]]:
        if self.literals and self.regex:
            return (
                f"(topic = ANY(${first_param}::text[]) OR topic ~ ${first_param + 1})",
                [list(self.literals), self.regex],
            )
        if self.regex:
            return f"topic ~ ${first_param}", [self.regex]
        if len(self.literals) == 1:
            return f"topic = ${first_param}", [self.literals[0]]
        return f"topic = ANY(${first_param}::text[])", [list(self.literals)]


def _event(row: Any) -> Event:
    return Event(
        pos=row["pos"],
        topic=row["topic"],
        type=row["type"],
        key=row["key"],
        data_json=row["data_json"].encode(),
        time=row["created_at"],
    )


CHUNK_CHANGES = 10000
"""The most changes one chunk row of a captured statement holds (migration 0012, which
checks it on every row), so the chunk a position falls into starts at most this many
positions before it."""
END_OF_LOG = 2**62

_ROW_COLUMNS = "seq, pos, span, topic, type, key, data, created_at"


# The rows a page may need: the chunk whose positions hold the one after $1 (a chunk
# starts at most $3 = CHUNK_CHANGES positions before it), then up to $2 rows after $1 and
# up to $4.
_STRADDLES = "span IS NOT NULL AND pos <= $1 AND pos > $1 - $3 AND pos + span - 1 > $1"
_AFTER = "pos > $1 AND pos <= $4"


def _candidates(topic_sql: str, straddler: str, rows: str) -> str:
    return f"""
    (SELECT {straddler} FROM pgcast.events WHERE {_STRADDLES} AND {topic_sql}
      ORDER BY pos DESC LIMIT 1)
    UNION ALL
    (SELECT {rows} FROM pgcast.events WHERE {_AFTER} AND {topic_sql}
      ORDER BY pos LIMIT $2)
    """


def _page_sql(topic_sql: str, extra: str = "") -> str:
    """Events of the candidate rows matching `topic_sql`, at most $2 of them, with `extra`
    columns.

    A row of the log is an event, or a chunk of a captured statement's changes (span
    set), whose events pgcast.chunk_events builds. A row is taken while the events after
    $1 in the rows before it number under $2, and a chunk is expanded only as far as the
    page needs, so retention's gaps and other topics' rows change nothing.
    """
    return f"""
    WITH found AS ({_candidates(topic_sql, _ROW_COLUMNS, _ROW_COLUMNS)}),
    widths AS (
        SELECT found.*,
               greatest(0, pos + coalesce(span, 1) - 1 - greatest(pos - 1, $1)) AS width
          FROM found
    ), page AS MATERIALIZED (
        SELECT * FROM (
            SELECT w.*, coalesce(sum(w.width) OVER (ORDER BY w.pos
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::bigint
                        AS before
              FROM widths w
        ) AS counted
         WHERE before < $2
    )
    SELECT e.*{extra} FROM (
        SELECT pos, topic, type, key, data::text AS data_json, created_at
          FROM page WHERE span IS NULL
        UNION ALL
        SELECT c.pos, p.topic, p.type, c.key, c.data_json, p.created_at
          FROM page p
         CROSS JOIN LATERAL pgcast.chunk_events(
               p.seq, $1, least($4, greatest(p.pos - 1, $1) + $2 - p.before)) AS c
         WHERE p.span IS NOT NULL
    ) AS e
    ORDER BY pos LIMIT $2
    """


def _rows_sql(topic_sql: str, extra: str = "") -> str:
    """The candidate rows as they are (of a chunk only its position and span). When none
    of them is a chunk they are the page, read as cheaply as a plain range scan."""
    straddler = (
        "pos, span, NULL::text AS topic, NULL::text AS type, NULL::text AS key,"
        f" NULL::text AS data_json, NULL::timestamptz AS created_at{extra}"
    )
    rows = f"pos, span, topic, type, key, data::text AS data_json, created_at{extra}"
    return f"SELECT * FROM ({_candidates(topic_sql, straddler, rows)}) AS rows ORDER BY pos"


async def _read(
    conn: Connection, topic_sql: str, args: Sequence[Any], extra: str = ""
) -> list[Any]:
    """A page's rows: one plain statement, and a second that builds the events of a
    captured statement's chunks only when the first met one."""
    rows = await conn.fetch(_rows_sql(topic_sql, extra), *args)
    if any(r["span"] is not None for r in rows):
        rows = await conn.fetch(_page_sql(topic_sql, extra), *args)
    return rows


async def read_all_after(conn: Connection, after: int, limit: int) -> list[Event]:
    """The hub's one read per wake-up: every topic, in position order."""
    rows = await _read(conn, "true", (after, limit, CHUNK_CHANGES, END_OF_LOG))
    return [_event(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Page:
    """A catch-up page, read in one snapshot together with the retention watermark when it
    holds events (an empty page reads the watermark with a second statement)."""

    events: list[Event]
    pruned_through: int


async def read_page(
    conn: Connection, selector: TopicSelector, after: int, upto: int, limit: int
) -> Page:
    """Matching events with after < pos <= upto, and how far retention has pruned."""
    topic_sql, topic_args = selector.clause(5)
    rows = await _read(
        conn,
        topic_sql,
        (after, limit, CHUNK_CHANGES, upto, *topic_args),
        ", (SELECT pruned_through FROM pgcast.log_state WHERE id = 1) AS pruned",
    )
    if rows:
        return Page([_event(r) for r in rows], rows[0]["pruned"])
    pruned = await conn.fetchval("SELECT pruned_through FROM pgcast.log_state WHERE id = 1")
    return Page([], pruned)


async def log_bounds(conn: Connection) -> tuple[int, int]:
    """(pruned_through, last_pos): positions up to the first are gone; the second is the head."""
    row = await conn.fetchrow("SELECT pruned_through, last_pos FROM pgcast.log_state WHERE id = 1")
    assert row is not None, "pgcast.log_state is missing its row: run `pgcast migrate`"
    return row["pruned_through"], row["last_pos"]


@dataclass(frozen=True, slots=True)
class PostgresLog:
    """The log as the hub and subscriptions read it (services.log_reader.LogReader), from the
    pool: the hub's reads take the live path's reserved connections, and give them back
    without a reset (one SELECT leaves no session state)."""

    pool: Pool

    async def bounds(self, *, live: bool = False) -> tuple[int, int]:
        async with self.pool.acquire(live=live) as conn:
            return await log_bounds(conn)

    async def read_after(self, after: int, limit: int) -> list[Event]:
        async with self.pool.acquire(live=True, stateless=True) as conn:
            return await read_all_after(conn, after, limit)

    async def read_page(
        self, patterns: tuple[Pattern, ...], after: int, upto: int, limit: int
    ) -> Page:
        async with self.pool.acquire() as conn:
            return await read_page(conn, _selector(patterns), after, upto, limit)


@functools.lru_cache(maxsize=1024)
def _selector(patterns: tuple[Pattern, ...]) -> TopicSelector:
    return TopicSelector.of(patterns)


async def set_max_event_bytes(conn: Connection, limit: int) -> None:
    """The size limit SQL publishers (`pgcast.publish`) are held to, as this server's."""
    await conn.execute("UPDATE pgcast.log_state SET max_event_bytes = $1 WHERE id = 1", limit)


_INSERT_PENDING = """
    INSERT INTO pgcast.events (topic, type, key, data)
    SELECT topic, type, key, data::jsonb
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
           WITH ORDINALITY AS u(topic, type, key, data, ord)
     ORDER BY ord
    RETURNING seq
"""


async def insert_events(conn: Connection, events: Sequence[NewEvent]) -> list[int]:
    """Append unpositioned events in order; returns their insertion sequence numbers.

    Events the database refuses raise InvalidEvent and nothing of the call is stored.
    """
    rows = await _append(conn, _INSERT_PENDING, events)
    return sorted(r["seq"] for r in rows)


async def append_positioned(conn: Connection, events: Sequence[NewEvent]) -> list[Event]:
    """Append `events` with their positions in one statement and its own transaction; the
    positioned events, in order, once committed (see migration 0007).

    Events the database refuses raise InvalidEvent and nothing of the call is stored.
    """
    rows = await _append(conn, "SELECT * FROM pgcast.append_positioned($1, $2, $3, $4)", events)
    return sorted((_event(r) for r in rows), key=lambda event: event.pos)


async def _append(conn: Connection, sql: str, events: Sequence[NewEvent]) -> list[Any]:
    """Run `sql` with the events as four arrays (topics, types, keys, data as text)."""
    try:
        return await conn.fetch(
            sql,
            [e.topic for e in events],
            [e.type for e in events],
            [e.key for e in events],
            [e.data_json.decode() for e in events],
        )
    except _REJECTED as exc:
        reason = str(exc).partition("\n")[0]  # not the DETAIL and CONTEXT lines
        raise InvalidEvent(f"the database rejected the event: {reason}") from None


async def sequence_pending(conn: Connection, batch: int = 10000) -> int:
    """Stamp positions on committed, unpositioned log rows until none are left; how many
    positions it gave."""
    total = 0
    while True:
        stamped: int = await conn.fetchval("SELECT pgcast.sequence_pending($1)", batch)
        total += stamped
        if stamped < batch:
            return total


@dataclass(frozen=True, slots=True)
class Stamped:
    """One sequencer run: the positions it gave, the log's head after it (None when it
    gave none), and the first of its events as the log now holds them."""

    positions: int
    head: int | None
    events: list[Event]


async def sequence_returning(
    conn: Connection, batch: int, budget: int, lease: float = 0.0
) -> Stamped:
    """Stamp positions on up to `batch` committed, unpositioned log rows, in one transaction,
    and return the first of their events in position order, as long as their stored sizes
    add up to `budget` bytes (at least one) and up to the first chunk of a captured
    statement: the position lock is held until they are sent. If it stamps any, SQL
    publishers send no wake-up for the next `lease` seconds (the caller polls instead)."""
    rows = await conn.fetch(
        "SELECT * FROM pgcast.sequence_returning($1, $2, $3)", batch, budget, lease
    )
    if not rows:
        return Stamped(0, None, [])
    events = [_event(r) for r in rows if r["pos"] is not None]
    return Stamped(rows[0]["stamped"], rows[0]["head"], events)


async def sequence_and_read(
    conn: Connection, seqs: Sequence[int], batch: int = 10000
) -> list[Event]:
    """Stamp positions until `seqs` (committed) have theirs; return them as delivered.

    One round trip when fewer than `batch` rows wait ahead of them (an idempotent publish,
    short of a large backlog); each call is one sequencer transaction.
    """
    while True:
        rows = await conn.fetch(
            "SELECT * FROM pgcast.sequence_and_read($1::bigint[], $2)", list(seqs), batch
        )
        if not rows or rows[-1]["pos"] is not None or rows[0]["stamped"] < batch:
            return [_event(r) for r in rows if r["pos"] is not None]


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pruning statement deleted: rows of the log, and the events they held (a
    chunk row of a captured statement holds many)."""

    rows: int
    events: int


async def prune_before(conn: Connection, cutoff: datetime, batch: int) -> Pruned:
    """Delete one batch of the oldest log rows created before `cutoff`, as a prefix of the log.

    Only a prefix is removed, so `pruned_through` is an exact boundary: every position at or
    below it is gone and every position above it is still there.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            WITH oldest AS (
                SELECT pos, created_at FROM pgcast.events
                 WHERE pos IS NOT NULL ORDER BY pos LIMIT $2
            ), boundary AS (
                SELECT min(pos) AS first_kept FROM oldest WHERE created_at >= $1
            ), gone AS (
                DELETE FROM pgcast.events e
                 USING oldest o, boundary b
                 WHERE e.pos = o.pos AND (b.first_kept IS NULL OR o.pos < b.first_kept)
                RETURNING e.pos + coalesce(e.span, 1) - 1 AS last, coalesce(e.span, 1) AS width
            )
            UPDATE pgcast.log_state
               SET pruned_through = greatest(pruned_through, (SELECT max(last) FROM gone))
             WHERE id = 1 AND EXISTS (SELECT 1 FROM gone)
            RETURNING (SELECT count(*) FROM gone) AS rows, (SELECT sum(width) FROM gone) AS events
            """,
            cutoff,
            batch,
        )
    return Pruned(row["rows"], row["events"]) if row else Pruned(0, 0)


@dataclass(frozen=True, slots=True)
class TopicSummary:
    """One topic of the retained log: how many events it holds and its newest one."""

    topic: str
    events: int
    newest_pos: int
    newest_time: datetime


async def topic_summaries(
    conn: Connection, selector: TopicSelector, after: str, limit: int
) -> list[TopicSummary]:
    """Matching topics named after `after`, in name order, at most `limit` of them.

    A loose index scan walks the (topic, pos) index one distinct topic at a time instead
    of grouping every event; each listed topic then costs one index range count.
    """
    topic_sql, topic_args = selector.clause(3)
    rows = await conn.fetch(
        f"""
        WITH RECURSIVE names AS (
            (SELECT topic FROM pgcast.events
              WHERE pos IS NOT NULL AND topic > $1 ORDER BY topic LIMIT 1)
            UNION ALL
            SELECT (SELECT e.topic FROM pgcast.events e
                     WHERE e.pos IS NOT NULL AND e.topic > names.topic
                     ORDER BY e.topic LIMIT 1)
              FROM names WHERE names.topic IS NOT NULL
        ), wanted AS (
            SELECT topic FROM names WHERE topic IS NOT NULL AND {topic_sql} LIMIT $2
        )
        SELECT w.topic, s.events + coalesce(c.more, 0) AS events,
               e.pos + coalesce(e.span, 1) - 1 AS newest, e.created_at
          FROM wanted w
         CROSS JOIN LATERAL (
               SELECT count(*) AS events, max(pos) AS newest FROM pgcast.events
                WHERE topic = w.topic AND pos IS NOT NULL
         ) s
         CROSS JOIN LATERAL (
               SELECT sum(span - 1) AS more FROM pgcast.events
                WHERE topic = w.topic AND span IS NOT NULL AND pos IS NOT NULL
         ) c
          JOIN pgcast.events e ON e.pos = s.newest
         ORDER BY w.topic
        """,
        after,
        limit,
        *topic_args,
    )
    return [TopicSummary(r["topic"], r["events"], r["newest"], r["created_at"]) for r in rows]
