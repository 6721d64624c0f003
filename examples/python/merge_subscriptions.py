"""Merge two subscriptions into one stream: orders and payments, in arrival order.

Run against a pgcast database: `python examples/python/merge_subscriptions.py "$(pgcast db url)"`
(or any DATABASE_URL that `pgcast migrate` has prepared).
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing

from backend.core.settings import Settings
from backend.services import Engine, merge, publish, subscribe, take


async def main(url: str) -> list[str]:
    async with (
        Engine.open(url, Settings()),
        subscribe("orders.>") as orders,
        subscribe("payments.>") as payments,
    ):
        await publish("orders.created", {"order": 1})
        await publish("payments.received", {"order": 1, "amount": 30})
        async with merge(orders, payments) as both, aclosing(take(both, 2)) as first_two:
            return [event.topic async for event in first_two]


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1])))
