"""Group claims: consumers of one queue that claim at the same time share one statement.

A claim that finds no claim of its queue (and lease length) in flight takes every claim of
that queue waiting and runs them as one claim of their summed limits (`core.grouping`);
the messages are shared out in order, each caller getting at most its own limit. Under
light load a claim waits at most for the one in flight; under load one round trip serves
many consumers.

The statement runs shielded, so its answer is never lost. A caller cancelled while its
claim is in flight waits (shielded) for that answer and gives its share back, unused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

from backend.core.grouping import Grouped
from backend.entities.message import Message

Line = tuple[str, float]
"""queue, lease seconds: claims that may share a statement"""


@dataclass(eq=False)
class ClaimBatcher:
    """Runs `claim_now` once for the claims of a queue gathered while another was in flight."""

    claim_now: Callable[[str, int, float], Awaitable[list[Message]]]
    """Claims up to `limit` messages of `queue` for `lease` seconds, in order; gives them
    all back itself if it fails."""
    give_back: Callable[[Sequence[str]], Awaitable[None]]
    """Returns claimed messages that reached no one, their attempt unused."""
    _group: Grouped[Line, int, list[Message]] = field(init=False)

    def __post_init__(self) -> None:
        self._group = Grouped(self._claim_together, _limit, self._give_back_share)

    async def claim(self, queue: str, limit: int, lease: float) -> list[Message]:
        return await self._group.submit((queue, lease), limit)

    async def _claim_together(self, line: Line, limits: list[int]) -> list[list[Message]]:
        messages = iter(await self.claim_now(line[0], sum(limits), line[1]))
        return [list(islice(messages, limit)) for limit in limits]

    async def _give_back_share(self, claimed: list[Message]) -> None:
        if claimed:
            await self.give_back([str(m.lease) for m in claimed])


def _limit(limit: int) -> int:
    return limit
