"""The pool's contract: bounded acquires, a live reserve, and only lost connections reported
as DatabaseUnavailable."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import asyncpg
import pytest

from backend.connectors import database
from backend.connectors.database import Connection, Pool, connect, open_pool
from backend.core.concurrency import unwrap_single_error
from backend.core.errors import DatabaseUnavailable
from backend.testing.statements import logged_pool

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def _hold(stack: AsyncExitStack, acquire: object, count: int) -> None:
    for _ in range(count):
        await stack.enter_async_context(acquire())  # type: ignore[operator]


async def test_a_full_general_share_times_out_but_the_live_reserve_answers(
    database_url: str,
) -> None:
    async with (
        open_pool(database_url, size=3, acquire_timeout=0.3, live_reserve=1) as pool,
        AsyncExitStack() as held,
    ):
        await _hold(held, pool.acquire, 2)
        started = anyio.current_time()
        with pytest.raises(DatabaseUnavailable) as caught:
            async with pool.acquire():
                pass
        assert 0.25 < anyio.current_time() - started < 2
        assert "acquire timeout" in caught.value.message
        with pytest.raises(DatabaseUnavailable):
            await pool.ping()
        async with pool.acquire(live=True) as conn:
            assert await conn.fetchval("SELECT 1") == 1


async def test_the_live_path_takes_general_connections_first(database_url: str) -> None:
    async with (
        open_pool(database_url, size=3, acquire_timeout=0.3, live_reserve=1) as pool,
        AsyncExitStack() as held,
    ):
        # Both general connections go to the live path while they are free...
        await _hold(held, lambda: pool.acquire(live=True), 2)
        with pytest.raises(DatabaseUnavailable):
            async with pool.acquire():
                pass
        # ...and the reserve is still there for it.
        await _hold(held, lambda: pool.acquire(live=True), 1)
        with pytest.raises(DatabaseUnavailable):
            async with pool.acquire(live=True):
                pass


async def test_errors_that_are_not_a_lost_connection_pass_through(database_url: str) -> None:
    async with open_pool(database_url, size=1) as pool:
        with pytest.raises(OSError, match="not the database"):
            async with pool.acquire():
                raise OSError("not the database")
        with pytest.raises(TimeoutError):
            async with pool.acquire():
                raise TimeoutError
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            async with pool.acquire() as conn:
                await conn.execute("SELECT * FROM no_such_table")
        async with pool.transaction() as conn:
            assert await conn.fetchval("SELECT 3") == 3
        await pool.ping()


async def _query_after_termination(pool: Pool, admin: Connection) -> None:
    async with pool.acquire() as conn:
        await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await conn.fetchval("SELECT 1")


async def _terminate_the_sleeper(admin: Connection) -> None:
    with anyio.fail_after(5):
        while not await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query = 'SELECT pg_sleep(30)' AND datname = current_database()"
        ):
            await anyio.sleep(0.02)


async def _terminated_mid_statement(pool: Pool, admin: Connection) -> None:
    with unwrap_single_error():
        async with anyio.create_task_group() as tg:
            tg.start_soon(_terminate_the_sleeper, admin)
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_sleep(30)")


async def test_a_connection_dropped_mid_block_is_database_unavailable(database_url: str) -> None:
    admin = await connect(database_url)
    try:
        async with open_pool(database_url, size=1) as pool:
            # Used after the server ended it (asyncpg reports this in more than one way)...
            for _ in range(10):
                with pytest.raises(DatabaseUnavailable):
                    await _query_after_termination(pool, admin)
            # ...or ended while a statement runs.
            with pytest.raises(DatabaseUnavailable):
                await _terminated_mid_statement(pool, admin)
            # The pool replaces the dead connection.
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 4") == 4
    finally:
        await admin.close()


async def test_a_refused_connection_is_database_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://pgcast@127.0.0.1:{port}/pgcast"
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        await connect(url, connect_timeout=2)
    with pytest.raises(DatabaseUnavailable, match="cannot connect"):
        async with open_pool(url, size=1):
            pass


async def test_a_stateless_block_skips_the_reset_and_any_other_block_gets_it(
    database_url: str,
) -> None:
    async with logged_pool(database_url) as (pool, statements, reset):
        async with pool.acquire(stateless=True) as conn:
            await conn.fetchval("SELECT 1")
        assert statements == ["SELECT 1"]
        statements.clear()
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 2")
        assert statements == ["SELECT 2", reset]
        statements.clear()
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            async with pool.acquire(stateless=True) as conn:
                await conn.execute("SELECT * FROM no_such_table")
        assert statements[-1] == reset  # a block that failed is reset all the same


async def test_a_stateless_block_that_left_a_transaction_open_is_rolled_back(
    database_url: str,
) -> None:
    async with open_pool(database_url, size=1, live_reserve=0) as pool:
        async with pool.acquire(stateless=True) as conn:
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL application_name = 'left-open'")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW application_name") == "pgcast"


async def test_prefill_opens_the_general_share_each_connection_warmed_once(
    database_url: str,
) -> None:
    warmed: list[int] = []

    async def warm(conn: Connection) -> None:
        warmed.append(conn.get_server_pid())

    async with open_pool(database_url, size=4, live_reserve=1, warm=warm) as pool:
        await pool.prefill()
        assert len(set(warmed)) == 3  # the general share; the live reserve opens on demand
        async with AsyncExitStack() as held:
            pids = set()
            for _ in range(3):
                conn = await held.enter_async_context(pool.acquire())
                pids.add(conn.get_server_pid())
            assert pids == set(warmed)
        assert len(warmed) == 3


async def test_prefill_is_best_effort_and_leaves_the_pool_working(database_url: str) -> None:
    calls = 0

    async def warm(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the pool's first connection opens; every later one fails
            raise ConnectionRefusedError("no more connections")

    async with open_pool(
        database_url, size=3, live_reserve=0, acquire_timeout=2, warm=warm
    ) as pool:
        await pool.prefill()  # returns without raising
        assert calls > 1
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("block", ["commits", "fails"])
async def test_a_reset_that_finds_the_connection_broken_leaves_the_blocks_outcome(
    database_url: str, monkeypatch: pytest.MonkeyPatch, block: str
) -> None:
    """As when PostgreSQL restarts: the driver's reset finds the connection still busy
    with a statement the block abandoned, closes it and raises. Seen in the restart fault
    scenario as a 500 for a publish that should have been a 503."""

    def broken_reset(_stateless: set[int]) -> Callable[[Connection], Awaitable[None]]:
        async def reset(conn: Connection) -> None:
            conn.terminate()
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )

        return reset

    monkeypatch.setattr(database, "_reset_unless", broken_reset)
    async with open_pool(database_url, size=1, live_reserve=0) as pool:
        if block == "commits":
            async with pool.acquire() as conn:
                await conn.execute("CREATE TABLE kept (n int)")
        else:
            with pytest.raises(DatabaseUnavailable, match="the block's own"):
                async with pool.acquire():
                    raise DatabaseUnavailable("the block's own")
    admin = await connect(database_url)
    try:
        kept = await admin.fetchval("SELECT to_regclass('kept') IS NOT NULL")
    finally:
        await admin.close()
    assert kept == (block == "commits")
