"""One page of events for request/response readers (JSON paging and long-polling)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from backend.connectors.store.log import END_OF_LOG
from backend.core.filters import Filter
from backend.core.names import Pattern
from backend.entities.event import Event
from backend.services.hub import Hub
from backend.services.log_reader import LogReader
from backend.services.subscribe import expired, resolve_start


@dataclass(frozen=True, slots=True)
class EventPage:
    """Matching events and the position to continue after (past filtered-out events too)."""

    events: list[Event]
    next: int


async def read_page(
    hub: Hub,
    patterns: Sequence[Pattern],
    after: str | int,
    filter: Filter | None,
    limit: int,
    wait: float,
) -> EventPage:
    """Up to `limit` events after `after`; when there are none, wait up to `wait` seconds."""
    wanted = tuple(patterns)
    position = await resolve_start(hub.log, after)
    found: list[Event] = []
    position = await _scan(hub.log, wanted, position, filter, limit, found, hub.position)
    deadline = anyio.current_time() + wait
    while not found and (remaining := deadline - anyio.current_time()) > 0:
        with anyio.move_on_after(remaining):
            await hub.wait_beyond(max(position, hub.position))
        position = await _scan(hub.log, wanted, position, filter, limit, found, hub.position)
    return EventPage(found, position)


async def _scan(
    log: LogReader,
    patterns: tuple[Pattern, ...],
    position: int,
    filter: Filter | None,
    limit: int,
    found: list[Event],
    head: int,
) -> int:
    """Fill `found` up to `limit` from the log; returns the position scanned through.

    Reaching the end of the log means nothing matched up to `head` (the hub had read that
    far before this scan began, so it was visible to it): the position moves there, so
    `next` also passes over other topics' events and stays ahead of retention.
    """
    while len(found) < limit:
        page = await log.read_page(patterns, position, END_OF_LOG, limit)
        if page.pruned_through > position:
            raise expired("pruned", page.pruned_through, "the log was pruned past this position")
        for event in page.events:
            position = event.pos
            if filter is None or filter.matches(event.envelope()):
                found.append(event)
                if len(found) == limit:
                    return position
        if len(page.events) < limit:
            return max(position, head)
    return position
