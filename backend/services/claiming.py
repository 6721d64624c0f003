"""Group claims: consumers of one queue that claim at the same time share one statement.

Like settlements (`settle.py`), with no background task: a claim that finds fewer than
PARALLEL_CLAIMS claims of its queue (and lease length) in flight takes every claim of that
queue waiting and runs them as one claim of their summed limits; the messages are shared
out in order, each caller getting at most its own limit. Under light load a claim never
waits for one it is not part of; under load one round trip serves many consumers.

The statement runs shielded, so its answer is never lost. A caller cancelled while its
claim is in flight waits for that answer (shielded) and gives its share back, unused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

import anyio

from backend.entities.message import Message

MAX_BATCH = 1000
PARALLEL_CLAIMS = 2

Line = tuple[str, float]
"""queue, lease seconds: claims that may share a statement"""


@dataclass(eq=False)
class _Waiting:
    limit: int
    taken: bool = False
    claimed: list[Message] | None = None
    error: Exception | None = None

    @property
    def answered(self) -> bool:
        return self.claimed is not None or self.error is not None


@dataclass(eq=False)
class _Queue:
    waiting: list[_Waiting] = field(default_factory=list)
    running: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class ClaimBatcher:
    """Runs `claim` once for the claims of a queue gathered while others were in flight."""

    claim_now: Callable[[str, int, float], Awaitable[list[Message]]]
    """Claims up to `limit` messages of `queue` for `lease` seconds, in order; gives them
    all back itself if it fails."""
    give_back: Callable[[Sequence[str]], Awaitable[None]]
    """Returns claimed messages that reached no one, their attempt unused."""
    _lines: dict[Line, _Queue] = field(default_factory=dict)

    async def claim(self, queue: str, limit: int, lease: float) -> list[Message]:
        key = (queue, lease)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Queue()
        mine = _Waiting(limit)
        line.waiting.append(mine)
        try:
            while not mine.answered:
                if not mine.taken and line.running < PARALLEL_CLAIMS:
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
        assert mine.claimed is not None
        return mine.claimed

    async def _withdraw(self, line: _Queue, mine: _Waiting) -> None:
        """A cancelled caller: out of the line, or its share back once its claim answers."""
        if not mine.taken:
            line.waiting.remove(mine)
            return
        with anyio.CancelScope(shield=True):
            while not mine.answered:
                await line.done.wait()
            if mine.claimed:
                await self.give_back([str(m.lease) for m in mine.claimed])

    def _take(self, line: _Queue) -> list[_Waiting]:
        """Whole callers, oldest first, up to MAX_BATCH messages (at least one caller)."""
        total = taken = 0
        for waiting in line.waiting:
            if taken and total + waiting.limit > MAX_BATCH:
                break
            total += waiting.limit
            taken += 1
        batch, line.waiting = line.waiting[:taken], line.waiting[taken:]
        return batch

    async def _run(self, key: Line, line: _Queue) -> None:
        batch = self._take(line)
        for waiting in batch:
            waiting.taken = True
        line.running += 1
        try:
            with anyio.CancelScope(shield=True):
                claimed = await self.claim_now(key[0], sum(w.limit for w in batch), key[1])
            messages = iter(claimed)
            for waiting in batch:
                waiting.claimed = list(islice(messages, waiting.limit))
        except Exception as exc:  # noqa: BLE001 - every caller in the batch raises it
            for waiting in batch:
                waiting.error = exc
        finally:
            line.running -= 1
            done, line.done = line.done, anyio.Event()
            done.set()
