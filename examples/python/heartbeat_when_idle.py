"""Tell a consumer that the stream is alive while nothing happens.

`heartbeat` adds a beat after every quiet interval, the way the SSE endpoint sends a
comment line, so a watchdog downstream can tell "idle" from "stuck".
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing

from backend.core.settings import Settings
from backend.services import Engine, heartbeat, publish, subscribe, take


async def main(url: str) -> list[str]:
    async with Engine.open(url, Settings()), subscribe("alerts.>") as alerts:
        await publish("alerts.disk", {"free": "3%"})
        async with (
            heartbeat(alerts, 0.2, lambda: "beat") as lively,
            aclosing(take(lively, 3)) as first_three,
        ):
            return [item if isinstance(item, str) else item.topic async for item in first_three]


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1])))
