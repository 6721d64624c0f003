"""Table change capture: INSERT/UPDATE/DELETE/TRUNCATE of user tables as pgcast events.

A capture is four statement-level AFTER triggers named `pgcast_capture_*` on the table,
all calling `pgcast.capture_changes(topic, columns, key)` (migration 0004). The trigger
arguments are the whole configuration, so listing reads `pg_trigger` and there is no
registry to drift from the catalog. Installing is drop-and-recreate in one transaction:
idempotent, and it updates the topic and columns of an existing capture.

Tables are named `schema.table` (or `table`, meaning `public.table`) and matched exactly
as the catalog spells them. Identifiers reach SQL only through `format('%I')`, trigger
arguments only through `format('%L')`, and every value is a query parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from backend.connectors.database import Connection, Pool
from backend.core.errors import CaptureError, ConfigError, InvalidName, PgcastError
from backend.core.names import validate_name

TRIGGER_PREFIX = "pgcast_capture_"
DEFAULT_SCHEMA = "public"
TOPIC_PREFIX = "db"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_QUOTE_LIMIT = 80
# Capturing pgcast's own tables would feed events back into the log; system catalogs
# cannot carry triggers at all.
_FORBIDDEN_SCHEMAS = frozenset({"pgcast", "pg_catalog", "information_schema", "pg_toast"})
_KINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "c": "a composite type",
    "t": "a TOAST table",
}

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
class TableName:
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def default_topic(self) -> str:
        return f"{TOPIC_PREFIX}.{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Capture:
    """One captured table: its events go to `topic`, rows limited to `columns` when set."""

    table: str
    topic: str
    columns: tuple[str, ...] | None
    key: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """The wire form: `{"table", "topic", "columns": null | [...]}`."""
        columns = None if self.columns is None else list(self.columns)
        return {"table": self.table, "topic": self.topic, "columns": columns}


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return repr(text)


def parse_table(text: object) -> TableName:
    """`schema.table`, or `table` for the public schema; anything else is a CaptureError."""
    if not isinstance(text, str):
        raise CaptureError("the table must be a string such as 'public.orders'")
    parts = text.split(".")
    if len(parts) == 1:
        parts = [DEFAULT_SCHEMA, parts[0]]
    if len(parts) != 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise CaptureError(
            f"invalid table {_quote(text)}: expected schema.table (or table, for the public"
            " schema); each name 1-63 characters of letters, digits, _ and $, not starting"
            " with a digit"
        )
    table = TableName(parts[0], parts[1])
    if table.schema in _FORBIDDEN_SCHEMAS or table.schema.startswith("pg_"):
        raise CaptureError(
            f"table {table.qualified} is in the {table.schema} schema: pgcast captures"
            " application tables only"
        )
    return table


def parse_capture_tables(text: str) -> list[str]:
    """CAPTURE_TABLES: comma-separated tables; blanks around and between entries are ignored."""
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def _resolve_topic(table: TableName, topic: object) -> str:
    if topic is None:
        try:
            return validate_name(table.default_topic, "topic")
        except InvalidName as exc:
            raise CaptureError(
                f"table {table.qualified}: cannot use {table.default_topic!r} as its topic"
                f" ({exc.message}); choose a topic explicitly"
            ) from None
    try:
        return validate_name(topic, "topic")
    except InvalidName as exc:
        raise CaptureError(f"table {table.qualified}: invalid {exc.message}") from None


def _check_columns(table: TableName, columns: object) -> tuple[str, ...] | None:
    """The requested columns in order without repeats, or None for all of them."""
    if columns is None:
        return None
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise CaptureError(f"table {table.qualified}: columns must be a list of column names")
    if not all(isinstance(column, str) and column for column in columns):
        raise CaptureError(
            f"table {table.qualified}: columns must be non-empty strings (column names)"
        )
    if not columns:
        raise CaptureError(
            f"table {table.qualified}: columns must name at least one column"
            " (leave it out to capture every column)"
        )
    return tuple(dict.fromkeys(columns))


async def _describe(conn: Connection, table: TableName) -> tuple[list[str], list[str]]:
    """(columns, primary-key columns) of a capturable table; CaptureError otherwise."""
    row = await conn.fetchrow(_DESCRIBE, table.schema, table.name)
    if row is None:
        raise CaptureError(f"table {table.qualified} does not exist")
    kind = row["relkind"]
    if kind not in ("r", "p"):
        what = _KINDS.get(kind, f"not a table (relkind {kind!r})")
        raise CaptureError(
            f"{table.qualified} is {what}: only ordinary and partitioned tables can be captured"
        )
    if row["relispartition"]:
        raise CaptureError(
            f"table {table.qualified} is a partition: capture its partitioned table instead"
        )
    if not row["key"]:
        raise CaptureError(
            f"table {table.qualified} has no primary key: capture needs one to key events"
            " and to pair the old and new rows of an update"
        )
    return list(row["columns"]), list(row["key"])


async def add_capture(
    pool: Pool,
    table: object,
    topic: object = None,
    columns: object = None,
) -> Capture:
    """Capture `table` (idempotent; replaces the topic and columns of an existing capture)."""
    name = parse_table(table)
    resolved_topic = _resolve_topic(name, topic)
    wanted = _check_columns(name, columns)
    async with pool.acquire() as conn, conn.transaction():
        existing, key = await _describe(conn, name)
        if wanted is not None:
            unknown = [column for column in wanted if column not in existing]
            if unknown:
                listed = ", ".join(repr(column) for column in unknown)
                raise CaptureError(f"table {name.qualified} has no column(s) {listed}")
        columns_arg = "" if wanted is None else orjson.dumps(list(wanted)).decode()
        script: str = await conn.fetchval(
            "SELECT format($1::text, $2::text, $3::text, $4::text, $5::text, $6::text)",
            _DROP_SCRIPT + _CREATE_SCRIPT,
            name.schema,
            name.name,
            resolved_topic,
            columns_arg,
            orjson.dumps(key).decode(),
        )
        try:
            await conn.execute(script)
        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
            raise CaptureError(
                f"table {name.qualified}: not allowed to create triggers on it ({exc});"
                " pgcast's database role must own the table"
            ) from None
    return Capture(name.qualified, resolved_topic, wanted, tuple(key))


async def remove_capture(pool: Pool, table: object) -> bool:
    """Stop capturing `table`; False when it was not captured (or does not exist)."""
    name = parse_table(table)
    async with pool.acquire() as conn, conn.transaction():
        installed = await conn.fetchval(
            f"SELECT count(*) FROM ({_TRIGGERS_OF}) AS t"
            " WHERE schema_name = $1 AND table_name = $2",
            name.schema,
            name.name,
        )
        if not installed:
            return False
        script: str = await conn.fetchval(
            "SELECT format($1::text, $2::text, $3::text)", _DROP_SCRIPT, name.schema, name.name
        )
        try:
            await conn.execute(script)
        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
            raise CaptureError(
                f"table {name.qualified}: not allowed to drop its triggers ({exc})"
            ) from None
    return True


def _capture_of(row: Any) -> Capture:
    raw: bytes = row["tgargs"]
    args = [arg.decode() for arg in raw.split(b"\x00")[: row["tgnargs"]]]
    topic, columns, key = [*args, "", "", "[]"][:3]
    return Capture(
        f"{row['schema_name']}.{row['table_name']}",
        topic,
        tuple(orjson.loads(columns)) if columns else None,
        tuple(orjson.loads(key)) if key else (),
    )


async def list_captures(pool: Pool) -> list[Capture]:
    """Every captured table, by schema and name, read from the triggers themselves."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT DISTINCT ON (schema_name, table_name) * FROM ({_TRIGGERS_OF}) AS t"
            " ORDER BY schema_name, table_name"
        )
    return [_capture_of(row) for row in rows]


async def reconcile(pool: Pool, specs: str | Iterable[str]) -> list[Capture]:
    """Make sure every listed table is captured (CAPTURE_TABLES at start-up).

    Tables already captured keep their topic and columns (they may have been set through
    the admin API); tables not listed are left alone. A bad entry raises ConfigError.
    """
    tables = parse_capture_tables(specs) if isinstance(specs, str) else list(specs)
    if not tables:
        return []
    current = {capture.table: capture for capture in await list_captures(pool)}
    added: list[Capture] = []
    for entry in tables:
        try:
            name = parse_table(entry)
            if name.qualified in current:
                continue
            added.append(await add_capture(pool, name.qualified))
        except PgcastError as exc:
            raise ConfigError(f"CAPTURE_TABLES: {exc.message}") from None
    return added
