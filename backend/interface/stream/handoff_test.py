"""The handoff: a parked body runs after the whole app has returned, with the slot gone."""

from __future__ import annotations

from typing import Any

import pytest

from backend.interface.stream.handoff import SLOT, park, serve_with_handoff

pytestmark = pytest.mark.anyio


async def test_a_parked_body_runs_after_the_app_has_returned_and_the_slot_is_gone() -> None:
    events: list[str] = []
    scope: dict[str, Any] = {"type": "websocket"}

    async def body(receive: Any, send: Any) -> None:
        events.append(f"body, slot in scope: {SLOT in scope}")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert park(scope, body)
        assert not park(scope, body)  # one body per request
        events.append("app returns")

    await serve_with_handoff(app, scope, None, None)  # type: ignore[arg-type]
    assert events == ["app returns", "body, slot in scope: False"]


async def test_without_a_handoff_a_body_is_not_parked() -> None:
    async def body(receive: Any, send: Any) -> None:
        raise AssertionError("never run")

    assert not park({"type": "http"}, body)
