"""Long-lived streams run outside the framework's call chain once their headers are out
(or, for a WebSocket, once it is accepted).

A streaming response that stays inside Starlette keeps every middleware's and the router's
coroutine frame alive for as long as it is open, and every body message passes through
their `send` wrappers. `StreamHandoff` sits outermost: a response that finds its slot in
the scope sends its start message through the stack as usual (so middleware still shapes
the headers), parks its body in the slot and returns; the handoff then runs the body with
the server's own `send`, after the framework has unwound.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SLOT = "pgcast.handoff"

Body = Callable[[Receive, Send], Awaitable[None]]


class StreamHandoff:
    """ASGI middleware: run a parked stream body after the app below has returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        parked: list[Body] = []
        scope[SLOT] = parked
        await self.app(scope, receive, send)
        if parked:
            await parked[0](receive, send)


def park(scope: Scope, body: Body) -> bool:
    """Leave `body` to the handoff; False when there is none (run it in place then)."""
    slot: Any = scope.get(SLOT)
    if not isinstance(slot, list) or slot:
        return False
    slot.append(body)
    return True
