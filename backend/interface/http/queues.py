"""HTTP routes for queues: enqueue, consume (SSE or one JSON claim), settle, dead-letter, stats."""

from __future__ import annotations

from typing import Any

import orjson
from anyio.streams.memory import MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import Response

from backend.connectors.store.idempotency import request_hash, validate_key
from backend.entities.event import format_time
from backend.entities.message import Message
from backend.interface.http.errors import RequestError
from backend.interface.http.inputs import (
    SMALL_BODY_BYTES,
    event_items,
    float_param,
    int_param,
    read_json,
    wants_sse,
)
from backend.interface.security.access import require, throttle
from backend.interface.security.auth import Permission, Principal
from backend.interface.server.state import AppState
from backend.interface.stream.sse import EventStream, sse_response
from backend.services.consume import STREAM_READ_AHEAD, claim_within, consume
from backend.services.queues import (
    MAX_DELAY_SECONDS,
    MAX_LEASE_SECONDS,
    number,
    parse_message_id,
    validate_queue,
)

MESSAGE_FIELDS = frozenset({"data", "key", "delay_seconds", "max_attempts"})
MAX_PREFETCH = 100
MAX_WAIT_SECONDS = 30.0


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _messages(messages: list[Message]) -> dict[str, Any]:
    return {"messages": [m.as_dict() for m in messages]}


def _queue(request: Request, permission: Permission) -> tuple[str, Principal]:
    """The path's queue name, once the caller is allowed `permission` on it."""
    queue = validate_queue(request.path_params["queue"])
    return queue, require(request, permission, queue)


async def enqueue(request: Request) -> Response:
    """POST /queues/{queue}/messages: one message or an array; 201 once committed."""
    state = AppState.of(request)
    queue, principal = _queue(request, Permission.PUBLISH)
    throttle(request, principal)
    body = await read_json(request, state.settings.max_body_bytes)
    queues = state.engine.queues
    messages = [
        queues.message(
            queue,
            item["data"],
            key=item.get("key"),
            delay_seconds=item.get("delay_seconds", 0),
            max_attempts=item.get("max_attempts", 5),
        )
        for item in event_items(body, "message", MESSAGE_FIELDS)
    ]
    key = request.headers.get("idempotency-key")
    if key is None:
        return _json(_messages(await queues.enqueue(messages)), 201)
    stored, replayed = await queues.enqueue_once(
        queue, validate_key(key), request_hash(body), messages
    )
    response = _json(_messages(stored), 201)
    response.headers["Idempotent-Replayed"] = "true" if replayed else "false"
    return response


async def consume_messages(request: Request) -> Response:
    """GET /queues/{queue}/messages: SSE stream of leased messages, or one JSON claim.

    Not HEAD, which Starlette routes here too: it would lease messages nobody receives."""
    if request.method == "HEAD":
        raise RequestError(405, "method_not_allowed", "claim messages with GET, not HEAD")
    state = AppState.of(request)
    queue, principal = _queue(request, Permission.CONSUME)
    params = request.query_params
    lease = float_param(params, "lease", 30.0, 0.1, MAX_LEASE_SECONDS)
    if wants_sse(request):
        prefetch = int_param(params, "prefetch", 1, 1, MAX_PREFETCH)
        return await _consumer_stream(state, queue, prefetch, lease, principal.expires_at)
    limit = int_param(params, "limit", 1, 1, MAX_PREFETCH)
    wait = float_param(params, "wait", 0.0, 0.0, MAX_WAIT_SECONDS)
    return _json(_messages(await claim_within(state.engine.queues, queue, limit, lease, wait)))


async def _consumer_stream(
    state: AppState, queue: str, prefetch: int, lease: float, expires_at: float | None
) -> EventStream:
    async def pump(send: MemoryObjectSendStream[bytes]) -> None:
        async with consume(
            state.engine.queues,
            queue,
            prefetch=prefetch,
            lease=lease,
            read_ahead=max(prefetch, STREAM_READ_AHEAD),
        ) as deliveries:
            async for delivery in deliveries:
                await send.send(b"event: message\ndata: %s\n\n" % delivery.message.to_json())

    return await sse_response(state, pump, expires_at)


