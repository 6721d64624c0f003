"""Group commit for settlements: acks and nacks that arrive together share one commit.

No background task: a caller that finds fewer than PARALLEL_COMMITS commits in flight takes
every settlement waiting and commits them in one transaction (one fenced statement for the
acks, one for the nacks); settlements arriving meanwhile go in the next one. Two commits
may overlap, so under light load a settlement never waits for a commit it is not part of;
under heavy load each commit carries many. A caller may hand in many settlements at once
(a WebSocket connection's acks read while its previous ones committed): they go into the
same commit.

Each caller is answered after the commit that holds its own settlements, with what that
commit settled. The commit itself is shielded, so a cancelled caller never takes the
others' answers down with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from backend.connectors.store.queues import Moved

MAX_BATCH = 1000
PARALLEL_COMMITS = 2


@dataclass(frozen=True, slots=True)
class Retry:
    """What a nack asks for: a delay (None: the backoff) and the error to record."""

    delay: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Settle:
    """One ack (`retry` None) or nack of a message, fenced on its lease."""

    queue: str
    message_id: int
    lease: str
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """What one commit settled: the acked leases and the nacked ones with their moves."""

    acked: frozenset[str] = frozenset()
    nacked: dict[str, Moved] = field(default_factory=dict)

    def outcome(self, settle: Settle) -> Moved | bool:
        """The nack's move; for an ack, True. False when the lease was not held."""
        if settle.retry is None:
            return settle.lease in self.acked
        return self.nacked.get(settle.lease, False)


@dataclass(eq=False)
class _Waiting:
    settles: Sequence[Settle]
    taken: bool = False
    settled: Settled | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class SettleBatcher:
    """Runs `commit` over the settlements gathered while the previous commit was in flight."""

    commit: Callable[[Sequence[Settle]], Awaitable[Settled]]
    """Applies the settlements in one transaction; returns what was held and settled."""
    _waiting: list[_Waiting] = field(default_factory=list)
    _committing: int = 0
    _committed: anyio.Event = field(default_factory=anyio.Event)

    async def settle(self, settles: Sequence[Settle]) -> Settled:
        """Once committed, what the commit holding `settles` settled (look each one up with
        `Settled.outcome`). A failed commit raises its error to every caller in it."""
        mine = _Waiting(settles)
        self._waiting.append(mine)
        try:
            while mine.settled is None and mine.error is None:
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
        assert mine.settled is not None
        return mine.settled

    def _take(self) -> list[_Waiting]:
        """Whole callers, oldest first, up to MAX_BATCH settlements (at least one caller)."""
        count = taken = 0
        for waiting in self._waiting:
            if taken and count + len(waiting.settles) > MAX_BATCH:
                break
            count += len(waiting.settles)
            taken += 1
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch

    async def _commit_waiting(self) -> None:
        batch = self._take()
        for waiting in batch:
            waiting.taken = True
        self._committing += 1
        try:
            with anyio.CancelScope(shield=True):
                settled = await self.commit([s for waiting in batch for s in waiting.settles])
            for waiting in batch:
                waiting.settled = settled
        except Exception as exc:  # noqa: BLE001 - every caller in the batch raises it
            for waiting in batch:
                waiting.error = exc
        finally:
            self._committing -= 1
            committed, self._committed = self._committed, anyio.Event()
            committed.set()
