"""The WebSocket sweep's deadlines, on the real app in this process: no `auth` in time,
and a token given by an `auth` frame that expires long before the sweep's next round."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws
from pydantic import SecretStr

from backend.core.settings import Settings
from backend.interface.stream.ws import sweep
from backend.testing import postgres
from backend.testing.in_process import app_client
from backend.testing.security import SECRET, sign_claims, token

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]

AUTH_TIMEOUT = 0.5
SEND_TIMEOUT = 30.0  # the sweep's round is 7.5 s: deadlines must not wait for it


@pytest.fixture
async def app() -> AsyncIterator[httpx.AsyncClient]:
    url = await postgres.clone_template()
    settings = Settings(auth_secret=SecretStr(SECRET), send_timeout=SEND_TIMEOUT)
    try:
        async with app_client(settings, url) as client:
            yield client
    finally:
        await postgres.drop(url)


def ws(client: httpx.AsyncClient) -> Any:
    url = str(client.base_url.copy_with(scheme="ws", path="/ws"))
    return aconnect_ws(url, client, subprotocols=["pgcast.v1"])


async def exchange(session: AsyncWebSocketSession, **frame: Any) -> dict[str, Any]:
    await session.send_text(orjson.dumps(frame).decode())
    with anyio.fail_after(5):
        answer: dict[str, Any] = orjson.loads(await session.receive_text())
    return answer


async def closed_after(session: AsyncWebSocketSession) -> tuple[int, str, float]:
    """The close code and reason, and how long the socket stayed open from now."""
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(WebSocketDisconnect) as closed:
        await session.receive_text()
    return closed.value.code, closed.value.reason, time.monotonic() - started


async def test_a_socket_without_auth_in_time_is_closed_with_1008(
    app: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "AUTH_TIMEOUT_SECONDS", AUTH_TIMEOUT)
    async with ws(app) as session:
        code, reason, seconds = await closed_after(session)
    assert (code, reason) == (1008, sweep.NO_AUTH)
    assert 0.3 < seconds < 3


async def test_a_socket_that_authenticates_in_time_stays_open(
    app: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "AUTH_TIMEOUT_SECONDS", AUTH_TIMEOUT)
    async with ws(app) as session:
        reply = await exchange(session, op="auth", token=token("alice", subscribe=[">"]))
        assert reply["op"] == "authed"
        await anyio.sleep(2 * AUTH_TIMEOUT)
        assert await exchange(session, op="ping") == {"op": "pong"}


async def test_a_token_from_an_auth_frame_ends_the_socket_when_it_expires(
    app: httpx.AsyncClient,
) -> None:
    """The sweep's next round is 7.5 s away when the token arrives (the default auth
    deadline is later still): the `auth` frame itself must bring the round forward."""
    expires = int(time.time()) + 2
    brief = sign_claims({"sub": "brief", "exp": expires, "pgcast": {"subscribe": [">"]}})
    async with ws(app) as session:
        assert (await exchange(session, op="auth", token=brief))["op"] == "authed"
        code, reason, _ = await closed_after(session)
        late = time.time() - expires
    assert (code, reason) == (1008, "token expired")
    assert -0.1 < late < 3
