"""Credentials, limits, origins, protected mode and secret-free logs on real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import jwt
import orjson
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketSession, WebSocketUpgradeError, connect_ws

from backend.testing.proxy import nginx_in_front
from backend.testing.security import SECRET, auth_server, bearer, token
from backend.testing.server import ServerProcess, spawn

pytestmark = [pytest.mark.external]

LIMITS = {
    "PUBLISH_RATE": "1",
    "PUBLISH_BURST": "3",
    "MAX_CONNECTIONS": "3",
    "CORS_ORIGINS": "https://app.example",
    "ALLOWED_ORIGINS": "https://app.example",
}
SSE = {"Accept": "text/event-stream"}
READER = token("reader", subscribe=["orders.>"])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with auth_server(**LIMITS) as process:
        yield process


def ws_url(server: ServerProcess, query: str = "") -> str:
    return server.url.replace("http", "ws", 1) + "/ws" + query


def send(ws: WebSocketSession, **frame: Any) -> None:
    ws.send_text(orjson.dumps(frame).decode())


def receive(ws: WebSocketSession, timeout: float = 5) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(ws.receive_text(timeout=timeout))
    return frame


def handshake_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a refused WebSocket handshake."""
    with (
        httpx.Client() as client,
        pytest.raises(WebSocketUpgradeError) as refused,
        connect_ws(url, client, headers=headers or {}, session_class=WebSocketSession),
    ):
        pass
    return refused.value.response.status_code


def closed_with(ws: WebSocketSession, timeout: float = 5) -> WebSocketDisconnect:
    """The close the server sends next (after any other frames)."""
    with pytest.raises(WebSocketDisconnect) as closed:  # noqa: PT012
        while True:
            receive(ws, timeout)
    return closed.value


def test_401_and_403_are_distinct_json_errors(server: ServerProcess) -> None:
    url = f"{server.url}/topics/orders.x/events"
    missing = httpx.get(url)
    invalid = httpx.get(url, headers=bearer("nonsense"))
    basic = httpx.get(url, headers={"Authorization": "Basic YTpi"})
    forbidden = httpx.get(f"{server.url}/topics/payments.x/events", headers=bearer(READER))
    assert [r.status_code for r in (missing, invalid, basic, forbidden)] == [401, 401, 401, 403]
    assert missing.headers["www-authenticate"] == 'Bearer realm="pgcast"'
    assert invalid.headers["www-authenticate"] == 'Bearer realm="pgcast", error="invalid_token"'
    assert missing.json() == {"error": "unauthorized", "message": "a token is required"}
    assert invalid.json() == {"error": "unauthorized", "message": "the token is malformed"}
    assert forbidden.json() == {
        "error": "forbidden",
        "message": "the token of 'reader' does not allow subscribing to 'payments.x'",
    }


def first_event(response: httpx.Response) -> dict[str, Any]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            event: dict[str, Any] = orjson.loads(line[5:])
            return event
    raise AssertionError("the stream ended without an event")


def test_event_source_credentials_query_token_and_cookie(server: ServerProcess) -> None:
    writer = token("writer", publish=["orders.*"])
    httpx.post(f"{server.url}/topics/orders.q/events", json={"data": 1}, headers=bearer(writer))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        params = {"after": "earliest", "token": READER}
        with client.stream("GET", "/topics/orders.q/events", params=params, headers=SSE) as stream:
            assert stream.status_code == 200
            assert first_event(stream)["data"] == 1
        reader = token("reader", ttl=600, subscribe=["orders.>"])
        stored = client.post("/auth/cookie", json={"token": reader})
        assert stored.status_code == 200
        assert stored.json()["sub"] == "reader"
        cookie = stored.headers["set-cookie"]
        for attribute in ("pgcast_token=", "HttpOnly", "Path=/", "SameSite=strict", "Max-Age="):
            assert attribute in cookie
        assert "Secure" not in cookie  # plain http here
        assert 590 <= int(cookie.split("Max-Age=")[1].split(";")[0]) <= 600
        with client.stream("GET", "/topics/orders.q/events?after=earliest", headers=SSE) as stream:
            assert stream.status_code == 200  # the client sends the cookie back
            assert first_event(stream)["data"] == 1
        forgotten = client.delete("/auth/cookie")
        assert forgotten.status_code == 204
        assert "Max-Age=0" in forgotten.headers["set-cookie"]
        assert client.get("/topics/orders.q/events").status_code == 401
        refused = client.post("/auth/cookie", headers=bearer(token(ttl=-30)))
        assert refused.status_code == 401
        assert "set-cookie" not in refused.headers
        far_future = jwt.encode({"sub": "reader", "exp": 2**70}, SECRET, algorithm="HS256")
        refused = client.post("/auth/cookie", json={"token": far_future})
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
        assert "set-cookie" not in refused.headers


