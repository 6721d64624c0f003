"""Long-lived streams run outside the framework's call chain once their headers are out
(or, for a WebSocket, once it is accepted).

A streaming response that stays inside Starlette keeps every middleware's and the router's
coroutine frame alive for as long as it is open, and every body message passes through
their `send` wrappers. A response that finds a slot in the scope sends its start message
through the stack as usual (so middleware still shapes the headers), parks its body in the
slot and returns; `serve_with_handoff` then runs the body with the `send` it was given,
after the app has unwound. pgcast's own server does this outside the whole app
(`server.protocols`), so the body writes with uvicorn's `send`; `StreamHandoff` does it
as the app's outermost middleware when pgcast runs under another server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SLOT = "pgcast.handoff"

Body = Callable[[Receive, Send], Awaitable[None]]


class StreamHandoff:
    """ASGI middleware: run a parked stream body after the app below has returned, unless
    the server already does it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or SLOT in scope:
            await self.app(scope, receive, send)
            return
        await serve_with_handoff(self.app, scope, receive, send)


async def serve_with_handoff(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`, then the body it parked, if any."""
    parked = open_slot(scope)
    try:
        await app(scope, receive, send)
    finally:
        close_slot(scope)
    if parked:
        await parked.pop()(receive, send)


def open_slot(scope: Scope) -> list[Body]:
    """The slot where `park` leaves a body while the app runs (a server that serves
    parked bodies itself runs the app between `open_slot` and `close_slot`)."""
    parked: list[Body] = []
    scope[SLOT] = parked
    return parked


def close_slot(scope: Scope) -> None:
    """Once the app has returned: the scope outlives the body, so it must not keep the
    body alive."""
    del scope[SLOT]


def park(scope: Scope, body: Body) -> bool:
    """Leave `body` to the handoff; False when there is none (run it in place then)."""
    slot: Any = scope.get(SLOT)
    if not isinstance(slot, list) or slot:
        return False
    slot.append(body)
    return True
