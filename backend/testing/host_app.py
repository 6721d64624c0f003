"""A host Starlette application that mounts pgcast, as docs/operations.md shows.

Run it with `uvicorn backend.testing.host_app:app` and DATABASE_URL set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from backend.interface.server.app import create_app

pgcast = create_app()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Mounted applications get no lifespan of their own: the host runs pgcast's.
    async with pgcast.router.lifespan_context(pgcast):
        yield


async def hello(_request: Request) -> JSONResponse:
    return JSONResponse({"app": "host"})


app = Starlette(routes=[Route("/", hello), Mount("/pgcast", app=pgcast)], lifespan=lifespan)
