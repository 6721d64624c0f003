"""Table change capture: INSERT/UPDATE/DELETE/TRUNCATE of user tables as pgcast events.

A capture is a set of triggers on the table (`backend.connectors.store.capture`) whose
arguments are the whole configuration, so listing reads `pg_trigger` and there is no
registry to drift from the catalog. Installing is drop-and-recreate in one transaction:
idempotent, and it updates the topic and columns of an existing capture.

Tables are named `schema.table` (or `table`, meaning `public.table`) and matched exactly
as the catalog spells them; this module checks names and shapes, the connector runs SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from backend.connectors.database import Connection, Pool
from backend.connectors.store import capture as store
from backend.core.errors import CaptureError, ConfigError, InvalidName, PgcastError
from backend.core.names import validate_name

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


async def _describe(conn: Connection, table: TableName) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(columns, primary-key columns) of a capturable table; CaptureError otherwise."""
    relation = await store.describe(conn, table.schema, table.name)
    if relation is None:
        raise CaptureError(f"table {table.qualified} does not exist")
    kind = relation.kind
    if kind not in ("r", "p"):
        what = _KINDS.get(kind, f"not a table (relkind {kind!r})")
        raise CaptureError(
            f"{table.qualified} is {what}: only ordinary and partitioned tables can be captured"
        )
    if relation.is_partition:
        raise CaptureError(
            f"table {table.qualified} is a partition: capture its partitioned table instead"
        )
    if not relation.key:
        raise CaptureError(
            f"table {table.qualified} has no primary key: capture needs one to key events"
            " and to pair the old and new rows of an update"
        )
    return relation.columns, relation.key


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
    async with pool.transaction() as conn:
        existing, key = await _describe(conn, name)
        if wanted is not None:
            unknown = [column for column in wanted if column not in existing]
            if unknown:
                listed = ", ".join(repr(column) for column in unknown)
                raise CaptureError(f"table {name.qualified} has no column(s) {listed}")
        await store.install(conn, name.schema, name.name, resolved_topic, wanted, key)
    return Capture(name.qualified, resolved_topic, wanted, key)


async def remove_capture(pool: Pool, table: object) -> bool:
    """Stop capturing `table`; False when it was not captured (or does not exist)."""
    name = parse_table(table)
    async with pool.transaction() as conn:
        if not await store.is_captured(conn, name.schema, name.name):
            return False
        await store.drop(conn, name.schema, name.name)
    return True


async def list_captures(pool: Pool) -> list[Capture]:
    """Every captured table, by schema and name, read from the triggers themselves."""
    async with pool.acquire() as conn:
        found = await store.installed(conn)
    return [Capture(f"{c.schema}.{c.table}", c.topic, c.columns, c.key) for c in found]


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
