"""Typed access to what the app's lifespan puts on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from backend.core.settings import Settings
from backend.interface.security.guard import Guard
from backend.interface.server.lifecycle import Lifecycle
from backend.interface.server.metrics import Metrics
from backend.interface.stream.sse_sweep import SseSweep
from backend.interface.stream.ws.sweep import WsSweep
from backend.services.engine import Engine


@dataclass(eq=False)
class AppState:
    """The running engine and what every route needs beside it."""

    engine: Engine
    settings: Settings
    lifecycle: Lifecycle
    metrics: Metrics
    guard: Guard
    sse: SseSweep
    ws: WsSweep

    @staticmethod
    def of(connection: HTTPConnection) -> AppState:
        state: AppState = connection.app.state.pgcast
        return state
