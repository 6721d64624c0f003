"""A WebSocket subscriber (docs/protocol.md §9.3): prints the events of orders.>.

It stops after `limit` events; a real client keeps going, persists each id and
resubscribes after it on reconnect.
"""

import asyncio
import json
import os

from websockets.asyncio.client import connect

BASE = os.environ.get("PGCAST_URL", "http://127.0.0.1:8000")


async def main(last_id: str | None, limit: int) -> None:
    url = BASE.replace("http", "ws", 1) + "/ws"
    async with connect(url, subprotocols=["pgcast.v1"], max_size=2**21) as ws:
        subscribe = {"op": "subscribe", "id": "orders", "topic": "orders.>"}
        await ws.send(json.dumps({**subscribe, "after": last_id or "earliest"}))
        seen = 0
        async for raw in ws:
            frame = json.loads(raw)
            if frame["op"] == "event":
                print(frame["id"], frame["topic"], frame["data"])  # then persist frame["id"]
                seen += 1
                if seen == limit:
                    return
            elif frame["op"] == "reset":
                print("gap; oldest available is", frame["oldest"], frame["reason"])
            elif frame["op"] == "error":
                print("error", frame)


asyncio.run(main(None, limit=2))
