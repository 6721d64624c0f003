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
