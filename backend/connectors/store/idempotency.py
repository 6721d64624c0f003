"""Idempotency keys: a retried request with the same key and body changes nothing.

The key is recorded in the same transaction as what the request stored, so a key exists if
and only if its effect was committed. A concurrent duplicate waits on the key's unique
index, then finds the committed record. Keys live at least `IDEMPOTENCY_TTL` (24 h).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from backend.connectors.database import Connection, Pool
from backend.core import exactjson
from backend.core.errors import Conflict, InvalidEvent

MAX_KEY_LENGTH = 200

# Stores the request's effect inside the open transaction and returns its row references.
Store = Callable[[Connection], Awaitable[list[int]]]


def validate_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidEvent(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters")
    return key


def request_hash(body: object) -> bytes:
    """Hash of the request's meaning (JSON with sorted keys), not of its exact bytes."""
    return hashlib.sha256(exactjson.dumps(body, sort_keys=True)).digest()


async def run_once(
    pool: Pool, scope: str, key: str, digest: bytes, store: Store
) -> tuple[list[int], bool]:
    """Run `store` unless this key already ran; returns (refs, replayed)."""
    async with pool.acquire() as conn:
        while True:
            found = await conn.fetchrow(
                "SELECT request_hash, refs FROM pgcast.idempotency_keys"
                " WHERE scope = $1 AND key = $2",
                scope,
                key,
            )
            if found is not None:
                if bytes(found["request_hash"]) != digest:
                    raise Conflict(
                        f"Idempotency-Key {key!r} was already used with a different request body"
                    )
                return list(found["refs"]), True
            async with conn.transaction():
                claimed = await conn.fetchval(
                    "INSERT INTO pgcast.idempotency_keys (scope, key, request_hash, refs)"
                    " VALUES ($1, $2, $3, '{}') ON CONFLICT DO NOTHING RETURNING true",
                    scope,
                    key,
                    digest,
                )
                if claimed:
                    refs = await store(conn)
                    await conn.execute(
                        "UPDATE pgcast.idempotency_keys SET refs = $3"
                        " WHERE scope = $1 AND key = $2",
                        scope,
                        key,
                        refs,
                    )
                    return refs, False


async def prune_keys(conn: Connection, older_than: timedelta, now: datetime) -> int:
    deleted: Sequence[object] = await conn.fetch(
        "DELETE FROM pgcast.idempotency_keys WHERE created_at < $1 RETURNING 1",
        now - older_than,
    )
    return len(deleted)
