"""The real app in this process: its engine on a real Postgres, no socket, no uvicorn.

Requests go through httpx's ASGI transport and WebSockets through httpx-ws's, so a test
reads like one against a server and runs in milliseconds. The ASGI transport collects a
whole response body before it returns, so an endless stream (SSE) never answers here:
those tests need a real server (backend/testing/server.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from httpx_ws.transport import ASGIWebSocketTransport
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.core.settings import Settings
from backend.interface.server.app import create_app

BASE_URL = "http://127.0.0.1"
# Generous: the first frame waits for the app to accept, on a machine that may be busy.
ACCEPT_TIMEOUT_SECONDS = 10.0


def denial_responses(app: ASGIApp) -> ASGIApp:
    """Offer the WebSocket denial-response extension, as uvicorn does.

    httpx-ws understands a refused handshake's HTTP answer but does not say so in the
    scope; without this the app would close with 1008 where uvicorn answers HTTP 401.
    """

    async def offering(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            extensions = {**(scope.get("extensions") or {}), "websocket.http.response": {}}
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return offering


@contextlib.asynccontextmanager
async def app_client(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `create_app(settings)`, with the app's lifespan (its engine) running."""
    app = create_app(settings, database_url=database_url)
    transport = ASGIWebSocketTransport(
        denial_responses(app), initial_receive_timeout=ACCEPT_TIMEOUT_SECONDS
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=10) as client,
    ):
        yield client
