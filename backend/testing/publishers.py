"""HTTP publishers and queue producers for fault-injection tests.

A publisher labels each event (`{"label": "<name>-<n>", "t": <wall clock>}`) so the checker
can tell its events apart in the log. An idempotent publisher sends an `Idempotency-Key`
equal to the label and retries the same body on connection errors and `503` (switching to
the next server URL, if it has several) until it gets a `201`: nothing is lost and nothing
is published twice. A plain publisher never retries; an event whose answer it did not get
is `uncertain` (it may or may not be in the log, but never twice).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson

RETRY_SECONDS = 0.1
MAX_ATTEMPTS = 1000


@dataclass
class Publisher:
    name: str
    urls: Sequence[str]
    topic: str
    idempotent: bool = True
    pad: int = 0
    acked: dict[str, str] = field(default_factory=dict)
    """label -> event id, for every 201."""
    uncertain: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    replays: int = 0
    index: int = 0

    @property
    def url(self) -> str:
        return self.urls[self.index % len(self.urls)]

    @property
    def labels(self) -> list[str]:
        """Every label this publisher tried, in order."""
        return [*self.acked, *self.uncertain]

    @property
    def last_id(self) -> str:
        return max(self.acked.values(), default="")

    async def run(
        self, stop: anyio.Event, *, count: int = 1_000_000, interval: float = 0.02
    ) -> None:
        """Publish one event at a time until `stop` is set or `count` events were tried."""
        async with httpx.AsyncClient(timeout=10) as client:
            for n in range(count):
                if stop.is_set():
                    return
                await self.publish(client, f"{self.name}-{n}")
                await anyio.sleep(interval)

    async def burst(self, count: int, *, batch: int = 100) -> None:
        """Publish `count` events as fast as possible, `batch` per request."""
        async with httpx.AsyncClient(timeout=30) as client:
            for start in range(0, count, batch):
                labels = [f"{self.name}-{n}" for n in range(start, min(count, start + batch))]
                await self.publish(client, *labels)

    def _data(self, label: str) -> dict[str, Any]:
        data: dict[str, Any] = {"label": label, "t": time.time()}
        if self.pad:
            data["pad"] = "x" * self.pad
        return data

    async def publish(self, client: httpx.AsyncClient, *labels: str) -> None:
        """Publish one event per label in one request (one batch, atomic)."""
        label = labels[0]
        body = orjson.dumps([{"data": self._data(each)} for each in labels])
        headers = {"Content-Type": "application/json"}
        if self.idempotent:
            headers["Idempotency-Key"] = label
        for _ in range(MAX_ATTEMPTS):
            try:
                response = await client.post(
                    f"{self.url}/topics/{self.topic}/events", content=body, headers=headers
                )
            except httpx.TransportError:
                self.errors += 1
                response = None
            if response is not None:
                self.statuses[response.status_code] += 1
                if response.status_code == 201:
                    for each, event in zip(labels, response.json()["events"], strict=True):
                        self.acked[each] = event["id"]
                    self.replays += response.headers.get("idempotent-replayed") == "true"
                    return
                if response.status_code != 503:
                    raise AssertionError(
                        f"{self.name}: publish {label} got {response.status_code}: {response.text}"
                    )
            if not self.idempotent:
                self.uncertain.extend(labels)
                return
            self.index += 1
            await anyio.sleep(RETRY_SECONDS)
        raise AssertionError(f"{self.name}: {label} got no 201 in {MAX_ATTEMPTS} attempts")


def last_id(publishers: Sequence[Publisher]) -> str:
    """The highest id any of them got a 201 for."""
    return max((p.last_id for p in publishers), default="")


def all_acked(publishers: Sequence[Publisher]) -> dict[str, str]:
    return {label: i for p in publishers for label, i in p.acked.items()}


async def enqueue(
    url: str, queue: str, count: int, *, batch: int = 100, max_attempts: int = 5
) -> list[int]:
    """Enqueue `count` messages in idempotent batches; returns their ids."""
    ids: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for start in range(0, count, batch):
            items = [
                {"data": {"n": n}, "max_attempts": max_attempts}
                for n in range(start, min(count, start + batch))
            ]
            response = await post_retrying(
                client, f"{url}/queues/{queue}/messages", items, f"{queue}-{start}"
            )
            ids += [int(m["id"]) for m in response["messages"]]
    return ids


async def post_retrying(
    client: httpx.AsyncClient, url: str, body: Any, key: str, *, attempts: int = 300
) -> Any:
    """POST with an Idempotency-Key, retrying connection errors and 503; the JSON answer."""
    for _ in range(attempts):
        try:
            response = await client.post(url, json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            await anyio.sleep(RETRY_SECONDS)
            continue
        if response.status_code == 201:
            return response.json()
        if response.status_code != 503:
            raise AssertionError(f"POST {url} got {response.status_code}: {response.text}")
        await anyio.sleep(RETRY_SECONDS)
    raise AssertionError(f"POST {url} got no 201 in {attempts} attempts")
