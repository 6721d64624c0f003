"""Statuses of failures: only a typed DatabaseUnavailable is an outage (503)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.core.errors import DatabaseUnavailable, ShuttingDown
from backend.interface.http.errors import EXCEPTION_HANDLERS

pytestmark = pytest.mark.anyio

FAILURES: dict[str, Exception] = {
    "os": OSError("[Errno 75] Value too large for defined data type"),
    "overflow": OverflowError("timestamp out of range for platform time_t"),
    "timeout": TimeoutError(),
    "unavailable": DatabaseUnavailable("the database is unavailable: connection refused"),
    "stopping": ShuttingDown("the server is stopping: nothing was published; retry"),
}


async def fail(request: Request) -> Response:
    raise FAILURES[request.path_params["kind"]]


async def answer(kind: str) -> httpx.Response:
    app = Starlette(routes=[Route("/{kind}", fail)], exception_handlers=EXCEPTION_HANDLERS)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(f"/{kind}")


@pytest.mark.parametrize("kind", ["os", "overflow", "timeout"])
async def test_errors_of_other_code_are_internal_errors_not_outages(kind: str) -> None:
    response = await answer(kind)
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal server error"}
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(
    ("kind", "code"), [("unavailable", "database_unavailable"), ("stopping", "shutting_down")]
)
async def test_typed_unavailability_is_503_with_retry_after(kind: str, code: str) -> None:
    response = await answer(kind)
    assert response.status_code == 503
    assert response.json() == {"error": code, "message": FAILURES[kind].args[0]}
    assert response.headers["retry-after"] == "1"
