"""Large captured statements stored as chunks (migration 0012): the events they give, read
back page by page, after schema changes, and through the sequencer, retention and listings."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from backend.connectors.database import Connection, open_pool
from backend.connectors.store import log as log_queries
from backend.connectors.store.log import END_OF_LOG, TopicSelector
from backend.core.names import Pattern
from backend.entities.event import Event, NewEvent, format_id
from backend.services.capture import add_capture
from backend.testing.engine import running_engine, take
from backend.testing.tables import database

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

ROWS = 300  # over the 256 changes from which a statement is stored as chunks
MANY = 400  # so that a third of them, updated, are still over it

# Every kind of value whose text form has to come back exactly: quotes, commas, braces
# and backslashes in text, NULL beside the empty string, floats, numerics with trailing
# zeros, times in the writer's zone, intervals, JSON, arrays, bytea.
CREATE = """
CREATE TABLE public.{name} (
    region text, id int, label text, price numeric, ratio float8, at timestamptz,
    day date, spell interval, doc jsonb, tags text[], blob bytea, flag bool, cost money,
    span tstzrange, PRIMARY KEY (region, id)
)
"""
FILL = """
INSERT INTO public.{name}
SELECT CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south "s", (x)' END, g,
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'back\\slash {{a,b}}'
                  ELSE 'plain ' || g END,
       g * 1.50, g / 7.0, '2026-03-01 12:00+00'::timestamptz + g * interval '1 hour',
       '2026-03-01'::date + g, g * interval '61 minutes',
       jsonb_build_object('n', g, 's', 'q"' || g), ARRAY['a,b', NULL, 'c"' || g],
       decode(lpad(to_hex(g), 4, '0'), 'hex'), g % 3 = 0, g * 0.25,
       tstzrange('2026-03-01'::timestamptz, '2026-03-01'::timestamptz + g * interval '1 day')
  FROM generate_series(1, {rows}) AS g
