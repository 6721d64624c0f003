"""The hot statements, run once on every new pool connection before it serves anyone.

A new Postgres backend loads its catalog caches on first use of a table, and asyncpg
prepares each statement text once per connection: on a fresh connection the first enqueue
of 100 messages took 10-14 ms instead of 2, and a fresh server opens several connections
inside its first burst (docs/performance.md, "Warm connections"). Each statement here runs
on empty input, so it writes nothing (it still takes its table's ordinary lock, so it waits
behind a migration's); the publish path's statement takes the log's lock and is left out.
"""

from __future__ import annotations

from backend.connectors.database import Connection
from backend.connectors.store import log, queues

NO_QUEUE = ""  # no queue has an empty name, so the claim below finds nothing


async def warm(conn: Connection) -> None:
    await queues.insert_messages(conn, [])
    await queues.claim(conn, NO_QUEUE, 1.0, "warm.", 1)
    await queues.ack_many(conn, [])
    await log.read_all_after(conn, 0, 0)