def test_websocket_handshakes(server: ServerProcess) -> None:
    with httpx.Client() as client:
        with connect_ws(
            ws_url(server, f"?token={READER}"), client, session_class=WebSocketSession
        ) as ws:
            send(ws, op="subscribe", id=1, topic="orders.*")
            assert receive(ws) == {"op": "subscribed", "id": 1}
        for query, headers, status in (
            ("?token=bad", {}, 401),
            ("", bearer(token(ttl=-30)), 401),
            ("", {**bearer(READER), "Origin": "https://evil.example"}, 403),
            ("", {**bearer(READER), "Origin": "http://["}, 403),  # not even a URL
        ):
            assert handshake_status(ws_url(server, query), headers) == status
        with connect_ws(
            ws_url(server),
            client,
            headers={"Origin": "https://app.example"},
            session_class=WebSocketSession,
        ) as ws:
            send(ws, op="auth", token=READER)
            assert receive(ws)["op"] == "authed"


def test_a_page_behind_the_shipped_nginx_site_opens_its_websocket(server: ServerProcess) -> None:
    """The page's own origin is allowed: the proxy must pass the Host the browser sent,
    port included, for the server to see that the origin is its own."""
    with nginx_in_front([server.url.removeprefix("http://")]) as proxy, httpx.Client() as client:
        url = proxy.replace("http", "ws", 1) + f"/ws?token={READER}"
        with connect_ws(
            url, client, headers={"Origin": proxy}, session_class=WebSocketSession
        ) as ws:
            send(ws, op="subscribe", id=1, topic="orders.*")
            assert receive(ws) == {"op": "subscribed", "id": 1}


def test_websocket_without_credentials(server: ServerProcess) -> None:
    with httpx.Client() as client:
        with connect_ws(ws_url(server), client, session_class=WebSocketSession) as ws:
            send(ws, op="auth", token="bad")
            assert receive(ws)["code"] == "unauthorized"
            send(ws, op="ping")
            assert closed_with(ws).code == 1008
        with connect_ws(
            ws_url(server), client, headers=bearer(READER), session_class=WebSocketSession
        ) as ws:
            send(ws, op="auth", token=READER)
            assert receive(ws)["message"] == "this connection is already authenticated"


def test_streams_end_when_their_token_expires(server: ServerProcess) -> None:
    """Both transports at once, on tokens that expire together."""
    short = token("brief", ttl=3, subscribe=[">"])
    started = time.monotonic()
    with (
        httpx.Client() as client,
        httpx.stream(
            "GET", f"{server.url}/events?topic=x", headers={**SSE, **bearer(short)}, timeout=10
        ) as stream,
        connect_ws(
            ws_url(server), client, headers=bearer(short), session_class=WebSocketSession
        ) as ws,
    ):
        closed = closed_with(ws, timeout=10)
        lines = list(stream.iter_lines())
    assert (closed.code, closed.reason) == (1008, "token expired")
    assert ": token expired" in lines
    assert time.monotonic() - started < 8


