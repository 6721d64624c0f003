from __future__ import annotations

import anyio
import pytest

from backend.core.mailbox import Mailbox

pytestmark = pytest.mark.anyio


async def take(box: Mailbox[str], limit: int) -> list[str]:
    """A reader's loop: what is ready, waiting for an arrival only when there is nothing."""
    while (taken := box.ready(limit)) is None:
        await box.arrival()
    return taken


def test_ready_gives_everything_in_order_up_to_the_limit_and_none_when_empty() -> None:
    box: Mailbox[int] = Mailbox(10)
    assert box.ready(3) is None
    assert box.offer_all([0, 1, 2])
    assert box.offer_all([3, 4])
    assert box.ready(3) == [0, 1, 2]
    assert box.ready(10) == [3, 4]
    assert box.ready(10) is None


def test_offer_all_takes_all_or_nothing_and_nothing_after_close() -> None:
    box: Mailbox[int] = Mailbox(3)
    assert not box.offer_all([1, 2, 3, 4])
    assert box.offer_all([1, 2])
    assert not box.offer_all([3, 4])
    assert box.offer_all([3])
    box.close()
    assert not box.offer_all([4])
    assert box.ready(10) == [1, 2, 3]
    assert box.ready(10) == []


def test_a_poke_gives_one_empty_list_while_open() -> None:
    box: Mailbox[int] = Mailbox(3)
    box.poke()
    assert box.ready(10) == []
    assert box.ready(10) is None
    assert not box.closed


async def test_a_waiting_reader_wakes_on_offer_on_poke_and_on_close() -> None:
    box: Mailbox[str] = Mailbox(4)
    got: list[list[str]] = []

    async def reader() -> None:
        for _ in range(3):
            got.append(await take(box, 4))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        box.offer_all(["a"])
        await anyio.wait_all_tasks_blocked()
        box.poke()
        await anyio.wait_all_tasks_blocked()
        assert got == [["a"], []]
        box.close()
    assert got == [["a"], [], []]
    assert box.closed


async def test_a_cancelled_wait_loses_nothing() -> None:
    box: Mailbox[str] = Mailbox(4)
    with anyio.move_on_after(0.01):
        await take(box, 4)
    assert box.offer_all(["x"])
    assert await take(box, 4) == ["x"]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Mailbox(0)
