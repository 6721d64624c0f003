"""Group commit for acks: acks from many consumers that arrive together share one commit.

No background task: an ack that finds fewer than PARALLEL_COMMITS commits in flight takes
every ack waiting and commits them in one fenced statement; acks arriving meanwhile go in
the next one. Two commits may overlap, so under light load an ack never waits for a
commit it is not part of; under heavy load each commit carries many acks.

Each caller is answered after the commit that holds its own ack, with whether its lease
was still held. The commit itself is shielded, so a cancelled caller never takes the
others' answers down with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

MAX_BATCH = 1000
PARALLEL_COMMITS = 2

Ack = tuple[str, int, str]
"""queue, message id, lease"""


@dataclass(eq=False)
class _Waiting:
    ack: Ack
    taken: bool = False
    held: bool | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class AckBatcher:
    """Runs `commit` over the acks gathered while the previous commit was in flight."""

    commit: Callable[[Sequence[Ack]], Awaitable[set[str]]]
    """Acknowledges the acks in one transaction; returns the leases that were held."""
    _waiting: list[_Waiting] = field(default_factory=list)
    _committing: int = 0
    _committed: anyio.Event = field(default_factory=anyio.Event)

    async def ack(self, queue: str, message_id: int, lease: str) -> bool:
        """True once committed; False if the message is not held with this lease."""
        mine = _Waiting((queue, message_id, lease))
        self._waiting.append(mine)
        try:
            while mine.held is None and mine.error is None:
                if not mine.taken and self._committing < PARALLEL_COMMITS:
                    await self._commit_waiting()
                else:
                    await self._committed.wait()
        except BaseException:
            if not mine.taken:
                self._waiting.remove(mine)  # cancelled before any commit took it
            raise
        if mine.error is not None:
            raise mine.error  # a lost database is already DatabaseUnavailable (Pool.acquire)
        return bool(mine.held)

    async def _commit_waiting(self) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        for waiting in batch:
            waiting.taken = True
        self._committing += 1
        try:
            with anyio.CancelScope(shield=True):
                held = await self.commit([waiting.ack for waiting in batch])
            for waiting in batch:
                waiting.held = waiting.ack[2] in held
        except Exception as exc:  # noqa: BLE001 - every caller in the batch raises it
            for waiting in batch:
                waiting.error = exc
        finally:
            self._committing -= 1
            committed, self._committed = self._committed, anyio.Event()
            committed.set()
