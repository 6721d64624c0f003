"""`Subscription.stop` from another task (a token's expiry, shutdown, a client gone) ends
the stream after the current page, whichever phase the stream is in."""

from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest

from backend.entities.event import Event
from backend.services.hub_test import publish, running_hub
from backend.services.subscribe import EARLIEST, start_subscription
from backend.testing.memory_log import MemoryLog

pytestmark = pytest.mark.anyio


async def test_a_stop_during_the_last_page_of_catch_up_ends_the_stream() -> None:
    """The transport is writing a backlog page that ends near the head when the session
    is ended (`Session.end` calls `stop` once). The catch-up loop must not join the hub
    then: nothing would close the new registration's buffer, and the stream would outlive
    its farewell, delivering new events (to a client whose token has expired) until the
    hub closed."""
    log = MemoryLog()
    async with running_hub(log, buffer_size=4) as hub:
        publish(log, hub, "t", 6)
        await hub.wait_beyond(5)
        subscription = await start_subscription(hub, "t", after=EARLIEST)
        subscription.page_size = 5
        after_stop: list[Event] = []
        ended = False
        async with aclosing(subscription.batches()) as batches:
            first = await anext(batches)  # the transport writes this page...
            assert [e.pos for e in first] == [1, 2, 3, 4, 5]
            subscription.stop()  # ...when the token expires
            publish(log, hub, "t", 1)  # published after the farewell
            with anyio.move_on_after(1):
                async for batch in batches:
                    after_stop += batch
                ended = True
        subscription.close()
    delivered = [e.pos for e in after_stop]
    assert ended, f"stop() did not end the stream; after it, it delivered {delivered}"
