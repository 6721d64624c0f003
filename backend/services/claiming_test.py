"""Claims of one queue made together share statements; a cancelled one gives back its share."""

from __future__ import annotations

import anyio
import pytest

from backend.entities.message import Message
from backend.services.claiming import ClaimBatcher
from backend.testing.engine import running_engine

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


async def test_concurrent_claims_share_statements_and_each_gets_at_most_its_limit(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("claims", n) for n in range(30)])
        statements: list[int] = []
        real = queues.claims.claim_now

        async def counted(queue: str, limit: int, lease: float) -> list[Message]:
            statements.append(limit)
            return await real(queue, limit, lease)

        queues.claims = ClaimBatcher(counted, queues.give_back)
        got: dict[int, list[Message]] = {}

        async def claim(n: int) -> None:
            got[n] = await queues.claim("claims", 3, 60)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(claim, n)
        (stats,) = await queues.stats("claims")
    assert [len(claimed) for claimed in got.values()] == [3] * 10
    assert len({m.id for claimed in got.values() for m in claimed}) == 30
    assert sum(statements) == 30
    assert len(statements) < 10, f"{len(statements)} statements for 10 concurrent claims"
    assert (stats.ready, stats.leased) == (0, 30)


async def test_a_claim_cancelled_in_flight_gives_its_share_back_unused(
    database_url: str,
) -> None:
    async with running_engine(database_url) as engine:
        queues = engine.queues
        await queues.enqueue([queues.message("undo", n) for n in range(8)])
        real = queues.claims.claim_now
        gates = [anyio.Event(), anyio.Event()]
        started: list[int] = []

        async def gated(queue: str, limit: int, lease: float) -> list[Message]:
            gate = gates[len(started)]
            started.append(limit)
            await gate.wait()
            return await real(queue, limit, lease)

        queues.claims = ClaimBatcher(gated, queues.give_back)
        got: list[Message] = []
        dropped = anyio.CancelScope()

        async def keep(limit: int) -> None:
            got.extend(await queues.claim("undo", limit, 60))

        async def drop() -> None:
            with dropped:
                await queues.claim("undo", 3, 60)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep, 1)
                await anyio.wait_all_tasks_blocked()  # one statement in flight
                tg.start_soon(keep, 1)
                tg.start_soon(keep, 2)
                tg.start_soon(drop)
                await anyio.wait_all_tasks_blocked()
                gates[0].set()
                while len(started) < 2:  # the next statement holds all three waiting claims
                    await anyio.sleep(0.001)
                dropped.cancel()
                gates[1].set()
        assert started == [1, 6]
        (stats,) = await queues.stats("undo")
        ready = await real("undo", 8, 60)
    assert dropped.cancelled_caught
    assert len(got) == 4
    assert (stats.ready, stats.leased) == (4, 4)
    assert [m.attempt for m in ready] == [1] * 4
