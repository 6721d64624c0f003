from __future__ import annotations

import anyio
import pytest

from backend.core.mailbox import Mailbox

pytestmark = pytest.mark.anyio


async def test_take_returns_everything_ready_in_order_up_to_the_limit() -> None:
    box: Mailbox[int] = Mailbox(10)
    assert box.offer_all([0, 1, 2])
    assert box.offer_all([3, 4])
    assert await box.take(3) == [0, 1, 2]
    assert await box.take(10) == [3, 4]


async def test_offer_all_takes_all_or_nothing_and_nothing_after_close() -> None:
    box: Mailbox[int] = Mailbox(3)
    assert not box.offer_all([1, 2, 3, 4])
    assert box.offer_all([1, 2])
    assert not box.offer_all([3, 4])
    assert box.offer_all([3])
    box.close()
    assert not box.offer_all([4])
    assert await box.take(10) == [1, 2, 3]
    assert await box.take(10) == []


async def test_a_waiting_take_wakes_on_offer_and_on_close() -> None:
    box: Mailbox[str] = Mailbox(4)
    got: list[list[str]] = []

    async def reader() -> None:
        got.append(await box.take(4))
        got.append(await box.take(4))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        box.offer_all(["a"])
        await anyio.wait_all_tasks_blocked()
        box.close()
    assert got == [["a"], []]


async def test_a_cancelled_take_loses_nothing() -> None:
    box: Mailbox[int] = Mailbox(4)
    with anyio.move_on_after(0.01):
        await box.take(4)
    assert box.offer_all([7])
    assert await box.take(4) == [7]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(0)
