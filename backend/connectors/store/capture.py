"""SQL over capture triggers: what a table looks like, and installing or dropping its triggers.

A capture is four statement-level AFTER triggers named `pgcast_capture_*` on the table, all
calling `pgcast.capture_changes(topic, columns, key)` (migration 0004). Identifiers reach SQL
only through `format('%I')`, trigger arguments only through `format('%L')`, and every value
is a query parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from backend.connectors.database import Connection
from backend.core.errors import CaptureError

# The trigger names are constants; `format()` on the server fills in %1$I.%2$I (the
# table) and %3$L, %4$L, %5$L (topic, columns, key).
_DROP_SCRIPT = """
DROP TRIGGER IF EXISTS pgcast_capture_insert ON %1$I.%2$I;
DROP TRIGGER IF EXISTS pgcast_capture_update ON %1$I.%2$I;
DROP TRIGGER IF EXISTS pgcast_capture_delete ON %1$I.%2$I;
DROP TRIGGER IF EXISTS pgcast_capture_truncate ON %1$I.%2$I;
"""
_CREATE_SCRIPT = """
CREATE TRIGGER pgcast_capture_insert AFTER INSERT ON %1$I.%2$I
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION pgcast.capture_changes(%3$L, %4$L, %5$L);
CREATE TRIGGER pgcast_capture_update AFTER UPDATE ON %1$I.%2$I
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION pgcast.capture_changes(%3$L, %4$L, %5$L);
CREATE TRIGGER pgcast_capture_delete AFTER DELETE ON %1$I.%2$I
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION pgcast.capture_changes(%3$L, %4$L, %5$L);
CREATE TRIGGER pgcast_capture_truncate AFTER TRUNCATE ON %1$I.%2$I
    FOR EACH STATEMENT
    EXECUTE FUNCTION pgcast.capture_changes(%3$L, %4$L, %5$L);
"""

_DESCRIBE = """
SELECT c.oid, c.relkind::text AS relkind, c.relispartition,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum) AS columns,
       ARRAY(SELECT a.attname::text
               FROM pg_index i
              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary AND k.ord <= i.indnkeyatts
              ORDER BY k.ord) AS key
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2
"""

_TRIGGERS_OF = r"""
SELECT n.nspname AS schema_name, c.relname AS table_name, t.tgnargs, t.tgargs
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE t.tgname LIKE 'pgcast\_capture\_%' AND NOT t.tgisinternal
   AND t.tgfoid = 'pgcast.capture_changes()'::regprocedure
"""


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation as the catalog describes it: kind (`relkind`), columns and primary key."""

    kind: str
    is_partition: bool
    columns: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Installed:
    """The configuration stored in one table's capture triggers."""

    schema: str
    table: str
    topic: str
    columns: tuple[str, ...] | None
    key: tuple[str, ...]


async def describe(conn: Connection, schema: str, name: str) -> Relation | None:
    """The relation `schema.name`, or None when there is none."""
    row = await conn.fetchrow(_DESCRIBE, schema, name)
    if row is None:
        return None
    return Relation(row["relkind"], row["relispartition"], tuple(row["columns"]), tuple(row["key"]))


async def install(
    conn: Connection,
    schema: str,
    name: str,
    topic: str,
    columns: Sequence[str] | None,
    key: Sequence[str],
) -> None:
    """Drop and recreate the table's capture triggers (call inside a transaction)."""
    columns_arg = "" if columns is None else orjson.dumps(list(columns)).decode()
    script: str = await conn.fetchval(
        "SELECT format($1::text, $2::text, $3::text, $4::text, $5::text, $6::text)",
        _DROP_SCRIPT + _CREATE_SCRIPT,
        schema,
        name,
        topic,
        columns_arg,
        orjson.dumps(list(key)).decode(),
    )
    try:
        await conn.execute(script)
    except asyncpg.exceptions.InsufficientPrivilegeError as exc:
        raise CaptureError(
            f"table {schema}.{name}: not allowed to create triggers on it ({exc});"
            " pgcast's database role must own the table"
        ) from None


async def is_captured(conn: Connection, schema: str, name: str) -> bool:
    """Whether the table carries pgcast's capture triggers."""
    installed = await conn.fetchval(
        f"SELECT count(*) FROM ({_TRIGGERS_OF}) AS t WHERE schema_name = $1 AND table_name = $2",
        schema,
        name,
    )
    return bool(installed)


async def drop(conn: Connection, schema: str, name: str) -> None:
    """Drop the table's capture triggers, those that exist."""
    script: str = await conn.fetchval(
        "SELECT format($1::text, $2::text, $3::text)", _DROP_SCRIPT, schema, name
    )
    try:
        await conn.execute(script)
    except asyncpg.exceptions.InsufficientPrivilegeError as exc:
        raise CaptureError(
            f"table {schema}.{name}: not allowed to drop its triggers ({exc})"
        ) from None


def _installed(row: Any) -> Installed:
    raw: bytes = row["tgargs"]
    args = [arg.decode() for arg in raw.split(b"\x00")[: row["tgnargs"]]]
    topic, columns, key = [*args, "", "", "[]"][:3]
    return Installed(
        row["schema_name"],
        row["table_name"],
        topic,
        tuple(orjson.loads(columns)) if columns else None,
        tuple(orjson.loads(key)) if key else (),
    )


async def installed(conn: Connection) -> list[Installed]:
    """Every captured table, by schema and name, read from the triggers themselves."""
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (schema_name, table_name) * FROM ({_TRIGGERS_OF}) AS t"
        " ORDER BY schema_name, table_name"
    )
    return [_installed(row) for row in rows]
