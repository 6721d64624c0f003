"""Write a subscription into your own table in bulk: one INSERT per batch, not per event.

`batch` hands over up to 100 events at a time, or whatever arrived within half a second,
so a quiet stream is still written promptly and a busy one in few round trips.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing

import asyncpg

from backend.core.settings import Settings
from backend.services import Engine, batch, publish, streams, subscribe, take


async def main(url: str) -> list[int]:
    db = await asyncpg.connect(url)
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS big_orders (id int, total int)")
        async with Engine.open(url, Settings()), subscribe("orders.created") as events:
            for order in range(1, 251):
                await publish("orders.created", {"id": order, "total": order * 3})
            big = streams.filter(take(events, 250), lambda event: event.data["total"] > 300)
            rows = streams.map(big, lambda event: (event.data["id"], event.data["total"]))
            sizes = []
            async with aclosing(rows) as upstream, batch(upstream, 100, 0.5) as batches:
                async for chunk in batches:
                    await db.executemany("INSERT INTO big_orders VALUES ($1, $2)", chunk)
                    sizes.append(len(chunk))
            return sizes
    finally:
        await db.execute("DROP TABLE big_orders")
        await db.close()


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1])))
