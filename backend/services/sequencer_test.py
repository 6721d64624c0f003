"""The background sequencer against a real database: a stream of SQL publishes shares runs,
and a wake-up after a quiet spell is served at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from backend.connectors.database import Connection, Pool, connect, open_pool
from backend.connectors.scratch import with_database
from backend.connectors.store.log import read_all_after
from backend.entities.event import Event
from backend.services.sequencer import HAND_BYTES, Sequencer

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


@dataclass
class Recorder:
    """A stand-in for the hub that records what the sequencer gives it."""

    handed: list[list[Event]] = field(default_factory=list)
    told: list[None] = field(default_factory=list)
    expecting: bool = False

    def hand_over(self, events: list[Event]) -> None:
        assert self.expecting
        self.handed.append(events)

    def wake(self) -> None:
        self.told.append(None)

    @contextmanager
    def expecting_hand_over(self) -> Iterator[None]:
        self.expecting = True
        try:
            yield
        finally:
            self.expecting = False


def _fields(event: Event) -> tuple[object, ...]:
    return (event.pos, event.topic, event.type, event.key, event.data_json, event.time)


def _busy_from_50(pool: Pool, *, max_interval: float, busy_lease: float) -> Sequencer:
    """Busy from 50 commits a second (one connection publishing in a loop is well above),
    with a slow poll of 10 s that no assertion here can be met by."""
    return Sequencer(
        pool,
        Recorder(),
        poll_interval=10,
        min_interval=0.01,
        max_interval=max_interval,
        busy_rate=50,
        busy_lease=busy_lease,
    )


async def _publish_for(conn: Connection, sequencer: Sequencer, seconds: float, topic: str) -> None:
    """SQL publishes in a loop, each followed by the wake-up its commit would send."""
    started = anyio.current_time()
    while anyio.current_time() - started < seconds:
        await conn.fetchval("SELECT pgcast.publish($1, '1')", topic)
        sequencer.wake()


def _track_acquires(pool: Pool) -> list[bool]:
    """One entry per connection `pool` hands out from now on (the real acquire still
    runs), True once it is given back."""
    given_back: list[bool] = []
    real_acquire = pool.acquire

    @asynccontextmanager
    async def tracked(*, live: bool = False, stateless: bool = False) -> AsyncIterator[Connection]:
        index = len(given_back)
        given_back.append(False)
        try:
            async with real_acquire(live=live, stateless=stateless) as conn:
                yield conn
        finally:
            given_back[index] = True

    pool.acquire = tracked  # type: ignore[method-assign]
    return given_back


async def _until_positioned(conn: Connection) -> None:
    while await conn.fetchval("SELECT count(*) FROM pgcast.events WHERE pos IS NULL"):
        await anyio.sleep(0.01)


async def test_a_stream_of_sql_publishes_shares_sequencer_runs(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, Recorder(), min_interval=0.05)
            tg.start_soon(sequencer.run)
            started = anyio.current_time()
            for n in range(100):  # each commit sends its wake-up, as pgcast_pending does
                await conn.fetchval("SELECT pgcast.publish('sql.stream', $1::jsonb)", str(n))
                sequencer.wake()
            with anyio.fail_after(10):
                await _until_positioned(conn)
            elapsed = anyio.current_time() - started
            tg.cancel_scope.cancel()
        assert sequencer.runs <= elapsed / 0.05 + 2
        assert sequencer.runs < 100
        positions = await conn.fetch(
            "SELECT pos FROM pgcast.events WHERE topic = 'sql.stream' ORDER BY seq"
        )
        assert [r["pos"] for r in positions] == list(range(1, 101))
    finally:
        await conn.close()


async def test_a_wake_up_after_a_quiet_spell_runs_at_once(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, Recorder(), min_interval=1.0)
            tg.start_soon(sequencer.run)
            for _ in range(2):  # the first run ever, then one after a quiet spell
                await conn.fetchval("SELECT pgcast.publish('sql.lone', '1')")
                started = anyio.current_time()
                sequencer.wake()
                with anyio.fail_after(5):
                    await _until_positioned(conn)
                assert anyio.current_time() - started < 0.8  # not held for min_interval
                await anyio.sleep(1.2)
            tg.cancel_scope.cancel()
    finally:
        await conn.close()


async def test_a_heavy_stream_spaces_runs_further_and_a_quiet_spell_resets(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(  # no lease: it would keep the runs going (tested below)
                pool, Recorder(), min_interval=0.01, max_interval=0.32, busy_rate=50, busy_lease=0
            )
            tg.start_soon(sequencer.run)
            started = anyio.current_time()
            while anyio.current_time() - started < 1.5:  # well over 50 commits per second
                await conn.fetchval("SELECT pgcast.publish('sql.heavy', '1')")
                sequencer.wake()
            assert sequencer.spacing == 0.32
            runs = sequencer.runs
            with anyio.fail_after(5):
                await _until_positioned(conn)
            assert runs < 20  # about 150 at the shortest spacing

            await anyio.sleep(0.5)  # quiet
            await conn.fetchval("SELECT pgcast.publish('sql.heavy', '1')")
            woken = anyio.current_time()
            sequencer.wake()
            with anyio.fail_after(5):
                await _until_positioned(conn)
            assert anyio.current_time() - woken < 0.25  # at once, not held for 320 ms
            assert sequencer.spacing == 0.01  # one event: back to the shortest
            tg.cancel_scope.cancel()
    finally:
        await conn.close()


async def test_a_stream_below_the_busy_rate_keeps_the_short_spacing(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, Recorder(), min_interval=0.01, busy_rate=1_000_000)
            tg.start_soon(sequencer.run)
            started = anyio.current_time()
            longest = 0.0
            while anyio.current_time() - started < 0.5:  # one connection: far below the rate
                await conn.fetchval("SELECT pgcast.publish('sql.steady', '1')")
                sequencer.wake()
                longest = max(longest, sequencer.spacing)
            tg.cancel_scope.cancel()
        assert sequencer.runs > 10
        assert longest == 0.01  # each run saw several events, but not a busy rate
        # Not busy: no lease, every publish still wakes the sequencer.
        assert await conn.fetchval("SELECT busy_until FROM pgcast.sequencer_lease") is None
    finally:
        await conn.close()


async def test_a_run_hands_over_what_it_stamped_and_a_backlog_is_left_to_reads(
    database_url: str,
) -> None:
    conn = await connect(database_url)
    try:
        recorder = Recorder()
        handed, told = recorder.handed, recorder.told
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, recorder, hand_limit=5)
            tg.start_soon(sequencer.run)
            for rows, expected_told in ((3, 0), (12, 1)):
                await conn.execute(
                    "SELECT pgcast.publish('sql.handed', to_jsonb(n))"
                    " FROM generate_series(1, $1::int) AS n",
                    rows,
                )
                sequencer.wake()
                with anyio.fail_after(5):
                    await _until_positioned(conn)
                    while len(told) < expected_told:
                        await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        logged = await read_all_after(conn, 0, 100)
    finally:
        await conn.close()
    # 3 rows: one run hands all three. 12 rows: the first 5 are handed, the other 7 are
    # stamped without coming back, and the hub is told to read them.
    assert [len(batch) for batch in handed] == [3, 5]
    assert told == [None]
    assert not recorder.expecting  # released after each run
    assert [event.data for event in handed[0] + handed[1]] == [1, 2, 3, 1, 2, 3, 4, 5]
    # Exactly as the hub would have read them.
    assert [_fields(e) for e in handed[0] + handed[1]] == [_fields(e) for e in logged[:8]]
    assert [event.pos for event in logged] == list(range(1, 16))


async def test_a_run_returns_no_more_than_its_byte_budget_and_leaves_the_rest_to_reads(
    database_url: str,
) -> None:
    """The position lock is held until the returned rows are sent, so large events are
    stamped but not all returned; the hub is told to read the rest."""
    conn = await connect(database_url)
    try:
        recorder = Recorder()
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(pool, recorder)
            await conn.execute(
                "SELECT pgcast.publish('sql.large',"
                " to_jsonb(string_agg(md5(n::text || i::text), '')))"
                " FROM generate_series(1, 5) AS n, generate_series(1, 3000) AS i GROUP BY n"
            )  # five events of 96 KB that do not compress, 480 KB in all
            tg.start_soon(sequencer.run)
            with anyio.fail_after(5):
                await _until_positioned(conn)
                while not recorder.told:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        logged = await read_all_after(conn, 0, 10)
    finally:
        await conn.close()
    (handed,) = recorder.handed
    assert 1 <= len(handed) <= HAND_BYTES // 96_000 + 1 < 5
    assert [_fields(e) for e in handed] == [_fields(e) for e in logged[: len(handed)]]
    assert recorder.told == [None]
    assert [e.pos for e in logged] == [1, 2, 3, 4, 5]


async def test_two_processes_space_their_runs_by_the_logs_growth_not_their_own_share(
    database_url: str,
) -> None:
    """Every process hears every wake-up and they split the stamping between them: each
    reads the rate from how far the log's head moved, so both space their runs."""
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=4) as pool, anyio.create_task_group() as tg:
            sequencers = [
                Sequencer(pool, Recorder(), min_interval=0.01, max_interval=0.16, busy_rate=50)
                for _ in range(2)
            ]
            for sequencer in sequencers:
                tg.start_soon(sequencer.run)
            started = anyio.current_time()
            while anyio.current_time() - started < 1.5:
                await conn.fetchval("SELECT pgcast.publish('sql.shared', '1')")
                for sequencer in sequencers:
                    sequencer.wake()
            tg.cancel_scope.cancel()
    finally:
        await conn.close()
    assert [s.spacing for s in sequencers] == [0.16, 0.16]


