"""encode/broadcaster (Postgres backend) behind sse-starlette on uvicorn: a pgcast peer.

What a Python developer would write for "live events from Postgres": publishing is a
NOTIFY through broadcaster's one asyncpg connection, subscribers are LISTEN fan-out in
this process. Runs in the peers virtualenv (`.tools/peers/`), never imported by `bench`.

Guarantees: NOT durable (a NOTIFY nobody is listening to is gone); NO resume (the SSE
`id` is a per-connection counter, so Last-Event-ID means nothing); order is kept per
channel within this one process. Payloads must fit a NOTIFY (8,000 bytes).

Two locks that the library needs under concurrency: its Postgres backend publishes on
the connection it listens on, so concurrent publishes fail with "another operation is in
progress" unless serialized; and `subscribe()` races when the first subscribers of a
channel arrive together (they overwrite each other's queue and fail with `KeyError`).

Same paths as pgcast: POST /topics/<topic>/events (201), GET /topics/<topic>/events (SSE).
Usage: python broadcaster_app.py PORT DATABASE_URL
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import uvicorn
from broadcaster import Broadcast
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


def build(database_url: str) -> Starlette:
    broadcast = Broadcast(database_url)
    publish_lock = asyncio.Lock()
    subscribe_lock = asyncio.Lock()

    async def publish(request: Request) -> Response:
        body = (await request.body()).decode()
        async with publish_lock:
            await broadcast.publish(channel=request.path_params["topic"], message=body)
        return Response(status_code=201)

    async def events(topic: str) -> AsyncIterator[ServerSentEvent]:
        async with contextlib.AsyncExitStack() as stack:
            async with subscribe_lock:
                subscriber = await stack.enter_async_context(broadcast.subscribe(channel=topic))
            count = 0
            async for event in subscriber:
                count += 1
                yield ServerSentEvent(data=event.message, id=str(count), sep="\n")

    async def stream(request: Request) -> Response:
        if request.method == "POST":
            return await publish(request)
        return EventSourceResponse(events(request.path_params["topic"]), sep="\n")

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        try:
            yield
        finally:
            await broadcast.disconnect()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/topics/{topic}/events", stream, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    port, database_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        build(database_url), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
