"""SQL over queue messages. Every state change is one fenced UPDATE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backend.connectors.database import Connection
from backend.core import exactjson
from backend.entities.message import Message, NewMessage, QueueStats

COLUMNS = (
    "id, queue, data::text AS data_json, key, attempt, max_attempts, enqueued_at,"
    " available_at, lease_token, lease_until, last_error, state"
)
# Exponential backoff with jitter: base * 2^(attempt-1), capped, times a factor in [0.5, 1).
BACKOFF_SQL = (
    "least($cap::float8, $base::float8 * power(2, greatest(attempt - 1, 0))) * (0.5 + random() / 2)"
)


@dataclass(frozen=True, slots=True)
class Moved:
    """A message after a state change, with the state it moved to (`ready` or `dead`)."""

    message: Message
    state: str


def backoff_sql(base_param: int, cap_param: int) -> str:
    return BACKOFF_SQL.replace("$cap", f"${cap_param}").replace("$base", f"${base_param}")


def to_message(row: Any) -> Message:
    """The message of a row, its data made compact JSON once (jsonb text has spaces): every
    body that carries it later splices it as is. jsonb cannot hold a NUL, so none is
    looked for."""
    data = exactjson.loads(row["data_json"], "the message data", allow_nul=True)
    return Message(
        id=row["id"],
        queue=row["queue"],
        data_json=exactjson.dumps(data),
        key=row["key"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        enqueued_at=row["enqueued_at"],
        available_at=row["available_at"],
        lease=row["lease_token"],
        lease_until=row["lease_until"],
        last_error=row["last_error"],
    )


async def insert_messages(conn: Connection, messages: Sequence[NewMessage]) -> list[Message]:
    rows = await conn.fetch(
        f"""
        INSERT INTO pgcast.queue_messages (queue, data, key, available_at, max_attempts)
        SELECT queue, data::jsonb, key, now() + make_interval(secs => delay), max_attempts
          FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int[])
               WITH ORDINALITY AS u(queue, data, key, delay, max_attempts, ord)
         ORDER BY ord
        RETURNING {COLUMNS}
        """,
        [m.queue for m in messages],
        [m.data_json.decode() for m in messages],
        [m.key for m in messages],
        [m.delay_seconds for m in messages],
        [m.max_attempts for m in messages],
    )
    return sorted((to_message(r) for r in rows), key=lambda m: m.id)


def lease_tokens(base: str, limit: int) -> list[str]:
    """Every token a claim of up to `limit` messages under `base` may have handed out."""
    return [f"{base}{n}" for n in range(1, limit + 1)]


async def claim(
    conn: Connection, queue: str, lease_seconds: float, base: str, limit: int
) -> list[Message]:
    """Lease up to `limit` available messages, in order, under the tokens `base` + 1, 2, ...

    The caller picks the base before the statement runs, so it can always give back
    whatever this claimed (`lease_tokens`), even when it never saw the answer; an idle
    claim sends one short string whatever the limit. SKIP LOCKED lets consumers never
    collide. The claim commits without waiting for its WAL flush: a claim lost in a
    Postgres crash leaves its messages ready with the attempt unused (the lease is
    refused), and the fenced ack, which does wait, flushes the claim before it.
    """
    rows = await conn.fetch(
        f"""
        WITH no_flush_wait AS (
            SELECT set_config('synchronous_commit', 'off', true)
        ), picked AS (
            SELECT id, available_at FROM pgcast.queue_messages
             WHERE queue = $1 AND state = 'ready' AND available_at <= now()
             ORDER BY available_at, id
             LIMIT $4
             FOR UPDATE SKIP LOCKED
        ), numbered AS (
            SELECT id, row_number() OVER (ORDER BY available_at, id) AS n FROM picked
        )
        UPDATE pgcast.queue_messages AS m
           SET state = 'leased', attempt = m.attempt + 1,
               lease_token = $3::text || numbered.n,
               lease_until = now() + make_interval(secs => $2)
          FROM numbered, no_flush_wait WHERE m.id = numbered.id
        RETURNING {COLUMNS.replace("id,", "m.id,", 1)}
        """,
        queue,
        lease_seconds,
        base,
        limit,
    )
    return sorted((to_message(r) for r in rows), key=lambda m: (m.available_at, m.id))


async def next_available(conn: Connection, queue: str) -> datetime | None:
    when: datetime | None = await conn.fetchval(
        "SELECT min(available_at) FROM pgcast.queue_messages WHERE queue = $1 AND state = 'ready'",
        queue,
    )
    return when


async def ack_many(conn: Connection, acks: Sequence[tuple[str, int, str]]) -> set[str]:
    """Acknowledge many (queue, message id, lease) in one statement; returns the leases that
    were held, each fenced on its own token."""
    rows = await conn.fetch(
        """
        UPDATE pgcast.queue_messages AS m
           SET state = 'acked', finished_at = now(), lease_token = NULL, lease_until = NULL
          FROM unnest($1::text[], $2::bigint[], $3::text[]) AS a(queue, id, lease)
         WHERE m.id = a.id AND m.queue = a.queue AND m.state = 'leased'
           AND m.lease_token = a.lease
        RETURNING a.lease
        """,
        [queue for queue, _, _ in acks],
        [message_id for _, message_id, _ in acks],
        [lease for _, _, lease in acks],
    )
    return {r["lease"] for r in rows}


async def nack_many(
    conn: Connection,
    nacks: Sequence[tuple[str, int, str, float | None, str | None]],
    backoff: tuple[float, float],
) -> dict[str, Moved]:
    """Nack many (queue, message id, lease, delay, error) in one statement: each back to
    `ready` after its delay (None: the backoff), or to `dead` when attempts are used up.
    Returns the moves by lease, for the leases that were held."""
    rows = await conn.fetch(
        f"""
        UPDATE pgcast.queue_messages AS m
           SET state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'ready' END,
               available_at = CASE WHEN attempt >= max_attempts THEN available_at
                   ELSE now() + make_interval(secs => coalesce(n.delay, {backoff_sql(6, 7)})) END,
               finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
               last_error = coalesce(n.error, 'nacked'), lease_token = NULL, lease_until = NULL
          FROM unnest($1::text[], $2::bigint[], $3::text[], $4::float8[], $5::text[])
               AS n(nack_queue, nack_id, nack_lease, delay, error)
         WHERE m.id = n.nack_id AND m.queue = n.nack_queue AND m.state = 'leased'
           AND m.lease_token = n.nack_lease
        RETURNING {COLUMNS.replace("id,", "m.id,", 1)}, n.nack_lease
        """,
        [queue for queue, _, _, _, _ in nacks],
        [message_id for _, message_id, _, _, _ in nacks],
        [lease for _, _, lease, _, _ in nacks],
        [delay for _, _, _, delay, _ in nacks],
        [error for _, _, _, _, error in nacks],
        backoff[0],
        backoff[1],
    )
    return {r["nack_lease"]: _moved(r) for r in rows}


async def extend(
    conn: Connection, queue: str, message_id: int, lease: str, seconds: float
) -> datetime | None:
    until: datetime | None = await conn.fetchval(
        """
        UPDATE pgcast.queue_messages SET lease_until = now() + make_interval(secs => $4)
         WHERE id = $1 AND queue = $2 AND state = 'leased' AND lease_token = $3
        RETURNING lease_until
        """,
        message_id,
        queue,
        lease,
        seconds,
    )
    return until


async def state_of(conn: Connection, queue: str, message_id: int) -> str | None:
    state: str | None = await conn.fetchval(
        "SELECT state FROM pgcast.queue_messages WHERE id = $1 AND queue = $2", message_id, queue
    )
    return state


async def release(conn: Connection, leases: Sequence[str]) -> list[Moved]:
    """Return delivered messages at once (their consumer went away); attempts still count."""
    rows = await conn.fetch(
        f"""
        UPDATE pgcast.queue_messages
           SET state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'ready' END,
               available_at = now(),
               finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
               last_error = 'consumer disconnected', lease_token = NULL, lease_until = NULL
         WHERE state = 'leased' AND lease_token = ANY($1::text[])
        RETURNING {COLUMNS}
        """,
        list(leases),
    )
    return [_moved(r) for r in rows]


async def give_back(conn: Connection, leases: Sequence[str]) -> list[str]:
    """Undo claims that reached no one: ready again, the attempt not used, nothing else
    changed (its place in line, its last error). Returns the queues that got messages back."""
    rows = await conn.fetch(
        """
        UPDATE pgcast.queue_messages
           SET state = 'ready', attempt = attempt - 1, lease_token = NULL, lease_until = NULL
         WHERE state = 'leased' AND lease_token = ANY($1::text[])
        RETURNING queue
        """,
        list(leases),
    )
    return sorted({r["queue"] for r in rows})


async def reap_expired(conn: Connection, backoff: tuple[float, float], limit: int) -> list[Moved]:
    """Expired leases: back to `ready` after backoff, or `dead` when attempts are used up."""
    rows = await conn.fetch(
        f"""
        WITH expired AS (
            SELECT id FROM pgcast.queue_messages
             WHERE state = 'leased' AND lease_until < now()
             ORDER BY lease_until LIMIT $3
             FOR UPDATE SKIP LOCKED
        )
        UPDATE pgcast.queue_messages AS m
           SET state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'ready' END,
               available_at = CASE WHEN attempt >= max_attempts THEN available_at
                   ELSE now() + make_interval(secs => {backoff_sql(1, 2)}) END,
               finished_at = CASE WHEN attempt >= max_attempts THEN now() END,
               last_error = 'lease expired', lease_token = NULL, lease_until = NULL
          FROM expired WHERE m.id = expired.id
        RETURNING {COLUMNS.replace("id,", "m.id,", 1)}
        """,
        backoff[0],
        backoff[1],
        limit,
    )
    return [_moved(r) for r in rows]


async def requeue(conn: Connection, queue: str, message_id: int | None) -> list[Moved]:
    rows = await conn.fetch(
        f"""
        UPDATE pgcast.queue_messages
           SET state = 'ready', attempt = 0, available_at = now(), finished_at = NULL
         WHERE queue = $1 AND state = 'dead' AND ($2::bigint IS NULL OR id = $2)
        RETURNING {COLUMNS}
        """,
        queue,
        message_id,
    )
    return [_moved(r) for r in rows]


async def dead(conn: Connection, queue: str, after_id: int, limit: int) -> list[Message]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM pgcast.queue_messages
         WHERE queue = $1 AND state = 'dead' AND id > $2 ORDER BY id LIMIT $3
        """,
        queue,
        after_id,
        limit,
    )
    return [to_message(r) for r in rows]


