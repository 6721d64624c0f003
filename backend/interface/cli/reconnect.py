"""How `tail` and `queue work` keep a stream open: the same tries, lines and delays.

A stream that never connected fails at once with one line (a wrong URL or a refused
token should not be retried forever); one that connected and then broke, or whose server
answers 5xx, is tried again with backoff, saying once that it was lost and once that it
is back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from httpx_sse import SSEError

from backend.interface.cli.client import ApiError, Backoff, connect_problem, fail, notice, retryable


class Reconnects:
    """The state of one stream's reconnections."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.backoff = Backoff()
        self.connected = False
        self.lost = False

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """One try: what ends it either passes (then call `delay`) or ends the command."""
        try:
            yield
        except (httpx.TransportError, ApiError) as exc:
            if not (self.connected and retryable(exc)):
                if isinstance(exc, ApiError):
                    raise
                fail(connect_problem(self.base, exc))
        except SSEError as exc:
            fail(f"{self.base} did not answer with an event stream: {exc}")

    def opened(self) -> None:
        """The stream is open (again)."""
        self.connected = True
        self.backoff.reset()
        if self.lost:
            notice("reconnected")
            self.lost = False

    def delay(self) -> float:
        """After a loss: say so the first time; the seconds to wait before the next try."""
        if not self.lost:
            notice("connection lost; reconnecting...")
            self.lost = True
        return self.backoff.next()
