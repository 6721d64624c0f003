"""`Pool.prefill` runs in the background of the engine's start: whatever the database does
meanwhile, it must not raise, strand connections, outlive a shutdown, or keep requests
waiting on connections that sit idle."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager

import anyio
import anyio.lowlevel
import pytest

from backend.connectors.database import Connection, Pool, connect, open_pool
from backend.core.errors import DatabaseUnavailable

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """This server backend stops answering (a hung server, a partitioned network) for the
    block; it always runs on afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class GatedWarm:
    """The pool's warm-up: records each new connection's backend, and holds every one after
    the first (the one `open_pool` makes) until `gate` is set."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.gate = anyio.Event()

    async def __call__(self, conn: Connection) -> None:
        self.pids.append(conn.get_server_pid())
        if len(self.pids) > 1:
            await self.gate.wait()

    async def opening(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.pids) < count:
                await anyio.sleep(0.01)


async def can_hold_all(pool: Pool, size: int = 3) -> bool:
    """Whether all `size` connections of the pool (every test here has 3, none kept for
    the live path) can be had at once."""
    try:
        async with AsyncExitStack() as held:
            for _ in range(size):
                await held.enter_async_context(pool.acquire())
    except DatabaseUnavailable:
        return False
    return True


async def test_a_connection_the_server_ends_while_prefill_holds_it_is_given_back_quietly(
    database_url: str,
) -> None:
    warm = GatedWarm()
    admin = await connect(database_url)
    outcome: list[BaseException | None] = []

    async def run(pool: Pool) -> None:
        try:
            await pool.prefill()
        except Exception as exc:  # noqa: BLE001 - what the engine's task group would get
            outcome.append(exc)
        else:
            outcome.append(None)

    try:
        async with open_pool(
            database_url, size=3, live_reserve=0, acquire_timeout=5, warm=warm
        ) as pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, pool)
                await warm.opening(3)  # holds the first connection, opens two more
                first = warm.pids[0]
                await admin.execute("SELECT pg_terminate_backend($1)", first)
                await anyio.sleep(0.2)
                warm.gate.set()
            assert outcome == [None]
            assert await can_hold_all(pool)
    finally:
        await admin.close()


async def test_a_shutdown_during_prefill_ends_it_at_once_though_a_backend_hangs(
    database_url: str,
) -> None:
    """Its connections go back without a reset round trip, so a backend that stops
    answering does not hold the engine's shutdown."""
    warm = GatedWarm()
    finished = anyio.Event()
    scope = anyio.CancelScope()

    async def run(pool: Pool) -> None:
        try:
            with scope:
                await pool.prefill()
        finally:
            finished.set()

    async with (
        open_pool(database_url, size=3, live_reserve=0, acquire_timeout=5, warm=warm) as pool,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(run, pool)
        await warm.opening(3)
        with stopped(warm.pids[0]):  # the connection prefill holds, idle
            scope.cancel()  # what Engine.open's `tg.cancel_scope.cancel()` does
            with anyio.move_on_after(1):
                await finished.wait()
            assert finished.is_set(), "prefill did not end within 1 s of its cancellation"


async def test_prefill_never_waits_for_a_busy_connection(database_url: str) -> None:
    async with (
        open_pool(database_url, size=3, live_reserve=1, acquire_timeout=3) as pool,
        pool.acquire(),  # a long statement holds one of the two general connections
    ):
        with anyio.fail_after(1):
            await pool.prefill()
        started = anyio.current_time()
        async with pool.acquire(live=True) as conn:  # the hub's read, a publish
            await conn.fetchval("SELECT 1")
        assert anyio.current_time() - started < 0.5


async def test_prefill_gives_back_every_connection_though_the_loop_stalls_meanwhile(
    database_url: str,
) -> None:
    async with open_pool(database_url, size=3, live_reserve=0, acquire_timeout=1) as pool:

        async def stall_during_give_back() -> None:
            with anyio.fail_after(5):
                while not pool._stateless:  # prefill has begun giving its connections back
                    await anyio.lowlevel.checkpoint()
            time.sleep(1.1)  # noqa: ASYNC251 - the point: CPU-bound work, a GC pause

        # The stall outlasts prefill's 1 s bound on giving back: whatever it had not given
        # back by then is closed, not left checked out of the driver.
        async with anyio.create_task_group() as tg:
            tg.start_soon(stall_during_give_back)
            await pool.prefill()
        assert await can_hold_all(pool)