"""
COLUMNS = ["region", "id", "label", "price", "ratio", "at", "day", "spell", "doc", "tags"]
COLUMNS += ["blob", "flag", "cost", "span"]


@asynccontextmanager
async def captured(url: str, *ddl: str, **topics: str) -> AsyncIterator[Connection]:
    """A connection to the test database after `ddl`, with each table named in `topics`
    (in schema public) captured, every column, to its topic."""
    async with database(url, *ddl) as db, open_pool(url, size=1) as pool:
        for table, topic in topics.items():
            await add_capture(pool, f"public.{table}", topic)
        yield db


async def read_all(conn: Connection, topic: str, after: int = 0, page: int = 1000) -> list[Event]:
    """Every event of `topic` after `after`, read in catch-up pages of `page`."""
    await log_queries.sequence_pending(conn)
    selector = TopicSelector.of([Pattern.parse(topic)])
    events: list[Event] = []
    while got := (await log_queries.read_page(conn, selector, after, END_OF_LOG, page)).events:
        events += got
        after = got[-1].pos
    return events


def shapes(events: list[Event]) -> list[tuple[str | None, str | None, Any]]:
    return [(e.type, e.key, orjson.loads(e.data_json)) for e in events]


async def chunk_rows(conn: Connection, topic: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pgcast.events WHERE topic = $1 AND span IS NOT NULL", topic
    )
    return count


WRITERS = [
    {
        "TimeZone": "America/St_Johns",
        "DateStyle": "SQL, DMY",
        "IntervalStyle": "iso_8601",
        "extra_float_digits": "0",
    },
    {
        "TimeZone": "Asia/Kolkata",
        "DateStyle": "Postgres, MDY",
        "IntervalStyle": "sql_standard",
        "bytea_output": "escape",
        "lc_monetary": "C",
    },
]


@pytest.mark.parametrize("writer", WRITERS, ids=["st_johns", "kolkata"])
async def test_a_large_statement_gives_the_events_one_row_per_change_gives(
    database_url: str, writer: dict[str, str]
) -> None:
    # The same statements on two tables: one captured with every column listed, which
    # writes one event row per change, and one without a list, which writes chunks.
    async with (
        database(database_url, CREATE.format(name="rowwise"), CREATE.format(name="chunked")) as db,
        open_pool(database_url, size=1) as pool,
    ):
        await add_capture(pool, "public.rowwise", "t.rowwise", COLUMNS)
        await add_capture(pool, "public.chunked", "t.chunked")
        # Values print as in the writer's session, wherever the reader runs.
        for name, value in writer.items():
            await db.execute("SELECT set_config($1, $2, false)", name, value)
        for name in ("rowwise", "chunked"):
            await db.execute(FILL.format(name=name, rows=MANY))
            await db.execute(f"UPDATE public.{name} SET price = price + 1 WHERE id % 3 <> 0")
            await db.execute(f"DELETE FROM public.{name} WHERE id > 10")
        await db.execute("RESET ALL")
        assert await chunk_rows(db, "t.rowwise") == 0
        assert await chunk_rows(db, "t.chunked") == 3
        rowwise = await read_all(db, "t.rowwise")
        chunked = await read_all(db, "t.chunked", page=7)

    # The same events; the chunks in the order the rows changed, the event rows in
    # primary-key order (here: "north" before "south").
    assert sorted(shapes(chunked), key=repr) == sorted(shapes(rowwise), key=repr)
    inserted = [orjson.loads(e.data_json)["new"]["id"] for e in chunked if e.type == "insert"]
    assert inserted == list(range(1, MANY + 1))
    first = orjson.loads(chunked[0].data_json)["new"]
    if writer["TimeZone"] == "America/St_Johns":
        assert (first["at"], first["spell"]) == ("2026-03-01T09:30:00-03:30", "PT1H1M")
    else:
        assert (first["at"], first["spell"]) == ("2026-03-01T18:30:00+05:30", "1:01:00")
    assert first["label"] == ""
    assert first["tags"] == ["a,b", None, 'c"1']
    assert orjson.loads(chunked[1].data_json)["new"]["label"] == "back\\slash {a,b}"
    assert Counter(e.type for e in chunked) == {
        "insert": MANY,
        "update": MANY - MANY // 3,
        "delete": MANY - 10,
    }
    positions = [e.pos for e in chunked]
    assert positions == list(range(positions[0], positions[0] + len(positions)))


async def test_resuming_inside_a_chunk_misses_nothing_and_repeats_nothing(
    database_url: str,
) -> None:
    async with (
        database(
            database_url, "CREATE TABLE public.items (id int PRIMARY KEY, n int NOT NULL)"
        ) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.items", "t.items")
        async with engine.subscribe("t.*", after="latest") as live:
            # One transaction: an SQL publish, a chunked statement of 25,000 rows (three
            # chunks), another publish. The log keeps the transaction's order.
            async with db.transaction():
                await db.execute("SELECT pgcast.publish('t.marks', '\"before\"')")
                await db.execute(
                    "INSERT INTO items SELECT g, 0 FROM generate_series(1, 25000) AS g"
                )
                await db.execute("SELECT pgcast.publish('t.marks', '\"after\"')")
            got = await take(live, 25_002, within=30)
        assert [e.topic for e in (got[0], got[-1])] == ["t.marks", "t.marks"]
        assert [e.key for e in got[1:-1]] == [str(n) for n in range(1, 25_001)]
        positions = [e.pos for e in got]
        assert positions == list(range(positions[0], positions[0] + 25_002))

        # Resume after a change in the middle of the second chunk, and right after a
        # chunk's last change.
        for resume in (got[12_345], got[10_000]):
            async with engine.subscribe("t.items", after=format_id(resume.pos)) as again:
                rest = await take(again, positions[-2] - resume.pos, within=30)
            assert rest[0].pos == resume.pos + 1
            assert [e.key for e in rest] == [e.key for e in got if e.pos > resume.pos][:-1]


async def test_an_update_that_changes_keys_is_paired_by_key(database_url: str) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.moves (id int PRIMARY KEY, n int NOT NULL)",
        f"INSERT INTO moves SELECT g, 0 FROM generate_series(1, {ROWS}) AS g",
        moves="t.moves",
    ) as db:
        await db.execute("UPDATE moves SET n = 1 WHERE id = 1")
        await db.execute("UPDATE moves SET id = id + 1000 WHERE id > 1")
        assert await chunk_rows(db, "t.moves") == 0
        events = await read_all(db, "t.moves")
    # Every moved row is a delete of its old key and an insert of its new one, in key
    # order, as for a small statement.
    assert Counter(e.type for e in events) == {"update": 1, "delete": ROWS - 1, "insert": ROWS - 1}
    assert [e.key for e in events[:3]] == ["1", "2", "3"]
    assert events[-1].key == str(ROWS + 1000)


async def test_chunks_written_before_a_schema_change_read_back_as_written(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TYPE public.mood AS ENUM ('calm', 'loud')",
        "CREATE TABLE public.shifts (id int PRIMARY KEY, who text, feel mood, n int)",
        shifts="t.shifts",
    ) as db:
        await db.execute(
            "INSERT INTO shifts SELECT g, 'w, \"' || g || '\"', 'loud', g"
            f" FROM generate_series(1, {ROWS}) AS g"
        )
        await db.execute(
            "UPDATE shifts SET n = n + 1,"
            " feel = CASE WHEN id % 2 = 0 THEN 'calm'::mood ELSE feel END"
        )
        await db.execute("UPDATE shifts SET who = NULL")
        await db.execute("DELETE FROM shifts")
        assert await chunk_rows(db, "t.shifts") == 4
        await log_queries.sequence_pending(db)
        before = shapes(await read_all(db, "t.shifts"))
        # An enum whose value was renamed no longer reads its old label: the field is
        # read as text, which is how the label showed anyway.
        await db.execute("ALTER TYPE public.mood RENAME VALUE 'loud' TO 'noisy'")
        after_rename = shapes(await read_all(db, "t.shifts"))
        # New columns, a dropped one, a changed type: the chunk still holds the old rows.
        await db.execute("ALTER TABLE shifts ADD COLUMN extra text DEFAULT 'x'")
        await db.execute("ALTER TABLE shifts ALTER COLUMN n TYPE bigint")
        after_alter = shapes(await read_all(db, "t.shifts"))
        # With the enum type gone too, its values come back as their text.
        await db.execute("ALTER TABLE shifts DROP COLUMN feel")
        await db.execute("DROP TYPE public.mood")
        after_drop = shapes(await read_all(db, "t.shifts"))
        via_view = await db.fetch(
            "SELECT type, key, data FROM pgcast.log WHERE topic = 't.shifts' ORDER BY pos"
        )

    assert before[0] == (
        "insert",
        "1",
        {"new": {"id": 1, "who": 'w, "1"', "feel": "loud", "n": 1}, "old": None},
    )
    assert [e[0] for e in before].count("update") == 2 * ROWS
    assert [before[ROWS][2]["changed"], before[ROWS + 1][2]["changed"]] == [["n"], ["feel", "n"]]
    assert after_rename == before
    assert after_alter == before
    assert after_drop == before
    assert [(r["type"], r["key"], r["data"]) for r in via_view] == before


async def test_record_fields_reads_the_text_form_of_a_row(database_url: str) -> None:
    async with database(database_url) as db:
        fields = await db.fetchval(
            "SELECT pgcast.record_fields(ROW(1, NULL, '', 'a,b', 'q\"uote', 'back\\slash',"
            " '(p)', ' sp ', ARRAY['x,y'])::text)"
        )
    assert fields == ["1", None, "", "a,b", 'q"uote', "back\\slash", "(p)", " sp ", '{"x,y"}']


async def test_the_sequencer_hands_over_up_to_the_first_chunk(database_url: str) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.handed (id int PRIMARY KEY, n int NOT NULL)",
        handed="t.handed",
    ) as db:
        await log_queries.sequence_pending(db)
        head = await db.fetchval("SELECT last_pos FROM pgcast.log_state")
        async with db.transaction():
            await db.execute("SELECT pgcast.publish('t.marks', '1')")
            await db.execute("SELECT pgcast.publish('t.marks', '2')")
            await db.execute(f"INSERT INTO handed SELECT g, 0 FROM generate_series(1, {ROWS}) AS g")
            await db.execute("SELECT pgcast.publish('t.marks', '3')")
        run = await log_queries.sequence_returning(db, 1000, 1_000_000)
        idle = await log_queries.sequence_returning(db, 1000, 1_000_000)
        assert idle == log_queries.Stamped(0, None, [])
        async with db.transaction():
            await db.execute(
                f"INSERT INTO handed SELECT g, 0 FROM generate_series({ROWS + 1}, {2 * ROWS}) g"
            )
        second = await log_queries.sequence_returning(db, 1000, 1_000_000)
        logged_head = await db.fetchval("SELECT last_pos FROM pgcast.log_state")

    assert [e.data_json for e in run.events] == [b"1", b"2"]
    assert (run.positions, run.head) == (ROWS + 3, head + ROWS + 3)
    # Only a chunk was stamped: nothing to hand over, and the head still moves.
    assert (second.positions, second.head, second.events) == (ROWS, head + 2 * ROWS + 3, [])
    assert logged_head == second.head


async def test_retention_and_topic_listings_count_changes(database_url: str) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.kept (id int PRIMARY KEY, n int NOT NULL)",
        kept="t.kept",
    ) as db:
        await db.execute(f"INSERT INTO kept SELECT g, 0 FROM generate_series(1, {ROWS}) AS g")
        await db.execute("SELECT pgcast.publish('t.kept', '\"last\"')")
        await log_queries.sequence_pending(db)
        head = await db.fetchval("SELECT last_pos FROM pgcast.log_state")
        (listed,) = await log_queries.topic_summaries(
            db, TopicSelector.of([Pattern.parse("t.kept")]), "", 10
        )
        assert (listed.topic, listed.events, listed.newest_pos) == ("t.kept", ROWS + 1, head)

        # Prune everything older than now: the chunk row goes whole, and the watermark
        # is the last position it held.
        await db.execute(
            "UPDATE pgcast.events SET created_at = created_at - interval '1 day' WHERE span > 0"
        )
        pruned = await log_queries.prune_before(db, datetime.now(UTC) - timedelta(hours=1), 1000)
        state = await db.fetchrow("SELECT pruned_through, last_pos FROM pgcast.log_state")
        rest = await read_all(db, "t.kept")
    assert pruned == log_queries.Pruned(rows=1, events=ROWS)
    assert state is not None
    assert (state["pruned_through"], state["last_pos"]) == (head - 1, head)
    assert [e.data_json for e in rest] == [b'"last"']


async def test_a_statement_over_the_chunk_volume_writes_one_row_per_change(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.wide (id int PRIMARY KEY, body text NOT NULL)",
        wide="t.wide",
    ) as db:
        await db.execute("SET pgcast.capture_chunk_bytes = 10000")
        await db.execute(
            f"INSERT INTO wide SELECT g, repeat('w', 100) FROM generate_series(1, {ROWS}) AS g"
        )
        await db.execute("RESET pgcast.capture_chunk_bytes")
        await db.execute(f"UPDATE wide SET body = 'v' WHERE id <= {ROWS}")
        assert await chunk_rows(db, "t.wide") == 1
        events = await read_all(db, "t.wide")
    assert Counter(e.type for e in events) == {"insert": ROWS, "update": ROWS}
    assert [e.key for e in events] == [str(n) for n in range(1, ROWS + 1)] * 2


async def test_a_page_after_a_pruned_gap_starts_with_the_chunk_after_it(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.gapped (id int PRIMARY KEY, n int NOT NULL)",
        gapped="t.gapped",
    ) as db:
        await db.execute("SELECT pgcast.publish('t.gapped', '\"gone\"')")
        await log_queries.sequence_pending(db)
        await db.execute(f"INSERT INTO gapped SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        await db.execute("SELECT pgcast.publish('t.gapped', '\"last\"')")
        await log_queries.sequence_pending(db)
        first = await db.fetchval("SELECT min(pos) FROM pgcast.events")
        # As retention leaves it: positions up to the first are gone.
        await db.execute("DELETE FROM pgcast.events WHERE pos = $1", first)
        hub_page = await log_queries.read_all_after(db, first - 1, 5)
        topic_page = (
            await log_queries.read_page(
                db, TopicSelector.of([Pattern.parse("t.gapped")]), first - 1, END_OF_LOG, 5
            )
        ).events
    for page in (hub_page, topic_page):
        assert [e.pos for e in page] == list(range(first + 1, first + 6))
        assert [e.key for e in page] == ["1", "2", "3", "4", "5"]


async def test_pages_bounded_inside_a_chunk_and_selectors_of_other_topics(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.left_side (id int PRIMARY KEY, n int NOT NULL)",
        "CREATE TABLE public.right_side (id int PRIMARY KEY, n int NOT NULL)",
        left_side="t.left",
        right_side="t.right",
    ) as db:
        await db.execute("SELECT pgcast.publish('t.other', '0')")
        await db.execute(f"INSERT INTO left_side SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        await db.execute(f"INSERT INTO right_side SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        await db.execute("SELECT pgcast.publish('t.other', '1')")
        await log_queries.sequence_pending(db)
        start = await db.fetchval("SELECT min(pos) FROM pgcast.events")
        left = start + 1  # the first change of t.left; t.right's follow at left + ROWS

        async def page(patterns: list[str], after: int, upto: int, limit: int) -> list[int]:
            selector = TopicSelector.of([Pattern.parse(p) for p in patterns])
            got = await log_queries.read_page(db, selector, after, upto, limit)
            return [e.pos for e in got.events]

        # A page bounded inside a chunk ends there, and the next page goes on from it.
        assert await page(["t.left"], left + 9, left + 14, 100) == list(range(left + 10, left + 15))
        assert await page(["t.left"], left + 14, END_OF_LOG, 3) == [left + 15, left + 16, left + 17]
        # After a position inside t.left's chunk: other topics start where they start.
        right = left + ROWS
        assert await page(["*.right"], left + 5, END_OF_LOG, 2) == [right, right + 1]
        assert await page(["t.right", "*.other"], left + 5, END_OF_LOG, 2) == [right, right + 1]
        assert await page(["t.other", "*.left"], left + ROWS - 2, END_OF_LOG, 3) == [
            left + ROWS - 1,
            right + ROWS,
        ]
        # A small sequencer batch stops between chunk rows and positions stay dense.
        await db.execute(f"DELETE FROM left_side WHERE id <= {ROWS}")
        await db.execute(f"DELETE FROM right_side WHERE id <= {ROWS}")
        head = await db.fetchval("SELECT last_pos FROM pgcast.log_state")
        assert await log_queries.sequence_pending(db, batch=1) == 2 * ROWS
        rows = await db.fetch(
            "SELECT pos, span FROM pgcast.events WHERE pos > $1 ORDER BY pos", head
        )
    assert [(r["pos"], r["span"]) for r in rows] == [(head + 1, ROWS), (head + 1 + ROWS, ROWS)]


async def test_a_partitioned_table_and_a_table_without_a_primary_key(database_url: str) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.parts (id int PRIMARY KEY, n int NOT NULL) PARTITION BY RANGE (id)",
        "CREATE TABLE public.parts_low PARTITION OF parts FOR VALUES FROM (0) TO (200)",
        "CREATE TABLE public.parts_high PARTITION OF parts FOR VALUES FROM (200) TO (1000)",
        "CREATE TABLE public.keyless (id int PRIMARY KEY, n int NOT NULL)",
        f"INSERT INTO keyless SELECT g, 0 FROM generate_series(1, {ROWS}) g",
        parts="t.parts",
        keyless="t.keyless",
    ) as db:
        await db.execute(f"INSERT INTO parts SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        await db.execute("UPDATE parts SET n = n + 1")
        # Without its primary key the capture pairs by the key it was given, row by row.
        await db.execute("ALTER TABLE keyless DROP CONSTRAINT keyless_pkey")
        await db.execute("UPDATE keyless SET n = n + 1")
        assert await chunk_rows(db, "t.parts") == 2
        assert await chunk_rows(db, "t.keyless") == 0
        parts = await read_all(db, "t.parts")
        keyless = await read_all(db, "t.keyless")
    updates = [orjson.loads(e.data_json) for e in parts if e.type == "update"]
    assert sorted(int(e.key or 0) for e in parts if e.type == "update") == list(range(1, ROWS + 1))
    assert all(u["changed"] == ["n"] and u["new"]["n"] == 1 for u in updates)
    assert [e.key for e in keyless] == [str(n) for n in range(1, ROWS + 1)]


async def test_reading_a_chunk_leaves_the_readers_settings_as_they_were(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.zoned (id int PRIMARY KEY, at timestamptz)",
        zoned="t.zoned",
    ) as db:
        await db.execute("SET TimeZone = 'Pacific/Auckland'")
        await db.execute(
            f"INSERT INTO zoned SELECT g, '2026-06-01 00:00+00' FROM generate_series(1, {ROWS}) g"
        )
        await db.execute("SET TimeZone = 'UTC'")
        async with db.transaction():
            events = await read_all(db, "t.zoned")
            zone = await db.fetchval("SHOW TimeZone")
    assert zone == "UTC"
    assert orjson.loads(events[0].data_json)["new"]["at"] == "2026-06-01T12:00:00+12:00"


async def test_columns_named_like_the_triggers_own_names_and_a_wide_table(
    database_url: str,
) -> None:
    wide_columns = ", ".join(f"c{n} int" for n in range(1, 61))
    async with (
        database(
            database_url,
            "CREATE TABLE public.named (id int PRIMARY KEY, r int, volume int, x text, n int)",
            "CREATE TABLE public.named_rows (id int PRIMARY KEY, r int, volume int, x text, n int)",
            f"CREATE TABLE public.wide60 (id int PRIMARY KEY, {wide_columns})",
        ) as db,
        open_pool(database_url, size=1) as pool,
    ):
        await add_capture(pool, "public.named", "t.named")
        await add_capture(
            pool, "public.named_rows", "t.named_rows", ["id", "r", "volume", "x", "n"]
        )
        await add_capture(pool, "public.wide60", "t.wide60")
        for table in ("named", "named_rows"):
            await db.execute(
                f"INSERT INTO {table} SELECT g, g, g * 2, 'x' || g, g"
                f" FROM generate_series(1, {ROWS}) g"
            )
            await db.execute(f"UPDATE {table} SET volume = volume + 1, r = NULL")
        values = ", ".join(f"g + {n}" for n in range(1, 61))
        await db.execute(f"INSERT INTO wide60 SELECT g, {values} FROM generate_series(1, {ROWS}) g")
        assert await chunk_rows(db, "t.named") == 2
        assert await chunk_rows(db, "t.wide60") == 1
        named = shapes(await read_all(db, "t.named"))
        named_rows = shapes(await read_all(db, "t.named_rows"))
        wide_before = shapes(await read_all(db, "t.wide60"))
        # Read field by field after the table changed: 61 columns in one row object.
        await db.execute("ALTER TABLE wide60 ADD COLUMN extra text")
        wide_after = shapes(await read_all(db, "t.wide60"))
    assert named == named_rows
    assert named[ROWS][2]["new"] == {"id": 1, "r": None, "volume": 3, "x": "x1", "n": 1}
    assert wide_after == wide_before
    assert len(wide_before[0][2]["new"]) == 61


async def test_a_composite_key_keeps_its_form_when_a_value_reads_as_text(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TYPE public.feel AS ENUM ('calm', 'loud')",
        "CREATE TABLE public.moods (region text, id int, at date, feel feel,"
        " PRIMARY KEY (region, id, at))",
        moods="t.moods",
    ) as db:
        await db.execute("SET DateStyle = 'German'")
        await db.execute(
            "INSERT INTO moods SELECT 'north', g, '2026-03-01'::date + g, 'loud'"
            f" FROM generate_series(1, {ROWS}) g"
        )
        await db.execute("RESET DateStyle")
        before = shapes(await read_all(db, "t.moods"))
        await db.execute("ALTER TYPE public.feel RENAME VALUE 'loud' TO 'noisy'")
        after = shapes(await read_all(db, "t.moods"))
    assert before[0][1] == '["north",1,"2026-03-02"]'
    assert after == before


async def test_an_idempotent_publish_behind_a_chunk_gets_its_position_after_it(
    database_url: str,
) -> None:
    async with captured(
        database_url,
        "CREATE TABLE public.ahead (id int PRIMARY KEY, n int NOT NULL)",
        ahead="t.ahead",
    ) as db:
        await log_queries.sequence_pending(db)
        head = await db.fetchval("SELECT last_pos FROM pgcast.log_state")
        await db.execute(f"INSERT INTO ahead SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        seqs = await log_queries.insert_events(db, [NewEvent("t.mine", b'"mine"')])
        (event,) = await log_queries.sequence_and_read(db, seqs, batch=1)
    assert (event.pos, event.data_json) == (head + ROWS + 1, b'"mine"')
