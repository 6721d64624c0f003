"""Property test: random interleavings of publish, commit, rollback, subscribe and resume.

Whatever the interleaving, every subscriber receives exactly the committed events after its
start point, in one order shared by all subscribers, with nothing missing or repeated.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import pytest
from anyio.abc import TaskGroup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.connectors.database import Connection, connect
from backend.connectors.store import log as log_queries
from backend.entities.event import Event, format_id
from backend.services.engine import Engine
from backend.testing import postgres
from backend.testing.engine import running_engine

pytestmark = pytest.mark.integrated

CONNECTIONS = 3
SUBSCRIBERS = 3

operation = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("commit"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("rollback"), st.integers(0, CONNECTIONS - 1)),
    st.tuples(st.just("start"), st.integers(0, SUBSCRIBERS - 1)),
    st.tuples(st.just("stop"), st.integers(0, SUBSCRIBERS - 1)),
    st.tuples(st.just("pause"), st.integers(0, 2)),
)


@dataclass
class Follower:
    """A subscriber that may disconnect and resume from the last id it saw."""

    received: list[Event] = field(default_factory=list)
    start_after: str | None = None
    scope: anyio.CancelScope | None = None

    async def follow(self, engine: Engine, topic: str, after: str) -> None:
        with anyio.CancelScope() as self.scope:
            async with engine.subscribe(topic, after=after) as events:
                async for event in events:
                    self.received.append(event)


@pytest.fixture(scope="module")
def shared_database() -> Iterator[str]:
    url = anyio.run(postgres.clone_template, "prop")
    yield url
    anyio.run(postgres.drop, url)


async def scenario(url: str, ops: list[tuple[str, int]]) -> None:
    topic = f"prop.{secrets.token_hex(4)}"
    conns: list[Connection] = [await connect(url) for _ in range(CONNECTIONS)]
    in_tx = [False] * CONNECTIONS
    pending: list[list[int]] = [[] for _ in range(CONNECTIONS)]
    committed: set[int] = set()
    followers = [Follower() for _ in range(SUBSCRIBERS)]
    counter = 0
    try:
        async with running_engine(url) as engine, anyio.create_task_group() as tg:
            for op, index in ops:
                counter += 1
                await apply(
                    op,
                    index,
                    counter,
                    engine,
                    topic,
                    tg,
                    conns,
                    in_tx,
                    pending,
                    committed,
                    followers,
                )
            for i in range(CONNECTIONS):
                if in_tx[i]:
                    await conns[i].execute("COMMIT")
                    committed.update(pending[i])
            log = await read_log(engine, topic)
            assert {data for _, data in log} == committed
            assert all(pos is not None for pos, _ in log)
            last = log[-1][0] if log else 0
            with anyio.fail_after(10):
                for f in followers:
                    if f.scope is not None and not f.scope.cancel_called:
                        while (f.received[-1].pos if f.received else 0) < last:
                            await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        for f in followers:
            check_follower(f, log)
    finally:
        for conn in conns:
            await conn.close()


async def apply(
    op: str,
    index: int,
    counter: int,
    engine: Engine,
    topic: str,
    tg: TaskGroup,
    conns: list[Connection],
    in_tx: list[bool],
    pending: list[list[int]],
    committed: set[int],
    followers: list[Follower],
) -> None:
    if op == "publish":
        if not in_tx[index]:
            await conns[index].execute("BEGIN")
            in_tx[index] = True
        await conns[index].execute("SELECT pgcast.publish($1, $2::jsonb)", topic, counter)
        pending[index].append(counter)
    elif op in ("commit", "rollback") and in_tx[index]:
        await conns[index].execute(op.upper())
        in_tx[index] = False
        if op == "commit":
            committed.update(pending[index])
        pending[index] = []
    elif op == "start":
        f = followers[index]
        if f.scope is None or f.scope.cancel_called:
            after = f.received[-1].id if f.received else "earliest"
            if f.start_after is None:
                f.start_after = after
            tg.start_soon(f.follow, engine, topic, after)
            await anyio.sleep(0.01)
    elif op == "stop":
        f = followers[index]
        if f.scope is not None:
            f.scope.cancel()
    elif op == "pause":
        await anyio.sleep(0.02 * index)


async def read_log(engine: Engine, topic: str) -> list[tuple[int, int]]:
    """The log itself, the source of truth: (position, data) of every committed event."""
    async with engine.pool.acquire() as conn:
        await log_queries.sequence_pending(conn)
        rows = await conn.fetch(
            "SELECT pos, data FROM pgcast.events WHERE topic = $1 ORDER BY pos", topic
        )
    return [(r["pos"], r["data"]) for r in rows]


def check_follower(f: Follower, log: list[tuple[int, int]]) -> None:
    if f.start_after is None:
        return
    ids = [e.id for e in f.received]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids == sorted(ids), "events arrived out of order"
    start = 0 if f.start_after == "earliest" else int(f.start_after)
    expected = [format_id(pos) for pos, _ in log if pos > start]
    assert ids == expected[: len(ids)], "a committed event is missing"
    if f.scope is not None and not f.scope.cancel_called:
        assert ids == expected


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, min_size=1, max_size=30))
def test_every_subscriber_gets_exactly_the_committed_events_in_one_order(
    shared_database: str, ops: list[tuple[str, int]]
) -> None:
    anyio.run(scenario, shared_database, ops)
