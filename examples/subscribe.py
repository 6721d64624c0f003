"""pgcast inside your own Python process: publish, subscribe and consume on its database.

From the repository, with `make run` serving:
DATABASE_URL=$(.venv/bin/pgcast db url) .venv/bin/python examples/subscribe.py
"""

import asyncio
import os

from backend.core.settings import Settings
from backend.services import Engine, consume, enqueue, publish, subscribe


async def main() -> None:
    url = os.environ["DATABASE_URL"]
    async with Engine.open(url, Settings()):
        await publish("orders.created", {"id": 43})
        async with subscribe("orders.>", after="earliest") as events:
            async for event in events:
                print(event.id, event.topic, event.data)
                if event.data == {"id": 43}:
                    break  # a real subscriber keeps going
        await enqueue("emails", {"to": "cy@example.com"})
        async with consume("emails", prefetch=4) as deliveries:
            async for delivery in deliveries:
                print("message", delivery.id, delivery.data)
                await delivery.ack()
                if delivery.data == {"to": "cy@example.com"}:
                    break


asyncio.run(main())
