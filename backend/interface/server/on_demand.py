"""Stand-ins for two parts of uvicorn's per-connection state that allocate on demand.

uvicorn gives every connection a deque for pipelined requests and two asyncio Events
(write flow control, request body), each with an empty deque of waiters: about 600 bytes
apiece, on every connection, though an idle stream never pipelines nor waits on them.
With thousands of idle streams per process that is a fifth of what each one costs.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Literal


class WaitersOnDemand(asyncio.Event):
    """An asyncio Event that makes its waiters' deque at the first wait."""

    def __init__(self) -> None:  # no super().__init__(): it would make the deque
        self._waiters: Any = ()
        self._value = False

    async def wait(self) -> Literal[True]:
        if not self._value and not self._waiters:
            self._waiters = collections.deque()
        return await super().wait()


class PipelineOnDemand(list[Any]):
    """The queue of pipelined requests as a list, which costs nothing while empty."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)
