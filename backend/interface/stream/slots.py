"""The process's streaming slots (MAX_CONNECTIONS), shared by SSE and WebSocket."""

from __future__ import annotations

from backend.interface.server.state import AppState


async def acquire_slot(state: AppState) -> bool:
    """Take a slot; when none is free, first reclaim those of SSE clients that have left."""
    slots = state.guard.slots
    if slots.acquire():
        return True
    await state.sse.reap()
    return slots.acquire()
