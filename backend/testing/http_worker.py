"""A queue consumer over the server's HTTP API, for kill tests; it logs what it processes and acks.

Run as `python -m backend.testing.http_worker BASE_URL QUEUE ACK_LOG PROCESSED_LOG NACK_RATE SEED`.

It consumes the queue's SSE stream (prefetch 2), and for each message: appends its id to
PROCESSED_LOG, works for a few milliseconds, then nacks (with probability NACK_RATE) or
acks it over HTTP. After an ack answered `200` it appends the id to ACK_LOG. Both files
are written one line per call, flushed at once, so a SIGKILL loses at most the line of the
ack in flight. Connection failures are retried; the process runs until it is killed.
"""

from __future__ import annotations

import random
import sys
import time
from typing import TextIO

import httpx
import orjson
from httpx_sse import SSEError, connect_sse

MAX_CONNECTS = 100_000
LEASE_SECONDS = 5


def settle(
    client: httpx.Client, base: str, message: dict[str, object], nack: bool, acks: TextIO
) -> None:
    verb = "nack" if nack else "ack"
    body: dict[str, object] = {"lease": message["lease"]}
    if nack:
        body["error"] = "random failure"
    response = client.post(f"{base}/{message['id']}/{verb}", json=body)
    if response.status_code == 200 and not nack:
        acks.write(f"{message['id']}\n")


def work(
    url: str, queue: str, acks: TextIO, processed: TextIO, nack_rate: float, seed: int
) -> None:
    rng = random.Random(seed)
    base = f"{url}/queues/{queue}/messages"
    params = {"prefetch": "2", "lease": str(LEASE_SECONDS)}
    with httpx.Client(timeout=httpx.Timeout(10, read=30)) as client:
        for _ in range(MAX_CONNECTS):
            try:
                with connect_sse(client, "GET", base, params=params) as source:
                    for sse in source.iter_sse():
                        if sse.event != "message" or not sse.data:
                            continue
                        message = orjson.loads(sse.data)
                        processed.write(f"{message['id']}\n")
                        time.sleep(rng.random() * 0.03)
                        settle(client, base, message, rng.random() < nack_rate, acks)
            except (httpx.TransportError, SSEError):
                pass
            time.sleep(0.1)


if __name__ == "__main__":
    url, queue, ack_path, processed_path, rate, seed = sys.argv[1:7]
    with open(ack_path, "a", buffering=1) as acks, open(processed_path, "a", buffering=1) as done:
        work(url, queue, acks, done, float(rate), int(seed))
