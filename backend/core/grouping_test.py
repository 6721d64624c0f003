"""Group runs: one run per line at a time, later requests share the next, answers in order."""

from __future__ import annotations

import anyio
import pytest

from backend.core import grouping
from backend.core.errors import DatabaseUnavailable
from backend.core.grouping import Grouped

pytestmark = pytest.mark.anyio


class Recorder:
    """A run that doubles each request, records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.gate = anyio.Event()
        self.gate.set()
        self.withdrawn: list[int] = []

    async def run(self, key: str, requests: list[int]) -> list[int]:
        self.batches.append((key, requests))
        await self.gate.wait()
        return [2 * r for r in requests]

    async def withdraw(self, answer: int) -> None:
        self.withdrawn.append(answer)


class Asker:
    """Callers of one group on line "a" that keep their answers; each may be cancelled."""

    def __init__(self, recorder: Recorder) -> None:
        self.group: Grouped[str, int, int] = Grouped(recorder.run, lambda r: 1, recorder.withdraw)
        self.answers: list[int] = []

    async def ask(self, n: int, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            self.answers.append(await self.group.submit("a", n))


async def test_requests_made_during_a_run_share_the_next_one_and_get_their_own_answers() -> None:
    recorder = Recorder()
    group: Grouped[str, int, int] = Grouped(recorder.run, lambda r: 1)
    recorder.gate = anyio.Event()
    answers: dict[int, int] = {}

    async def ask(n: int) -> None:
        answers[n] = await group.submit("a", n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, 0)
        await anyio.wait_all_tasks_blocked()
        for n in range(1, 6):
            tg.start_soon(ask, n)
        await anyio.wait_all_tasks_blocked()
        recorder.gate.set()
    assert answers == {n: 2 * n for n in range(6)}
    assert recorder.batches == [("a", [0]), ("a", [1, 2, 3, 4, 5])]


async def test_lines_run_independently() -> None:
    recorder = Recorder()
    group: Grouped[str, int, int] = Grouped(recorder.run, lambda r: 1)
    recorder.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(group.submit, "a", 1)
        tg.start_soon(group.submit, "b", 2)
        await anyio.wait_all_tasks_blocked()
        assert sorted(recorder.batches) == [("a", [1]), ("b", [2])]
        recorder.gate.set()


async def test_a_run_takes_whole_requests_up_to_the_batch_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grouping, "MAX_BATCH", 5)
    recorder = Recorder()
    group: Grouped[str, int, int] = Grouped(recorder.run, lambda r: r)
    recorder.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(group.submit, "a", 9)  # over the limit alone: still runs
        await anyio.wait_all_tasks_blocked()
        for size in (2, 2, 2, 1):
            tg.start_soon(group.submit, "a", size)
        await anyio.wait_all_tasks_blocked()
        recorder.gate.set()
    assert [requests for _, requests in recorder.batches] == [[9], [2, 2], [2, 1]]


async def test_a_failed_run_fails_every_request_in_it() -> None:
    async def broken(key: str, requests: list[int]) -> list[int]:
        await anyio.sleep(0.01)
        raise ValueError("no")

    group: Grouped[str, int, int] = Grouped(broken, lambda r: 1)
    errors: list[Exception] = []

    async def ask(n: int) -> None:
        try:
            await group.submit("a", n)
        except ValueError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(ask, n)
    assert len(errors) == 3


async def test_a_caller_cancelled_while_waiting_just_leaves_the_line() -> None:
    recorder = Recorder()
    recorder.gate = anyio.Event()
    callers = Asker(recorder)
    waiting = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(callers.ask, 1)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(callers.ask, 7, waiting)
        tg.start_soon(callers.ask, 3)
        await anyio.wait_all_tasks_blocked()
        waiting.cancel()
        await anyio.wait_all_tasks_blocked()
        recorder.gate.set()
    assert sorted(callers.answers) == [2, 6]
    assert recorder.batches == [("a", [1]), ("a", [3])]
    assert recorder.withdrawn == []


async def test_a_caller_cancelled_while_its_request_runs_has_the_answer_withdrawn() -> None:
    recorder = Recorder()
    first = recorder.gate = anyio.Event()
    callers = Asker(recorder)
    taken = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(callers.ask, 1)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(callers.ask, 2)  # woken first: it runs [2, 3]
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(callers.ask, 3, taken)
        await anyio.wait_all_tasks_blocked()
        recorder.gate = anyio.Event()
        first.set()
        await anyio.wait_all_tasks_blocked()
        assert recorder.batches == [("a", [1]), ("a", [2, 3])]
        taken.cancel()  # 3 is in the run: its answer is undone once it comes
        await anyio.wait_all_tasks_blocked()
        assert recorder.withdrawn == []
        recorder.gate.set()
    assert taken.cancelled_caught
    assert sorted(callers.answers) == [2, 4]
    assert recorder.withdrawn == [6]


async def test_a_run_over_the_time_limit_answers_database_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grouping, "RUN_SECONDS", 0.05)
    recorder = Recorder()
    group: Grouped[str, int, int] = Grouped(recorder.run, lambda r: 1)
    recorder.gate = anyio.Event()  # never opened
    with pytest.raises(DatabaseUnavailable, match="did not answer"):
        await group.submit("a", 1)
