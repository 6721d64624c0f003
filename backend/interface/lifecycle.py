"""Process lifecycle shared by the server runner and the streaming routes."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass
class Lifecycle:
    """`shutting_down` is set as soon as the process is asked to stop."""

    shutting_down: anyio.Event = field(default_factory=anyio.Event)

    def begin_shutdown(self) -> None:
        self.shutting_down.set()
