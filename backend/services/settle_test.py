"""Acks and nacks from many consumers share commits, each still fenced on its own lease."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from backend.connectors.store.queues import Moved
from backend.core.errors import Conflict, NotFound
from backend.services.settle import Retry, Settle, SettleBatcher, Settled
from backend.testing.engine import running_engine, take

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_concurrent_acks_share_commits_and_a_stale_one_is_refused(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("acks", i) for i in range(50)])
        claimed = await queues.claim("acks", 50, 60)
        commits: list[int] = []
        real = queues.settlements.commit

        async def counted(settles: Sequence[Settle]) -> Settled:
            commits.append(len(settles))
            return await real(settles)

        queues.settlements = SettleBatcher(counted)
        refused: list[BaseException] = []

        async def stale() -> None:
            try:
                await queues.ack("acks", claimed[0].id, "not-the-lease")
            except Conflict as exc:
                refused.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stale)
                for message in claimed:
                    assert message.lease is not None
                    tg.start_soon(queues.ack, "acks", message.id, message.lease)
        (stats,) = await queues.stats("acks")
    assert (stats.ready, stats.leased) == (0, 0)
    assert len(refused) == 1
    assert sum(commits) == 51
    assert len(commits) < 10, f"{len(commits)} commits for 51 concurrent acks"


async def test_an_ack_cancelled_before_a_commit_took_it_is_not_applied(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("cancel", i) for i in range(4)])
        *others, last = await queues.claim("cancel", 4, 60)
        assert last.lease is not None
        release = anyio.Event()
        real = queues.settlements.commit

        async def held_back(settles: Sequence[Settle]) -> Settled:
            await release.wait()
            return await real(settles)

        queues.settlements = SettleBatcher(held_back)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for message in others:
                    assert message.lease is not None
                    tg.start_soon(queues.ack, "cancel", message.id, message.lease)
                await anyio.sleep(0.05)  # two commits in flight, the third ack waits
                with anyio.CancelScope() as waiting:
                    waiting.cancel()
                    await queues.ack("cancel", last.id, last.lease)
                release.set()
        assert await queues.still_leased([m.lease for m in others if m.lease]) == set()
        assert await queues.still_leased([last.lease]) == {last.lease}


async def test_acks_and_nacks_in_one_call_commit_together_and_each_gets_its_outcome(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("mixed", i, max_attempts=1 + i % 2) for i in range(4)])
        claimed = await queues.claim("mixed", 4, 60)
        leases = [m.lease for m in claimed]
        assert None not in leases
        commits: list[int] = []
        real = queues.settlements.commit

        async def counted(settles: Sequence[Settle]) -> Settled:
            commits.append(len(settles))
            return await real(settles)

        queues.settlements = SettleBatcher(counted)
        first, second, third, fourth = claimed
        with anyio.fail_after(10):
            async with engine.subscribe("pgcast.queues.mixed", after="latest") as lifecycle:
                outcomes = await queues.settle(
                    [
                        Settle("mixed", first.id, str(first.lease)),
                        Settle("mixed", second.id, str(second.lease), Retry(30, "boom")),
                        Settle("mixed", third.id, str(third.lease), Retry(None, "last try")),
                        Settle("mixed", fourth.id, "stale", Retry(0, None)),
                        Settle("mixed", 10**12, "stale"),
                    ]
                )
                events = await take(lifecycle, 2)
        ack, retried, dead, stale, missing = outcomes
        (stats,) = await queues.stats("mixed")
    assert commits == [5]
    assert ack is None
    assert isinstance(retried, Moved)
    assert (retried.state, retried.message.last_error) == ("ready", "boom")
    assert isinstance(dead, Moved)
    assert (dead.state, dead.message.last_error) == ("dead", "last try")
    assert isinstance(stale, Conflict)
    assert isinstance(missing, NotFound)
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (0, 1, 1, 1)
    assert [(e.type, e.key) for e in events] == [
        ("retried", str(second.id)),
        ("dead_lettered", str(third.id)),
    ]