def test_publishes_are_rate_limited_per_subject(server: ServerProcess) -> None:
    writer = token("rate", publish=["orders.*"])
    url = f"{server.url}/topics/orders.r/events"
    answers = [httpx.post(url, json={"data": i}, headers=bearer(writer)) for i in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert answers[3].json()["error"] == "rate_limited"
    assert int(answers[3].headers["retry-after"]) >= 1
    other = token("rate-2", publish=["orders.*"])
    assert httpx.post(url, json={"data": 0}, headers=bearer(other)).status_code == 201
    with (
        httpx.Client() as client,
        connect_ws(
            ws_url(server), client, headers=bearer(writer), session_class=WebSocketSession
        ) as ws,
    ):
        send(ws, op="publish", ref=1, topic="orders.r", data=1)
        limited = receive(ws)
    assert (limited["code"], limited["ref"], limited["retry_after"] >= 1) == (
        "rate_limited",
        1,
        True,
    )


def test_streaming_connections_are_limited(server: ServerProcess) -> None:
    url = f"{server.url}/events?topic=orders.*"
    headers = {**SSE, **bearer(READER)}
    with httpx.Client(timeout=5) as client, ExitStack() as stack:
        for _ in range(3):
            assert (
                stack.enter_context(client.stream("GET", url, headers=headers)).status_code == 200
            )
        refused = client.get(url, headers=headers)
        assert refused.status_code == 503
        assert refused.json()["error"] == "too_many_connections"
        assert refused.headers["retry-after"] == "5"
        with connect_ws(
            ws_url(server), client, headers=bearer(READER), session_class=WebSocketSession
        ) as ws:
            assert closed_with(ws).code == 1013
    deadline = time.monotonic() + 5
    while httpx.get(url, headers=bearer(READER)).status_code != 200:  # slots free on close
        assert time.monotonic() < deadline


def test_cors_preflight_allows_the_protocol_headers(server: ServerProcess) -> None:
    asked = "authorization,content-type,idempotency-key,last-event-id"
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked,
    }
    url = f"{server.url}/topics/orders.c/events"
    allowed = httpx.options(url, headers={"Origin": "https://app.example", **preflight})
    foreign = httpx.options(url, headers={"Origin": "https://evil.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert set(allowed.headers["access-control-allow-headers"].lower().split(", ")) >= set(
        asked.split(",")
    )
    assert foreign.status_code == 400
    assert foreign.json()["error"] == "invalid_request"
    assert "origin" in foreign.json()["message"]
    patch = httpx.options(
        url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"}
    )
    assert (patch.status_code, patch.json()["error"]) == (400, "invalid_request")
    assert "method" in patch.json()["message"]


def test_a_subject_no_answer_could_carry_is_refused(server: ServerProcess) -> None:
    odd = token("\ud800", subscribe=["orders.>"])  # a lone surrogate, validly signed
    refused = httpx.post(f"{server.url}/auth/cookie", headers=bearer(odd))
    assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
    with (
        httpx.Client() as client,
        connect_ws(ws_url(server), client, session_class=WebSocketSession) as ws,
    ):
        send(ws, op="auth", token=odd)
        assert receive(ws)["code"] == "unauthorized"
        send(ws, op="auth", token=READER)
        assert receive(ws)["op"] == "authed"


def test_tokens_never_reach_the_log(server: ServerProcess) -> None:
    secret_token = token("logged", subscribe=[">"])
    with httpx.Client(base_url=server.url) as client:
        client.get("/topics/a/events", params={"token": secret_token})
        client.get("/topics/a/events", params={"token": secret_token + "x"})
        client.get(f"/topics/a/events?%74oken={secret_token}&t%6Fken={secret_token}")
        client.get("/topics/a/events", headers=bearer(secret_token))
        with connect_ws(
            ws_url(server, f"?token={secret_token}"), client, session_class=WebSocketSession
        ) as ws:
            send(ws, op="ping")
            receive(ws)
    assert handshake_status(ws_url(server, f"?token={secret_token}y")) == 401
    time.sleep(0.2)
    log = server.log()
    assert "token=[redacted]" in log
    assert "%74oken=[redacted]" in log
    assert "t%6Fken=[redacted]" in log
    assert secret_token.split(".")[2] not in log
    assert SECRET not in log


def test_without_auth_only_loopback_hosts_are_answered(shared_server: ServerProcess) -> None:
    assert httpx.get(f"{shared_server.url}/healthz").status_code == 200
    rebound = httpx.get(f"{shared_server.url}/healthz", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 403
    assert rebound.json()["error"] == "forbidden"
    assert handshake_status(ws_url(shared_server), {"Host": "evil.example"}) == 403


def pgcast(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AUTH_SECRET", "INSECURE")}
    return {**env, **extra}


def test_serve_refuses_a_public_address_without_auth(shared_server: ServerProcess) -> None:
    refused = pgcast("serve", "--host", "0.0.0.0", env=clean_env())
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in refused.stderr
    insecure = spawn(shared_server.database_url, extra_env={"HOST": "0.0.0.0", "INSECURE": "true"})
    try:
        assert "INSECURE: authentication is off" in insecure.log()
    finally:
        insecure.stop()
        insecure.log_path.unlink(missing_ok=True)


def test_token_create(server: ServerProcess) -> None:
    missing = pgcast("token", "create", "--sub", "a", env=clean_env())
    assert missing.returncode == 1
    assert "AUTH_SECRET is not set" in missing.stderr
    args = ("token", "create", "--sub", "cli", "--subscribe", "user.{sub}.>", "--ttl", "5m")
    created = pgcast(*args, env=clean_env(AUTH_SECRET=SECRET))
    assert created.returncode == 0, created.stderr
    made = created.stdout.strip()
    assert httpx.get(f"{server.url}/topics/user.cli.x/events", headers=bearer(made)).is_success
    assert (
        httpx.get(f"{server.url}/topics/user.bob.x/events", headers=bearer(made)).status_code == 403
    )
    bad = pgcast(
        "token", "create", "--sub", "a.b", "--publish", "{sub}", env=clean_env(AUTH_SECRET=SECRET)
    )
    assert bad.returncode == 1
    assert "one name segment" in bad.stderr