async def test_a_busy_log_is_polled_under_a_lease_and_a_late_commit_is_still_found(
    database_url: str,
) -> None:
    """Once the log is busy, SQL publishes send no wake-ups: the sequencer runs on its
    spacing while its lease lasts, then polls at growing intervals, which finds a
    transaction that published under the lease and committed after it (the slow poll is
    10 s here, so nothing else would)."""
    listener = await connect(database_url)
    conn = await connect(database_url)
    wake_ups: list[str] = []
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = _busy_from_50(pool, max_interval=0.04, busy_lease=0.3)
            tg.start_soon(sequencer.run)
            await _publish_for(conn, sequencer, 0.5, "sql.busy")
            lease_sql = "SELECT busy_until > clock_timestamp() FROM pgcast.sequencer_lease"
            assert await conn.fetchval(lease_sql)

            await listener.add_listener("pgcast_pending", lambda *_: wake_ups.append("x"))
            started = anyio.current_time()
            while anyio.current_time() - started < 0.5:  # no wake-ups from here on
                await conn.fetchval("SELECT pgcast.publish('sql.busy', '2')")
                await anyio.sleep(0.002)
            with anyio.fail_after(0.5):
                await _until_positioned(conn)
            assert await conn.fetchval(lease_sql)  # kept by the runs that stamped

            async with conn.transaction():
                await conn.fetchval("SELECT pgcast.publish('sql.busy', '3')")
                await anyio.sleep(0.6)  # the lease lapses before this commits
            assert not await conn.fetchval(lease_sql)
            with anyio.fail_after(1.5):
                await _until_positioned(conn)
            tg.cancel_scope.cancel()
        assert wake_ups == []
        positions = await conn.fetch("SELECT pos FROM pgcast.events ORDER BY seq")
        assert [r["pos"] for r in positions] == list(range(1, len(positions) + 1))
    finally:
        await listener.close()
        await conn.close()


