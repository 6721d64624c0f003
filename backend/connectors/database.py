"""The connection pool every service shares, and URL helpers.

Services speak SQL through asyncpg directly: the hot paths (group commit, the hub's read,
queue claims) are single statements where an ORM would only add overhead. SQLAlchemy models
in `backend.entities` remain the schema's source of truth for Alembic.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import orjson

from backend.core.errors import ConfigError, DatabaseUnavailable, PgcastError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool

# Errors that mean "the database is not reachable right now", as opposed to a bad statement.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionFailureError,
    TimeoutError,
)
# Errors that mean "the server answered, and DATABASE_URL is wrong": retrying cannot help.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
)

APPLICATION_NAME = "pgcast"
LISTENER_APPLICATION_NAME = "pgcast-listener"


def asyncpg_dsn(url: str) -> str:
    """asyncpg wants plain postgresql:// URLs."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def without_password(url: str) -> str:
    """The URL as it may be printed or logged: any password is dropped."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy needs the driver named in the scheme."""
    plain = asyncpg_dsn(url).replace("postgres://", "postgresql://", 1)
    return plain.replace("postgresql://", "postgresql+asyncpg://", 1)


def connect_failure(exc: BaseException) -> PgcastError | None:
    """The typed error for a failed connection attempt, looking through wrapping exceptions.

    SQLAlchemy (under Alembic) and asyncpg's pool wrap the driver's error; whatever wraps
    it, a refusal becomes a ConfigError naming DATABASE_URL and an unreachable server
    DatabaseUnavailable, so start-up can report it in one line. None for anything else.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PgcastError):
            return current
        if isinstance(current, REFUSED_ERRORS):
            return ConfigError(f"DATABASE_URL: {current}")
        if isinstance(current, UNAVAILABLE_ERRORS):
            return DatabaseUnavailable(f"cannot connect to the database: {current}")
        current = current.__cause__ or current.__context__
    return None


async def _init_connection(conn: Connection) -> None:
    """jsonb travels as text decoded by orjson; events keep their raw JSON bytes elsewhere."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        format="text",
    )


async def connect(
    url: str, *, connect_timeout: float = 10, application_name: str = "pgcast"
) -> Connection:
    """One standalone connection (the LISTEN connection, tests)."""
    try:
        conn: Connection = await asyncpg.connect(
            asyncpg_dsn(url),
            timeout=connect_timeout,
            server_settings={"application_name": application_name},
        )
    except (*UNAVAILABLE_ERRORS, *REFUSED_ERRORS) as exc:
        raise connect_failure(exc) or exc from exc
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def open_pool(url: str, *, size: int = 10) -> AsyncIterator[Pool]:
    """A pool for the lifetime of the block, closed within a bounded time."""
    try:
        pool: Pool = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=1,
            max_size=size,
            init=_init_connection,
            command_timeout=60,
            server_settings={"application_name": APPLICATION_NAME},
        )
    except (*UNAVAILABLE_ERRORS, *REFUSED_ERRORS) as exc:
        raise connect_failure(exc) or exc from exc
    try:
        yield pool
    finally:
        with anyio.move_on_after(5, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()


class Acquire:
    """`pool.acquire()` that reports an unreachable database as DatabaseUnavailable.

    Only acquiring is translated; errors inside the block propagate unchanged.
    """

    def __init__(self, pool: Pool) -> None:
        self._cm = pool.acquire()

    async def __aenter__(self) -> Connection:
        try:
            return await self._cm.__aenter__()
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"the database is unavailable: {exc}") from exc

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)