async def stats(conn: Connection, queue: str | None) -> list[QueueStats]:
    """Figures per queue, "due" judged against the time the rows are read: `now()` is when
    the statement arrived, which on a busy server can be before a message that the read
    already sees was given back (its `available_at` is that transaction's start)."""
    rows = await conn.fetch(
        """
        WITH at AS (SELECT clock_timestamp() AS t)
        SELECT queue,
               count(*) FILTER (WHERE state = 'ready' AND available_at <= at.t) AS ready,
               count(*) FILTER (WHERE state = 'ready' AND available_at > at.t) AS delayed,
               count(*) FILTER (WHERE state = 'leased') AS leased,
               count(*) FILTER (WHERE state = 'dead') AS dead,
               extract(epoch FROM at.t - min(available_at)
                   FILTER (WHERE state = 'ready' AND available_at <= at.t))::float8 AS oldest
          FROM pgcast.queue_messages, at
         WHERE state <> 'acked' AND ($1::text IS NULL OR queue = $1)
         GROUP BY queue, at.t ORDER BY queue
        """,
        queue,
    )
    return [
        QueueStats(r["queue"], r["ready"], r["leased"], r["delayed"], r["dead"], r["oldest"])
        for r in rows
    ]


async def still_leased(conn: Connection, leases: Sequence[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT lease_token FROM pgcast.queue_messages"
        " WHERE state = 'leased' AND lease_token = ANY($1::text[])",
        list(leases),
    )
    return {r["lease_token"] for r in rows}


async def prune_acked(conn: Connection, before: datetime, limit: int) -> int:
    rows = await conn.fetch(
        """
        DELETE FROM pgcast.queue_messages WHERE id IN (
            SELECT id FROM pgcast.queue_messages
             WHERE state = 'acked' AND finished_at < $1 LIMIT $2)
        RETURNING 1
        """,
        before,
        limit,
    )
    return len(rows)


def _moved(row: Any) -> Moved:
    return Moved(to_message(row), row["state"])


async def messages_by_id(conn: Connection, ids: Sequence[int]) -> list[Message]:
    """The stored messages with these ids, in id order."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM pgcast.queue_messages WHERE id = ANY($1::bigint[]) ORDER BY id",
        list(ids),
    )
    return [to_message(r) for r in rows]


async def notify(conn: Connection, channel: str, queues: Sequence[str]) -> None:
    """One NOTIFY per queue name; a lost wake-up is only a hint, so no synchronous commit."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        await conn.execute(
            "SELECT pg_notify($1, name) FROM unnest($2::text[]) AS name", channel, list(queues)
        )
