"""Turn events into work: every new order puts one e-mail job on a queue.

A subscription is fan-out (every subscriber sees every order); the queue is
point-to-point (each job goes to one worker, with retries). `amap` runs the enqueue for
each event in order, and the subscription resumes from the last id on a restart.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing

from backend.core.settings import Settings
from backend.entities.event import Event
from backend.entities.message import Message
from backend.services import Engine, amap, consume, enqueue, publish, subscribe, take


async def email_job(event: Event) -> Message:
    return await enqueue("emails", {"to": event.data["customer"], "order": event.data["id"]})


async def main(url: str) -> list[str]:
    async with Engine.open(url, Settings()), subscribe("orders.created") as orders:
        for order, customer in enumerate(["ann@example.com", "bob@example.com"], start=1):
            await publish("orders.created", {"id": order, "customer": customer})
        async with aclosing(amap(take(orders, 2), email_job)) as jobs:
            async for _ in jobs:
                pass
        sent = []
        async with consume("emails") as deliveries, aclosing(take(deliveries, 2)) as work:
            async for delivery in work:
                sent.append(delivery.data["to"])
                await delivery.ack()
        return sent


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1])))
