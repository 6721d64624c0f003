"""Show a fast-moving value on a screen at most five times a second, always ending current.

`throttle` keeps only the newest item while the consumer waits, so a display never falls
behind the feed and the final value is always shown.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing

from backend.core.settings import Settings
from backend.services import Engine, publish, subscribe, take, throttle


async def main(url: str) -> list[int]:
    async with Engine.open(url, Settings()), subscribe("prices.acme") as ticks:
        for price in range(100, 150):
            await publish("prices.acme", price)
        async with aclosing(take(ticks, 50)) as feed, throttle(feed, 0.2) as screen:
            return [tick.data async for tick in screen]


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1])))
