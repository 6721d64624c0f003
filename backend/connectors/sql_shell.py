"""SQL text run the way a terminal shell runs it, for `pgcast db shell`.

One statement goes through a prepared statement so its columns and rows come back; text
with several statements (a script, a function body with its own `;`) falls back to the
simple protocol, which reports only the last status. Errors come back as text: a shell
shows them and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from backend.connectors.database import Connection

MULTIPLE_COMMANDS = "cannot insert multiple commands into a prepared statement"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one piece of SQL text produced: rows with their column names, or a status."""

    status: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[object, ...]] = field(default_factory=list)
    error: str | None = None


async def run_sql(conn: Connection, sql: str) -> Outcome:
    try:
        try:
            statement = await conn.prepare(sql)
        except asyncpg.PostgresSyntaxError as exc:
            if MULTIPLE_COMMANDS not in str(exc):
                raise
            return Outcome(status=await conn.execute(sql))
        rows = await statement.fetch()
    except asyncpg.PostgresError as exc:
        return Outcome(error=f"{exc.__class__.__name__}: {exc}")
    columns = [attribute.name for attribute in statement.get_attributes()]
    return Outcome(statement.get_statusmsg() or "", columns, [tuple(row.values()) for row in rows])
