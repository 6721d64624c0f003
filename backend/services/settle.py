"""Group commit for settlements: acks and nacks that arrive together share one commit.

A settlement that finds no commit in flight takes every settlement waiting and commits
them in one transaction (one fenced statement for the acks, one for the nacks);
settlements arriving meanwhile go in the next one (`core.grouping`). A caller may hand in
many settlements at once (a WebSocket connection's acks read while its previous ones
committed): they go into the same commit.

Each caller is answered after the commit that holds its own settlements, with what that
commit settled. The commit itself is shielded, so a cancelled caller never takes the
others' answers down with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from backend.connectors.store.queues import Moved
from backend.core.grouping import Grouped


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
class SettleBatcher:
    """Runs `commit` over the settlements gathered while the previous commit was in flight."""

    commit: Callable[[Sequence[Settle]], Awaitable[Settled]]
    """Applies the settlements in one transaction; returns what was held and settled."""
    _group: Grouped[None, Sequence[Settle], Settled] = field(init=False)

    def __post_init__(self) -> None:
        self._group = Grouped(self._commit_together, len)

    async def settle(self, settles: Sequence[Settle]) -> Settled:
        """Once committed, what the commit holding `settles` settled (look each one up with
        `Settled.outcome`). A failed commit raises its error to every caller in it."""
        return await self._group.submit(None, settles)

    async def _commit_together(self, _line: None, batch: list[Sequence[Settle]]) -> list[Settled]:
        settled = await self.commit([settle for settles in batch for settle in settles])
        return [settled] * len(batch)
