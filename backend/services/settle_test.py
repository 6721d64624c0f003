"""Acks from many consumers share commits, each still fenced on its own lease."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from backend.core.errors import Conflict
from backend.services.settle import Ack, AckBatcher
from backend.testing.engine import running_engine

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_concurrent_acks_share_commits_and_a_stale_one_is_refused(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("acks", i) for i in range(50)])
        claimed = await queues.claim("acks", 50, 60)
        commits: list[int] = []
        real = queues.acks.commit

        async def counted(acks: Sequence[Ack]) -> set[str]:
            commits.append(len(acks))
            return await real(acks)

        queues.acks = AckBatcher(counted)
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
        real = queues.acks.commit

        async def held_back(acks: Sequence[Ack]) -> set[str]:
            await release.wait()
            return await real(acks)

        queues.acks = AckBatcher(held_back)
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
