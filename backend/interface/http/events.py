"""HTTP routes for topics: publish, JSON pages and Server-Sent Events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from backend.connectors.store.idempotency import request_hash, validate_key
from backend.core.filters import compile_filter
from backend.core.names import Pattern, parse_patterns, validate_name
from backend.entities.event import format_id
from backend.interface.http.inputs import (
    event_items,
    float_param,
    int_param,
    parse_after,
    read_json,
    wants_sse,
)
from backend.interface.security.access import require, throttle
from backend.interface.security.auth import Permission
from backend.interface.server.state import AppState
from backend.interface.stream.encoding import envelopes_json
from backend.interface.stream.sse import event_stream

MAX_PAGE = 1000
JSON_CONTENT_TYPE = (b"content-type", b"application/json")
MAX_WAIT_SECONDS = 30.0


class PublishRoute:
    """POST /topics/{topic}/events as a bare ASGI app: the hottest route skips Starlette's
    per-route wrapper (a Request, an exception-handling layer and a Response object per
    request) and sends its answer as two messages. A raised error reaches the app's
    exception handlers exactly as from any other route, so every error body is the same."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, body = await publish_to_topic(Request(scope, receive))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def publish_to_topic(request: Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One event or an array; 201 once committed, as (status, raw headers, body)."""
    state = AppState.of(request)
    topic = validate_name(request.path_params["topic"], "topic")
    throttle(request, require(request, Permission.PUBLISH, topic))
    body = await read_json(request, state.settings.max_body_bytes)
    items = event_items(body)
    engine = state.engine
    events = [
        engine.event(topic, item["data"], type=item.get("type"), key=item.get("key"))
        for item in items
    ]
    key = request.headers.get("idempotency-key")
    replayed = False
    if key is None:
        published = await engine.publish_many(events)
    else:
        published, replayed = await engine.publish_once(
            topic, validate_key(key), request_hash(body), events
        )
    if not replayed:
        state.metrics.published.inc(len(published))
    answer = b'{"events":' + envelopes_json(published) + b"}"
    headers = [(b"content-length", b"%d" % len(answer)), JSON_CONTENT_TYPE]
    if key is not None:
        headers.append((b"idempotent-replayed", b"true" if replayed else b"false"))
    return 201, headers, answer


async def topic_events(request: Request) -> Response:
    """GET /topics/{topic}/events (the topic may be a pattern)."""
    return await _read(request, parse_patterns([request.path_params["topic"]]))


async def events(request: Request) -> Response:
    """GET /events?topic=a&topic=b.> (at most MAX_PATTERNS topics)."""
    limit = AppState.of(request).settings.max_patterns
    return await _read(request, parse_patterns(request.query_params.getlist("topic"), limit))


async def _read(request: Request, patterns: tuple[Pattern, ...]) -> Response:
    state = AppState.of(request)
    principal = require(request, Permission.SUBSCRIBE, *(p.text for p in patterns))
    flt = compile_filter(request.query_params.get("filter"))
    if wants_sse(request):
        last_id = request.headers.get("last-event-id")
        after = parse_after(last_id if last_id else request.query_params.get("after"))
        return await event_stream(state, patterns, after, flt, principal.expires_at)
    after = parse_after(request.query_params.get("after"))
    limit = int_param(request.query_params, "limit", 100, 1, MAX_PAGE)
    wait = float_param(request.query_params, "wait", 0.0, 0.0, MAX_WAIT_SECONDS)
    page = await state.engine.read_page(patterns, after, flt, limit, wait)
    body = b'{"events":%s,"next":"%s"}' % (
        envelopes_json(page.events),
        format_id(page.next).encode(),
    )
    return Response(body, 200, media_type="application/json")
