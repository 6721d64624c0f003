"""Group runs: requests of one line that arrive while its run is in flight share the next.

No background task and one run per line at a time: a caller that finds its line idle
takes every request waiting there (oldest first, up to MAX_BATCH by size) and runs them
as one; requests arriving meanwhile wait for it and go together in the next run. Under
light load a request waits at most for the run in flight; under load each run carries
many, and a busy box does fewer, larger runs (the database statements and commits that
queue claims and settlements share).

A run is shielded, so its answer is never lost to one caller's cancellation, and
limited to RUN_SECONDS, after which every caller in it gets DatabaseUnavailable. A caller
cancelled after its request was taken waits (shielded) for the answer and hands it to
`withdraw`, which undoes what it would have received.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from backend.core.errors import DatabaseUnavailable

MAX_BATCH = 1000
RUN_SECONDS = 30.0

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
A = TypeVar("A")


@dataclass(eq=False, slots=True)
class _Waiting(Generic[R, A]):
    request: R
    size: int
    taken: bool = False
    answered: bool = False
    answer: A | None = None
    error: Exception | None = None


@dataclass(eq=False, slots=True)
class _Line(Generic[R, A]):
    waiting: list[_Waiting[R, A]] = field(default_factory=list)
    running: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class Grouped(Generic[K, R, A]):
    """Runs `run` once for the requests of a line gathered while its last run was in flight."""

    run: Callable[[K, list[R]], Awaitable[list[A]]]
    """Serves the requests of line `key` together; one answer per request, in order."""
    size: Callable[[R], int]
    """How much of MAX_BATCH a request takes."""
    withdraw: Callable[[A], Awaitable[None]] | None = None
    """Undoes the answer of a request whose caller was cancelled after the run took it."""
    _lines: dict[K, _Line[R, A]] = field(default_factory=dict)

    async def submit(self, key: K, request: R) -> A:
        """The answer to `request` from the run that took it; that run's error if it failed."""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        mine: _Waiting[R, A] = _Waiting(request, self.size(request))
        line.waiting.append(mine)
        try:
            while not mine.answered:
                if not mine.taken and not line.running:
                    await self._run(key, line)
                else:
                    await line.done.wait()
        except BaseException:
            await self._withdraw(line, mine)
            raise
        finally:
            if not line.waiting and not line.running and self._lines.get(key) is line:
                del self._lines[key]
        if mine.error is not None:
            raise mine.error  # a lost database is already DatabaseUnavailable (Pool.acquire)
        return mine.answer  # type: ignore[return-value]  # answered: set by the run

    async def _withdraw(self, line: _Line[R, A], mine: _Waiting[R, A]) -> None:
        """A cancelled caller: out of the line, or its answer undone once it comes."""
        if not mine.taken:
            line.waiting.remove(mine)
            return
        if self.withdraw is None:
            return
        with anyio.CancelScope(shield=True):
            while not mine.answered:
                await line.done.wait()
            if mine.error is None:
                await self.withdraw(mine.answer)  # type: ignore[arg-type]

    def _take(self, line: _Line[R, A]) -> list[_Waiting[R, A]]:
        """Whole requests, oldest first, up to MAX_BATCH in size (at least one)."""
        total = taken = 0
        for waiting in line.waiting:
            if taken and total + waiting.size > MAX_BATCH:
                break
            total += waiting.size
            taken += 1
        batch, line.waiting = line.waiting[:taken], line.waiting[taken:]
        return batch

    async def _run(self, key: K, line: _Line[R, A]) -> None:
        batch = self._take(line)
        for waiting in batch:
            waiting.taken = True
        line.running = True
        answers: list[A] | None = None
        try:
            # One scope for both jobs: shielded from the callers, cancelled by its deadline.
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + RUN_SECONDS):
                answers = await self.run(key, [w.request for w in batch])
            if answers is None:  # the deadline cancelled the run
                late = DatabaseUnavailable(f"the database did not answer within {RUN_SECONDS:g} s")
                for waiting in batch:
                    waiting.error = late
            else:
                for waiting, answer in zip(batch, answers, strict=True):
                    waiting.answer = answer
        except Exception as exc:  # noqa: BLE001 - every caller in the batch raises it
            for waiting in batch:
                waiting.error = exc
        except BaseException:  # the runner's own task is ending: the others get no answer
            unfinished = DatabaseUnavailable("the run serving this request did not finish")
            for waiting in batch:
                waiting.error = unfinished
            raise
        finally:
            for waiting in batch:
                waiting.answered = True
            line.running = False
            done, line.done = line.done, anyio.Event()
            done.set()
