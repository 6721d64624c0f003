"""GET /topics: the topics of the retained log with their event count and newest event."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from backend.core.names import Pattern, validate_name
from backend.entities.event import format_id, format_time
from backend.interface.http.inputs import int_param
from backend.interface.security.access import require
from backend.interface.security.auth import Permission
from backend.interface.server.state import AppState

MAX_TOPICS = 1000
EVERY_TOPIC = ">"


async def topics(request: Request) -> Response:
    """GET /topics?pattern=orders.>&after=NAME&limit=N, listed like a subscription is allowed."""
    params = request.query_params
    pattern = Pattern.parse(params.get("pattern") or EVERY_TOPIC)
    require(request, Permission.SUBSCRIBE, pattern.text)
    after = params.get("after") or ""
    if after:
        validate_name(after, "topic")
    limit = int_param(params, "limit", 100, 1, MAX_TOPICS)
    found = await AppState.of(request).engine.topics(pattern, after, limit)
    body = {
        "topics": [
            {
                "topic": summary.topic,
                "events": summary.events,
                "newest_id": format_id(summary.newest_pos),
                "newest_time": format_time(summary.newest_time),
            }
            for summary in found
        ],
        "next": found[-1].topic if len(found) == limit else None,
    }
    return Response(orjson.dumps(body), 200, media_type="application/json")