async def test_a_busy_log_takes_a_lease_at_the_shortest_spacing_too(database_url: str) -> None:
    """SEQUENCER_MAX_SPACING_MS=2 keeps the spacing at its minimum; publishers still stop
    waking a sequencer that polls a busy log."""
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = Sequencer(
                pool, Recorder(), min_interval=0.01, max_interval=0.01, busy_rate=50, busy_lease=5
            )
            tg.start_soon(sequencer.run)
            started = anyio.current_time()
            while anyio.current_time() - started < 0.5:
                await conn.fetchval("SELECT pgcast.publish('sql.short', '1')")
                sequencer.wake()
            tg.cancel_scope.cancel()
        assert sequencer.busy
        assert await conn.fetchval(
            "SELECT busy_until > clock_timestamp() FROM pgcast.sequencer_lease"
        )
    finally:
        await conn.close()


async def test_polling_ends_soon_after_a_busy_stream_stops(database_url: str) -> None:
    """Runs that find nothing end the busy state: the process polls out its lease, then
    ever more rarely, instead of every spacing for good."""
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=2) as pool, anyio.create_task_group() as tg:
            sequencer = _busy_from_50(pool, max_interval=0.01, busy_lease=0.2)
            tg.start_soon(sequencer.run)
            await _publish_for(conn, sequencer, 0.5, "sql.stops")
            assert sequencer.busy
            await anyio.sleep(1.0)  # the lease (0.2 s) and the first growing polls
            runs = sequencer.runs
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        assert not sequencer.busy
        assert sequencer.runs - runs <= 2  # at 10 ms for good, this would be about 100
    finally:
        await conn.close()


