"""A queue consumer process for kill tests: acks or nacks at random and logs its acks.

Run as `python -m backend.testing.queue_worker DATABASE_URL QUEUE LOG NACK_RATE SEED`.
Each successful ack is appended to LOG as one line (the message id), flushed at once.
"""

from __future__ import annotations

import random
import sys
from typing import TextIO

import anyio

from backend.core.settings import Settings
from backend.services.engine import Engine


async def work(url: str, queue: str, log: TextIO, nack_rate: float, seed: int) -> None:
    rng = random.Random(seed)
    settings = Settings(
        database_url=url,
        queue_backoff_base_seconds=0.05,
        queue_backoff_cap_seconds=0.2,
        queue_reap_interval_seconds=0.2,
        poll_interval_seconds=0.2,
    )
    async with (
        Engine.open(url, settings) as engine,
        engine.consume(queue, prefetch=2, lease=1.0) as deliveries,
    ):
        async for delivery in deliveries:
            await anyio.sleep(rng.random() * 0.01)
            if rng.random() < nack_rate:
                await delivery.nack(error="random failure")
            else:
                await delivery.ack()
                log.write(f"{delivery.id}\n")


if __name__ == "__main__":
    url, queue, log_path, rate, seed = sys.argv[1:6]
    with open(log_path, "a", buffering=1) as log:
        anyio.run(work, url, queue, log, float(rate), int(seed))