async def _settle_body(request: Request) -> tuple[str, int, dict[str, Any], AppState]:
    state = AppState.of(request)
    queue, _ = _queue(request, Permission.CONSUME)
    message_id = parse_message_id(request.path_params["id"])
    body = await read_json(request, SMALL_BODY_BYTES)
    if not isinstance(body, dict) or not isinstance(body.get("lease"), str):
        raise RequestError(400, "invalid_request", "the body must be a JSON object with 'lease'")
    return queue, message_id, body, state


async def ack(request: Request) -> Response:
    """POST /queues/{queue}/messages/{id}/ack {"lease": ...}"""
    queue, message_id, body, state = await _settle_body(request)
    await state.engine.queues.ack(queue, message_id, body["lease"])
    return _json({"id": str(message_id), "state": "acked"})


async def nack(request: Request) -> Response:
    """POST /queues/{queue}/messages/{id}/nack {"lease", "delay_seconds"?, "error"?}"""
    queue, message_id, body, state = await _settle_body(request)
    delay = body.get("delay_seconds")
    error = body.get("error")
    if delay is not None:
        delay = number(delay, "delay_seconds", 0, MAX_DELAY_SECONDS)
    if error is not None and not isinstance(error, str):
        raise RequestError(400, "invalid_request", "error must be a string")
    moved = await state.engine.queues.nack(
        queue, message_id, body["lease"], delay=delay, error=error and error[:4000]
    )
    return _json(
        {
            "id": str(message_id),
            "state": moved.state,
            "attempt": moved.message.attempt,
            "available_at": format_time(moved.message.available_at),
        }
    )


async def extend(request: Request) -> Response:
    """POST /queues/{queue}/messages/{id}/extend {"lease", "seconds"}"""
    queue, message_id, body, state = await _settle_body(request)
    seconds = number(body.get("seconds"), "seconds", 0.1, MAX_LEASE_SECONDS)
    until = await state.engine.queues.extend(queue, message_id, body["lease"], seconds)
    return _json({"id": str(message_id), "lease_until": format_time(until)})


async def dead_letters(request: Request) -> Response:
    """GET /queues/{queue}/dead?after=ID&limit=N"""
    state = AppState.of(request)
    queue, _ = _queue(request, Permission.INSPECT)
    after = request.query_params.get("after")
    after_id = int_param(request.query_params, "after", 0, 0, 10**18) if after else 0
    limit = int_param(request.query_params, "limit", 100, 1, 1000)
    return _json(_messages(await state.engine.queues.dead(queue, after_id, limit)))


async def requeue_one(request: Request) -> Response:
    """POST /queues/{queue}/dead/{id}/requeue"""
    state = AppState.of(request)
    queue, _ = _queue(request, Permission.INSPECT)
    message_id = parse_message_id(request.path_params["id"])
    return _json(_messages(await state.engine.queues.requeue(queue, message_id)))


async def requeue_all(request: Request) -> Response:
    """POST /queues/{queue}/dead/requeue"""
    state = AppState.of(request)
    queue, _ = _queue(request, Permission.INSPECT)
    moved = await state.engine.queues.requeue(queue, None)
    return _json({"requeued": len(moved)})


async def queue_stats(request: Request) -> Response:
    """GET /queues/{queue}: ready, leased, delayed, dead, oldest ready age."""
    state = AppState.of(request)
    queue, _ = _queue(request, Permission.INSPECT)
    (stats,) = await state.engine.queues.stats(queue)
    return _json(stats.as_dict())


async def all_queues(request: Request) -> Response:
    """GET /queues"""
    state = AppState.of(request)
    require(request, Permission.ADMIN)
    return _json({"queues": [s.as_dict() for s in await state.engine.queues.stats()]})