@pytest.mark.parametrize(("size", "kept"), [(4, True), (2, False)])
async def test_busy_runs_keep_one_connection_while_the_pool_can_spare_it(
    database_url: str, size: int, kept: bool
) -> None:
    """Under its lease the sequencer only sleeps out the spacing between runs, so it keeps
    its connection rather than give it back and take it again every run, unless that
    would leave the general share without a free connection (a pool of 2 has one there
    and one in the live reserve). The connection goes back once the stream stops."""
    conn = await connect(database_url)
    try:
        async with open_pool(database_url, size=size) as pool, anyio.create_task_group() as tg:
            given_back = _track_acquires(pool)
            sequencer = _busy_from_50(pool, max_interval=0.01, busy_lease=0.3)
            tg.start_soon(sequencer.run)
            await _publish_for(conn, sequencer, 0.5, "sql.kept")
            assert sequencer.busy
            runs, taken = sequencer.runs, len(given_back)
            await _publish_for(conn, sequencer, 0.3, "sql.kept")
            assert sequencer.runs - runs >= 10
            if kept:
                assert len(given_back) - taken <= 1  # the busy state may have begun anew
            else:
                assert len(given_back) - taken >= sequencer.runs - runs - 1
            with anyio.fail_after(2):  # stopped: a run finds nothing and gives it back
                while sequencer.busy or not all(given_back):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        positions = await conn.fetch("SELECT pos FROM pgcast.events ORDER BY seq")
        assert [r["pos"] for r in positions] == list(range(1, len(positions) + 1))
    finally:
        await conn.close()


async def test_a_connection_that_cannot_be_had_is_asked_for_once_per_wake_up(
    database_url: str,
) -> None:
    """The database refuses new sessions and the pool's are gone: a wake-up costs one
    attempt, and the next waits for the next wake-up or poll (10 s here), not a loop."""
    conn = await connect(database_url)
    database = await conn.fetchval("SELECT current_database()")
    await conn.close()
    admin = await connect(with_database(database_url, "postgres"))
    try:
        async with open_pool(database_url, size=2) as pool:
            attempts = _track_acquires(pool)
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            await anyio.sleep(0.2)  # the pool's sessions see their end
            sequencer = Sequencer(pool, Recorder(), poll_interval=10, min_interval=0.01)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sequencer.run)
                sequencer.wake()
                await anyio.sleep(0.5)
                sequencer.wake()
                await anyio.sleep(0.5)
                tg.cancel_scope.cancel()
        assert sequencer.runs == 0
        assert 2 <= len(attempts) <= 3
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
