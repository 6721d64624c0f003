"""Table change capture against a real Postgres: event shapes, big statements, ordering."""

from __future__ import annotations

import time

import pytest

from backend.connectors.database import open_pool
from backend.connectors.store import log as log_queries
from backend.core.errors import CaptureError, ConfigError
from backend.services.capture import add_capture, list_captures, reconcile, remove_capture
from backend.testing.engine import nothing_within, running_engine, take
from backend.testing.tables import database

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

ORDERS = "db.public.orders"


CREATE_ORDERS = (
    "CREATE TABLE public.orders (id int PRIMARY KEY, status text NOT NULL, total numeric,"
    " tags jsonb)"
)


async def test_insert_update_delete_truncate_shapes(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        captured = await add_capture(engine.pool, "public.orders")
        assert captured.as_json() == {"table": "public.orders", "topic": ORDERS, "columns": None}
        async with engine.subscribe(ORDERS, after="latest") as events:
            await db.execute(
                "INSERT INTO orders VALUES (2, 'new', 5, '[1]'), (1, 'new', 10.5, NULL)"
            )
            await db.execute("UPDATE orders SET status = 'paid', tags = '{\"a\": 1}' WHERE id = 1")
            await db.execute("UPDATE orders SET status = status")
            await db.execute("DELETE FROM orders WHERE id = 2")
            await db.execute("UPDATE orders SET status = 'none' WHERE id = 99")  # no rows: no event
            await db.execute("TRUNCATE orders")
            got = await take(events, 7)
            assert await nothing_within(events, 0.3)

    one_new = {"id": 1, "status": "new", "total": 10.5, "tags": None}
    one_paid = {"id": 1, "status": "paid", "total": 10.5, "tags": {"a": 1}}
    two = {"id": 2, "status": "new", "total": 5, "tags": [1]}
    assert [(e.topic, e.type, e.key) for e in got] == [
        (ORDERS, "insert", "1"),  # ordered by primary key within a statement
        (ORDERS, "insert", "2"),
        (ORDERS, "update", "1"),
        (ORDERS, "update", "1"),  # every row a statement touches, even if nothing changed
        (ORDERS, "update", "2"),
        (ORDERS, "delete", "2"),
        (ORDERS, "truncate", None),
    ]
    assert got[0].data == {"new": one_new, "old": None}
    assert got[1].data == {"new": two, "old": None}
    assert got[2].data == {"new": one_paid, "old": one_new, "changed": ["status", "tags"]}
    assert got[3].data == {"new": one_paid, "old": one_paid, "changed": []}
    assert got[4].data == {"new": two, "old": two, "changed": []}
    assert got[5].data == {"new": None, "old": two}
    assert got[6].data == {"new": None, "old": None}
    assert [e.pos for e in got] == sorted(e.pos for e in got)


async def test_composite_key_column_limits_and_custom_topic(database_url: str) -> None:
    ddl = (
        "CREATE TABLE public.lines (order_id text, line int, qty int, secret text,"
        " PRIMARY KEY (order_id, line))"
    )
    async with database(database_url, ddl) as db, running_engine(database_url) as engine:
        captured = await add_capture(
            engine.pool, "lines", topic="shop.lines", columns=["line", "qty", "line"]
        )
        assert captured.as_json() == {
            "table": "public.lines",
            "topic": "shop.lines",
            "columns": ["line", "qty"],
        }
        async with engine.subscribe("shop.lines", after="latest") as events:
            await db.execute("INSERT INTO lines VALUES ('a', 1, 2, 's'), ('a\"b', 2, 1, 's')")
            await db.execute("UPDATE lines SET qty = qty + 1, secret = 'x' WHERE line = 1")
            await db.execute("UPDATE lines SET secret = 'y' WHERE line = 1")
            await db.execute("DELETE FROM lines WHERE line = 2")
            got = await take(events, 5)
    assert [(e.type, e.key) for e in got] == [
        ("insert", '["a",1]'),
        ("insert", '["a\\"b",2]'),
        ("update", '["a",1]'),
        ("update", '["a",1]'),
        ("delete", '["a\\"b",2]'),
    ]
    assert got[0].data == {"new": {"line": 1, "qty": 2}, "old": None}
    assert got[2].data == {
        "new": {"line": 1, "qty": 3},
        "old": {"line": 1, "qty": 2},
        "changed": ["qty"],  # `secret` changed too, but it is not captured
    }
    assert got[3].data["changed"] == []
    assert got[4].data == {"new": None, "old": {"line": 2, "qty": 1}}


async def test_identifiers_are_quoted(database_url: str) -> None:
    ddl = 'CREATE TABLE public."User" ("select" int PRIMARY KEY, "Order" text, "r" int)'
    async with database(database_url, ddl) as db, running_engine(database_url) as engine:
        await add_capture(engine.pool, "public.User", columns=["select", "r"])
        async with engine.subscribe("db.public.User", after="latest") as events:
            await db.execute("INSERT INTO \"User\" VALUES (1, 'x', 2)")
            await db.execute('UPDATE "User" SET r = 3')
            got = await take(events, 2)
    assert [(e.type, e.key) for e in got] == [("insert", "1"), ("update", "1")]
    assert got[1].data == {
        "new": {"select": 1, "r": 3},
        "old": {"select": 1, "r": 2},
        "changed": ["r"],
    }


async def test_a_primary_key_change_is_a_delete_and_an_insert(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await db.execute("INSERT INTO orders VALUES (1, 'a', 1, NULL), (2, 'b', 2, NULL)")
        await add_capture(engine.pool, "public.orders", columns=["id", "status"])
        async with engine.subscribe(ORDERS, after="latest") as events:
            await db.execute("UPDATE orders SET id = id + 10, status = 'moved' WHERE id = 1")
            got = await take(events, 2)
    assert [(e.type, e.key, e.data) for e in got] == [
        ("delete", "1", {"new": None, "old": {"id": 1, "status": "a"}}),
        ("insert", "11", {"new": {"id": 11, "status": "moved"}, "old": None}),
    ]


async def test_changed_compares_the_columns_as_json_values(database_url: str) -> None:
    ddl = "CREATE TABLE public.shapes (id int PRIMARY KEY, doc json, spot point, amount numeric)"
    async with database(database_url, ddl) as db, running_engine(database_url) as engine:
        await db.execute("""INSERT INTO shapes VALUES (1, '{"a":1}', '(1,2)', 1.0)""")
        await add_capture(engine.pool, "public.shapes")
        async with engine.subscribe("db.public.shapes", after="latest") as events:
            # Equal as JSON: other spacing, more trailing zeros. json and point have no
            # equality operator, so only their JSON values can be compared.
            await db.execute("""UPDATE shapes SET doc = '{"a": 1}', amount = 1.00""")
            await db.execute("UPDATE shapes SET doc = 'null'")  # JSON null, as SQL NULL shows
            await db.execute("UPDATE shapes SET doc = NULL, spot = '(1,3)'")
            await db.execute("UPDATE shapes SET amount = NULL")
            got = await take(events, 4)
    assert [e.data["changed"] for e in got] == [[], ["doc"], ["spot"], ["amount"]]


async def test_a_100k_row_update_is_captured_completely_in_one_statement(
    database_url: str,
) -> None:
    rows = 100_000
    async with (
        database(
            database_url,
            "CREATE TABLE public.big (id bigint PRIMARY KEY, n int NOT NULL, label text)",
            f"INSERT INTO big SELECT g, 0, 'row ' || g FROM generate_series(1, {rows}) AS g",
        ) as db,
        open_pool(database_url, size=2) as pool,
    ):
        await add_capture(pool, "public.big")
        # A statement this large is stored as chunks of rows (migration 0012), read back
        # through pgcast.log; a tiny work_mem must not matter.
        await db.execute("SET work_mem = '64kB'")
        started = time.monotonic()
        status = await db.execute("UPDATE big SET n = n + 1")
        elapsed = time.monotonic() - started
        assert status == f"UPDATE {rows}"
        await log_queries.sequence_pending(db)
        counts = await db.fetchrow(
            """
            SELECT count(*) AS events, count(DISTINCT key) AS keys, count(pos) AS positioned,
                   count(*) FILTER (WHERE data->'changed' = '["n"]'
                                      AND (data->'new'->>'n')::int = 1
                                      AND (data->'old'->>'n')::int = 0) AS well_formed
              FROM pgcast.log WHERE topic = 'db.public.big' AND type = 'update'
            """
        )
    assert counts is not None
    assert dict(counts) == {"events": rows, "keys": rows, "positioned": rows, "well_formed": rows}
    assert elapsed < 10, f"the captured update took {elapsed:.1f} s"


async def test_a_rolled_back_transaction_yields_nothing(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.orders")
        async with engine.subscribe(ORDERS, after="latest") as events:
            tx = db.transaction()
            await tx.start()
            await db.execute("INSERT INTO orders VALUES (1, 'never', 1, NULL)")
            await db.execute("TRUNCATE orders")
            await tx.rollback()
            await db.execute("INSERT INTO orders VALUES (2, 'kept', 1, NULL)")
            (event,) = await take(events, 1)
            assert (event.type, event.key) == ("insert", "2")
            assert await nothing_within(events, 0.3)
        assert await db.fetchval("SELECT count(*) FROM pgcast.events") == 1


async def test_capture_survives_added_dropped_and_renamed_columns(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.orders")
        async with engine.subscribe(ORDERS, after="latest") as events:
            await db.execute("ALTER TABLE orders ADD COLUMN note text DEFAULT 'n'")
            await db.execute("INSERT INTO orders (id, status) VALUES (1, 'a')")
            await db.execute("ALTER TABLE orders DROP COLUMN tags, DROP COLUMN total")
            await db.execute("UPDATE orders SET note = 'm'")
            await db.execute("ALTER TABLE orders RENAME COLUMN id TO order_id")
            await db.execute("DELETE FROM orders")
            got = await take(events, 3)
    assert [(e.type, e.key) for e in got] == [("insert", "1"), ("update", "1"), ("delete", "1")]
    assert got[0].data["new"] == {"id": 1, "status": "a", "total": None, "tags": None, "note": "n"}
    assert got[1].data == {
        "new": {"id": 1, "status": "a", "note": "m"},
        "old": {"id": 1, "status": "a", "note": "n"},
        "changed": ["note"],
    }
    assert got[2].data == {"new": None, "old": {"order_id": 1, "status": "a", "note": "m"}}


async def test_dropping_a_captured_column_keeps_the_rows_objects(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.orders", columns=["id", "total"])
        async with engine.subscribe(ORDERS, after="latest") as events:
            await db.execute("ALTER TABLE orders DROP COLUMN total")
            await db.execute("INSERT INTO orders VALUES (1, 'a', NULL)")
            await db.execute("UPDATE orders SET status = 'b'")
            got = await take(events, 2)
    assert got[0].data == {"new": {"id": 1}, "old": None}
    assert got[1].data == {"new": {"id": 1}, "old": {"id": 1}, "changed": []}


async def test_add_is_idempotent_and_updates_topic_and_columns(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.orders")
        await add_capture(engine.pool, "public.orders")
        assert [c.as_json() for c in await list_captures(engine.pool)] == [
            {"table": "public.orders", "topic": ORDERS, "columns": None}
        ]
        async with engine.subscribe(["db.>", "shop.>"], after="latest") as events:
            await db.execute("INSERT INTO orders VALUES (1, 'a', 1, NULL)")
            (first,) = await take(events, 1)
            assert (first.topic, first.key) == (ORDERS, "1")
            await add_capture(engine.pool, "public.orders", topic="shop.orders", columns=["id"])
            await db.execute("INSERT INTO orders VALUES (2, 'b', 2, NULL)")
            (second,) = await take(events, 1)
            assert (second.topic, second.data) == ("shop.orders", {"new": {"id": 2}, "old": None})
            assert await nothing_within(events, 0.3)
        (listed,) = await list_captures(engine.pool)
        assert listed.as_json() == {
            "table": "public.orders",
            "topic": "shop.orders",
            "columns": ["id"],
        }
        assert listed.key == ("id",)
        triggers = await db.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass"
        )
        assert triggers == 4


async def test_remove_stops_capture_and_is_idempotent(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.orders")
        assert await remove_capture(engine.pool, "public.orders") is True
        assert await remove_capture(engine.pool, "public.orders") is False
        assert await remove_capture(engine.pool, "public.missing") is False
        assert await list_captures(engine.pool) == []
        async with engine.subscribe(ORDERS, after="latest") as events:
            await db.execute("INSERT INTO orders VALUES (1, 'a', 1, NULL)")
            await engine.publish(ORDERS, "marker")
            (event,) = await take(events, 1)
        assert event.data == "marker"


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        ("public.missing", {}, "table public.missing does not exist"),
        ("public.order_view", {}, "public.order_view is a view: only ordinary and partitioned"),
        ("public.keyless", {}, "table public.keyless has no primary key"),
        ("public.part_1", {}, "table public.part_1 is a partition: capture its partitioned"),
        (
            "public.orders",
            {"columns": ["id", "nope"]},
            "table public.orders has no column(s) 'nope'",
        ),
        ("public.orders", {"columns": []}, "table public.orders: columns must name at least one"),
        ("public.orders", {"columns": "id"}, "table public.orders: columns must be a list"),
        ("public.orders", {"topic": "bad topic"}, "table public.orders: invalid topic 'bad topic'"),
        ("public.we$ird", {}, "table public.we$ird: cannot use 'db.public.we$ird' as its topic"),
        ("a.b.c", {}, "invalid table 'a.b.c': expected schema.table"),
        ('public."orders"', {}, "invalid table 'public.\"orders\"'"),
        ("pgcast.events", {}, "table pgcast.events is in the pgcast schema"),
        (42, {}, "the table must be a string"),
    ],
)
async def test_bad_targets_raise_typed_errors_naming_the_table(
    database_url: str, table: object, options: dict[str, object], message: str
) -> None:
    async with (
        database(
            database_url,
            CREATE_ORDERS,
            "CREATE VIEW public.order_view AS SELECT * FROM orders",
            "CREATE TABLE public.keyless (a int)",
            'CREATE TABLE public."we$ird" (id int PRIMARY KEY)',
            "CREATE TABLE public.part (id int PRIMARY KEY) PARTITION BY RANGE (id)",
            "CREATE TABLE public.part_1 PARTITION OF part FOR VALUES FROM (0) TO (10)",
        ) as db,
        open_pool(database_url, size=1) as pool,
    ):
        with pytest.raises(CaptureError) as caught:
            await add_capture(pool, table, **options)
        assert message in caught.value.message
        assert caught.value.code == "invalid_capture_target"
        assert await db.fetchval("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
        # The pool's only connection came back clean.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1


async def test_partitioned_tables_are_captured_through_the_parent(database_url: str) -> None:
    async with (
        database(
            database_url,
            "CREATE TABLE public.part (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)",
            "CREATE TABLE public.part_1 PARTITION OF part FOR VALUES FROM (0) TO (10)",
            "CREATE TABLE public.part_2 PARTITION OF part FOR VALUES FROM (10) TO (20)",
        ) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.part")
        async with engine.subscribe("db.public.part", after="latest") as events:
            await db.execute("INSERT INTO part VALUES (15, 'b'), (5, 'a')")
            await db.execute("UPDATE part SET v = v || '!'")
            got = await take(events, 4)
    assert [(e.type, e.key) for e in got] == [
        ("insert", "5"),
        ("insert", "15"),
        ("update", "5"),
        ("update", "15"),
    ]
    assert got[3].data["new"] == {"id": 15, "v": "b!"}


async def test_captured_changes_are_ordered_with_other_events(database_url: str) -> None:
    async with (
        database(database_url, CREATE_ORDERS) as db,
        running_engine(database_url) as engine,
    ):
        await add_capture(engine.pool, "public.orders")
        async with engine.subscribe([ORDERS, "marks"], after="latest") as events:
            before = await engine.publish("marks", "before")
            await db.execute("INSERT INTO orders VALUES (1, 'a', 1, NULL), (2, 'b', 2, NULL)")
            await db.execute("SELECT pgcast.publish('marks', '\"after\"'::jsonb)")
            got = await take(events, 4)
    assert [(e.topic, e.type, e.key) for e in got] == [
        ("marks", None, None),
        (ORDERS, "insert", "1"),
        (ORDERS, "insert", "2"),
        ("marks", None, None),
    ]
    assert got[0].id == before.id
    assert got[3].data == "after"
    assert [e.pos for e in got] == sorted(e.pos for e in got)
    assert len({e.pos for e in got}) == 4


async def test_capture_tables_are_reconciled_when_the_engine_starts(database_url: str) -> None:
    async with database(
        database_url,
        CREATE_ORDERS,
        "CREATE TABLE public.users (id int PRIMARY KEY, name text)",
        "CREATE TABLE public.other (id int PRIMARY KEY)",
    ) as db:
        async with open_pool(database_url, size=1) as pool:
            await add_capture(pool, "public.orders", topic="shop.orders")
            await add_capture(pool, "public.other")
        settings = {"capture_tables": " public.orders , users,"}
        async with running_engine(database_url, **settings) as engine:
            captures = [c.as_json() for c in await list_captures(engine.pool)]
            async with engine.subscribe("db.public.users", after="latest") as events:
                await db.execute("INSERT INTO users VALUES (7, 'ann')")
                (event,) = await take(events, 1)
        assert captures == [
            # Already captured: its topic, set through the API, is kept.
            {"table": "public.orders", "topic": "shop.orders", "columns": None},
            # Not listed: left alone.
            {"table": "public.other", "topic": "db.public.other", "columns": None},
            {"table": "public.users", "topic": "db.public.users", "columns": None},
        ]
        assert event.data == {"new": {"id": 7, "name": "ann"}, "old": None}


async def test_a_bad_capture_tables_entry_is_a_config_error(database_url: str) -> None:
    """(`pgcast serve` refusing to start on it is in interface/http_capture_test.py.)"""
    async with open_pool(database_url, size=1) as pool:
        assert await reconcile(pool, " , ") == []
        with pytest.raises(ConfigError, match=r"^CAPTURE_TABLES: table public.nope does not"):
            await reconcile(pool, "public.nope")
        with pytest.raises(ConfigError, match=r"^CAPTURE_TABLES: invalid table 'a.b.c'"):
            await reconcile(pool, ["a.b.c"])
        assert await list_captures(pool) == []
