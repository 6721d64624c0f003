"""Subscribers that resume after every disconnect and record what they get (for `checker`).

SSE and WebSocket followers run as tasks in the test; a CLI follower runs `pgcast tail` as
a process. Each resumes after the last id it received (`Last-Event-ID`, `after`), moving to
the next of its server URLs when a connection fails. A follower may also disconnect on its
own after a random number of events (`drop`), to exercise resuming under load.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio
import httpx
import orjson
from httpx_sse import SSEError, aconnect_sse
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketNetworkError,
    aconnect_ws,
)

from backend.testing import cli
from backend.testing.checker import Received

RESET_EVENT = "pgcast.reset"
MAX_CONNECTS = 10_000
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0


@dataclass
class Follower:
    """One subscriber: where it connects, what it follows and what it has received."""

    received: Received
    urls: Sequence[str]
    pattern: str
    idle: float = 5.0
    """Seconds without any bytes (SSE) or frames (WS) before the link counts as dead."""
    drop: tuple[int, int] | None = None
    """Disconnect on purpose after a random number of events in this range."""
    seed: int = 0
    on_data: Callable[[str], None] | None = None
    failures: int = 0
    """Connections that ended without the follower asking (errors, server closes)."""
    resets: list[str] = field(default_factory=list)
    index: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        return self.urls[self.index % len(self.urls)]

    def budget(self) -> int | None:
        return None if self.drop is None else self.rng.randint(*self.drop)

    def deliver(self, event_id: str, data: str) -> None:
        self.received.add(event_id)
        if self.on_data is not None:
            self.on_data(data)

    async def lost(self, backoff: float) -> float:
        """After a failed connection: next URL, wait, and the next (longer) wait."""
        self.failures += 1
        self.index += 1
        await anyio.sleep(backoff)
        return min(backoff * 2, MAX_BACKOFF)


Session = Callable[[httpx.AsyncClient, Follower], Awaitable[bool]]


async def _follow(follower: Follower, client: httpx.AsyncClient, session: Session) -> None:
    """Run `session` again and again; back off after failures that brought nothing new."""
    backoff = FIRST_BACKOFF
    for _ in range(MAX_CONNECTS):
        count = len(follower.received.ids)
        on_purpose = await session(client, follower)
        follower.received.reconnects += 1
        if len(follower.received.ids) > count:
            backoff = FIRST_BACKOFF
        if not on_purpose:
            backoff = await follower.lost(backoff)


async def follow_sse(follower: Follower) -> None:
    """Follow `pattern` over SSE until cancelled."""
    timeout = httpx.Timeout(10, read=follower.idle)
    async with httpx.AsyncClient(timeout=timeout) as client:
        await _follow(follower, client, _sse_session)


async def _sse_session(client: httpx.AsyncClient, follower: Follower) -> bool:
    """One connection; True when the follower dropped it on purpose."""
    headers = {"Accept": "text/event-stream", "Last-Event-ID": follower.received.last}
    url = f"{follower.url}/events"
    try:
        async with aconnect_sse(
            client, "GET", url, params={"topic": follower.pattern}, headers=headers
        ) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                if source.response.status_code < 500:
                    raise AssertionError(f"GET {url}: {source.response.text}")
                return False
            budget = follower.budget()
            async for message in source.aiter_sse():
                if message.event == RESET_EVENT:
                    follower.resets.append(message.data)
                    continue
                if not message.data or not message.id:
                    continue  # the retry hint, heartbeats
                follower.deliver(message.id, message.data)
                if budget is not None:
                    budget -= 1
                    if budget <= 0:
                        return True
    except (httpx.TransportError, SSEError):
        return False
    return False


async def follow_ws(follower: Follower) -> None:
    """Follow `pattern` over one WebSocket subscription until cancelled."""
    async with httpx.AsyncClient(timeout=10) as client:
        await _follow(follower, client, _ws_session)


async def _ws_session(client: httpx.AsyncClient, follower: Follower) -> bool:
    url = follower.url.replace("http", "ws", 1) + "/ws"
    on_purpose = False
    try:
        async with aconnect_ws(
            url, client, subprotocols=["pgcast.v1"], session_class=AsyncWebSocketSession
        ) as ws:
            on_purpose = await _ws_frames(ws, follower)
    except* (HTTPXWSException, httpx.TransportError, OSError):
        on_purpose = False
    return on_purpose


async def _ws_frames(ws: AsyncWebSocketSession, follower: Follower) -> bool:
    subscribe = {"op": "subscribe", "id": "f", "topic": follower.pattern}
    await ws.send_text(orjson.dumps({**subscribe, "after": follower.received.last}).decode())
    budget = follower.budget()
    quiet = 0
    while quiet < 2:
        try:
            raw = await ws.receive_text(timeout=follower.idle)
        except TimeoutError:
            quiet += 1  # a ping must get a pong before the next timeout
            await ws.send_text('{"op":"ping"}')
            continue
        except (WebSocketDisconnect, WebSocketNetworkError):
            return False
        quiet = 0
        frame = orjson.loads(raw)
        if frame["op"] == "event":
            follower.deliver(frame["id"], raw)
            if budget is not None:
                budget -= 1
                if budget <= 0:
                    return True
        elif frame["op"] == "reset":
            follower.resets.append(raw)
        elif frame["op"] == "error":
            if frame.get("code") == "database_unavailable":
                return False  # the subscription ended; resubscribe on a new connection
            raise AssertionError(f"error frame: {raw}")
    return False


class CliTail:
    """`pgcast tail PATTERN --from <last id>` as a process, its JSON Lines recorded."""

    def __init__(self, received: Received, url: str, pattern: str) -> None:
        self.received = received
        self.stderr: list[str] = []
        self.process = cli.start(url, "tail", pattern, "--from", received.last, "--output", "jsonl")
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.threads = [
            threading.Thread(target=self._read_events, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_errors, args=(self.process.stderr,), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _read_events(self, pipe: Iterable[str]) -> None:
        for line in pipe:
            self.received.add(orjson.loads(line)["id"])

    def _read_errors(self, pipe: Iterable[str]) -> None:
        for line in pipe:
            self.stderr.append(line.rstrip("\n"))

    def stop(self) -> None:
        """Kill the process and wait for it and its readers."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for thread in self.threads:
            thread.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


async def wait_caught_up(
    subscribers: Sequence[Received], target: str, *, within: float = 30
) -> None:
    """Until every subscriber's last id is at least `target`, or AssertionError naming them."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(r.last >= target for r in subscribers):
            return
        await anyio.sleep(0.05)
    behind = {r.name: r.last for r in subscribers if r.last < target}
    raise AssertionError(f"not caught up to {target} after {within} s: {behind}")
