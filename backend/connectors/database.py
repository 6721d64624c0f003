"""The connection pool every service shares, the one place driver errors become typed.

Services speak SQL only through the functions in `backend.connectors.store`, on connections
taken from `Pool.acquire`. The hot paths (group commit, the hub's read, queue claims) are
single statements where an ORM would only add overhead. SQLAlchemy models in
`backend.entities` remain the schema's source of truth for Alembic.

"The database is unavailable" (`DatabaseUnavailable`) means exactly this: a connection could
not be made or taken in time, or the server dropped one mid-statement. Any other error,
from the driver or not, stays what it is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from backend.core.errors import ConfigError, DatabaseUnavailable, PgcastError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    DriverPool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Connection = asyncpg.Connection
    DriverPool = asyncpg.Pool

# The server ended or refused the session: whatever was running on it did not finish.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# While connecting (or taking a pooled connection) the socket's own errors and timeouts, and
# a closed pool, mean the same; later they may come from anywhere and are not translated.
CANNOT_CONNECT: tuple[type[BaseException], ...] = (
    *CONNECTION_LOST,
    asyncpg.exceptions.InterfaceError,
    OSError,
    TimeoutError,
)
# Errors that mean "DATABASE_URL is wrong" (the server answered so, or the driver cannot use
# one of its options, such as a bad sslmode): retrying cannot help.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
)
# Raised by the driver itself, for misuse or, on a connection the server has just closed,
# for the loss (which of the two is told by the connection being closed).
_CLIENT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
ACQUIRE_TIMEOUT_SECONDS = 10.0
# Connections only the live path (hub, sequencer, group commit) may take.
LIVE_RESERVE = 2

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


def migration_engine(url: str) -> AsyncEngine:
    """An engine for Alembic whose connections asyncpg opens from the whole URL, so every
    option asyncpg reads there (`sslmode`, `sslrootcert`, ...) works as for the server's
    pool. From a URL, SQLAlchemy would pass the query's options as keyword arguments,
    which asyncpg does not take (`?sslmode=require` failed with a TypeError)."""
    dsn = asyncpg_dsn(url)

    async def connect() -> Connection:
        connection: Connection = await asyncpg.connect(dsn)
        return connection

    return create_async_engine("postgresql+asyncpg://", poolclass=NullPool, async_creator=connect)


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
        if isinstance(current, CANNOT_CONNECT):
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
    """One standalone connection (the LISTEN connection, the schema-version check, scratch
    databases, tests)."""
    try:
        conn: Connection = await asyncpg.connect(
            asyncpg_dsn(url),
            timeout=connect_timeout,
            server_settings={"application_name": application_name},
        )
    except (*CANNOT_CONNECT, *REFUSED_ERRORS) as exc:
        raise connect_failure(exc) or exc from exc
    await _init_connection(conn)
    return conn


Warm: TypeAlias = Callable[[Connection], Awaitable[None]]


@asynccontextmanager
async def open_pool(
    url: str,
    *,
    size: int = 10,
    acquire_timeout: float = ACQUIRE_TIMEOUT_SECONDS,
    live_reserve: int = LIVE_RESERVE,
    warm: Warm | None = None,
) -> AsyncIterator[Pool]:
    """A pool for the lifetime of the block, closed within a bounded time.

    `warm` runs once on every connection the pool opens, before its first use (the hot
    statements, `store.warm`); `Pool.prefill` opens them ahead of the first requests.
    """
    stateless: set[int] = set()
    sessions: set[int] = set()

    async def init(conn: Connection) -> None:
        await _init_connection(conn)
        pid = conn.get_server_pid()
        sessions.add(pid)
        conn.add_termination_listener(lambda _conn: sessions.discard(pid))
        if warm is not None:
            await warm(conn)

    try:
        driver: DriverPool = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=1,
            max_size=size,
            init=init,
            reset=_reset_unless(stateless),
            command_timeout=60,
            server_settings={"application_name": APPLICATION_NAME},
        )
    except (*CANNOT_CONNECT, *REFUSED_ERRORS) as exc:
        raise connect_failure(exc) or exc from exc
    try:
        yield Pool(
            driver,
            size,
            acquire_timeout=acquire_timeout,
            live_reserve=live_reserve,
            stateless=stateless,
            sessions=sessions,
        )
    finally:
        with anyio.move_on_after(5, shield=True) as scope:
            await driver.close()
        if scope.cancelled_caught:
            driver.terminate()


class Pool:
    """asyncpg's pool with bounded acquires and a reserve for the live path.

    The pool's connections are split in two shares, each guarded by a semaphore: the
    general share (request handlers, catch-up reads, queues, retention) and `live_reserve`
    connections for the hub, the sequencer and group commit. The live path takes a general
    connection when one is free and otherwise waits only for the reserve, so any number of
    subscribers catching up at once cannot hold back publishing or live delivery. As the
    shares add up to the pool's size, nobody ever waits inside asyncpg's own queue.

    asyncpg resets a connection on release with one more round trip (rollback, close
    cursors, unlisten, advisory unlocks, `RESET ALL`). A block that only runs statements
    which leave no session state behind (the publish path's INSERT and sequencing, the
    hub's read) says `stateless=True`; when it ends without error its connection goes back
    without that round trip. Any error in the block, or an open transaction, still resets.
    """

    def __init__(
        self,
        driver: DriverPool,
        size: int,
        *,
        acquire_timeout: float,
        live_reserve: int,
        stateless: set[int],
        sessions: set[int],
    ) -> None:
        self._driver = driver
        self._stateless = stateless
        self._sessions = sessions
        reserve = max(0, min(live_reserve, size - 1))
        self._general = anyio.Semaphore(size - reserve)
        self._reserve = anyio.Semaphore(reserve, max_value=reserve) if reserve else None
        self.acquire_timeout = acquire_timeout

    def can_spare(self) -> bool:
        """Whether a task of the live path may keep the connection it holds between uses
        a few milliseconds apart: another is free for the general share, and none of the
        live reserve is taken (so the kept one is not the reserve's)."""
        reserve = self._reserve
        return self._general.value > 0 and (reserve is None or reserve.value == reserve.max_value)

    def owns(self, server_pid: int) -> bool:
        """Whether `server_pid` is the database session of one of this pool's connections
        (a notification's sender, say)."""
        return server_pid in self._sessions

    @asynccontextmanager
    async def acquire(
        self, *, live: bool = False, stateless: bool = False
    ) -> AsyncIterator[Connection]:
        """A connection for the block, within `acquire_timeout` or DatabaseUnavailable.

        A connection the server drops during the block is reported as DatabaseUnavailable
        too; every other error in the block propagates unchanged. `stateless`: the block
        leaves no session state, so its connection needs no reset (see the class).
        """
        async with AsyncExitStack() as stack:
            try:
                with anyio.fail_after(self.acquire_timeout):
                    stack.push_async_callback(_release, await self._share(live))
                    pooled = await self._driver.acquire()
                    stack.push_async_callback(self._give_back, pooled)
                    conn: Connection = pooled
            except CANNOT_CONNECT as exc:
                raise DatabaseUnavailable(_unavailable(exc)) from exc
            try:
                yield conn
                if stateless and not conn.is_in_transaction():
                    self._stateless.add(conn.get_server_pid())
            except CONNECTION_LOST as exc:
                raise DatabaseUnavailable(_unavailable(exc)) from exc
            except _CLIENT_ERRORS as exc:
                if _closed(conn):
                    raise DatabaseUnavailable(_unavailable(exc)) from exc
                raise

    async def prefill(self) -> None:
        """Open now, all at once, the general share's connections that nobody is using,
        rather than one by one inside the requests of the first burst (a new connection
        costs a few milliseconds to open and warm). Best effort, for the background of
        start-up: it takes only free slots of the general share, so it never waits for a
        connection in use and leaves the live reserve alone; a request that comes
        meanwhile waits only while the new connections open (at most the acquire
        timeout). Each goes back without a reset round trip, as it has run nothing but
        the pool's `init` and warm-up, which leave no session state."""
        slots = 0
        try:
            while True:
                self._general.acquire_nowait()
                slots += 1
        except anyio.WouldBlock:
            pass
        held: list[PoolConnectionProxy[asyncpg.Record]] = []

        async def open_one() -> None:
            held.append(await self._driver.acquire())

        try:
            with anyio.fail_after(self.acquire_timeout):
                async with anyio.create_task_group() as tg:
                    for _ in range(slots):
                        tg.start_soon(open_one)
        except Exception as exc:  # noqa: BLE001 - on demand is the fallback; outages are reported elsewhere
            logger.debug("could not open the pool's connections at start: %r", exc)
        finally:
            with anyio.move_on_after(1, shield=True):  # no round trips: at once
                while held:
                    conn = held.pop()
                    if not _closed(conn):
                        self._stateless.add(conn.get_server_pid())
                    try:
                        await self._give_back(conn)
                    except Exception as exc:  # noqa: BLE001 - the driver has discarded it
                        logger.debug("a connection opened at start failed: %r", exc)
            for conn in held:  # not given back in time (a stalled loop): closed, so the
                conn.terminate()  # driver has the slot back before the share does
            for _ in range(slots):
                self._general.release()

    async def ping(self) -> None:
        """One round trip on a general connection (the health check)."""
        async with self.acquire() as conn:
            await conn.fetchval("SELECT 1")

    @asynccontextmanager
    async def transaction(self, *, live: bool = False) -> AsyncIterator[Connection]:
        """A connection inside one transaction, committed when the block ends without error."""
        async with self.acquire(live=live) as conn, conn.transaction():
            yield conn

    async def _give_back(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        """Return `conn` to the driver, which resets it with one query. If that reset fails
        on a broken connection (the server dropped it, or the driver found it still busy
        with a statement the block abandoned, as when PostgreSQL restarts), the driver
        closes it; the block's outcome is already decided, so that is not an error of the
        block, and must not replace the block's own."""
        pid = None if _closed(conn) else conn.get_server_pid()
        try:
            await self._driver.release(conn)
        except (*CANNOT_CONNECT, *_CLIENT_ERRORS):
            if not _closed(conn):
                raise
        finally:
            self._stateless.discard(pid)  # a mark lives for this one release

    async def _share(self, live: bool) -> anyio.Semaphore:
        if live and self._reserve is not None:
            try:
                self._general.acquire_nowait()
            except anyio.WouldBlock:
                await self._reserve.acquire()
                return self._reserve
            return self._general
        await self._general.acquire()
        return self._general


def _reset_unless(stateless: set[int]) -> Callable[[Connection], Awaitable[None]]:
    """The pool's reset: asyncpg's reset query, except for a connection (by its server
    process id) that `Pool.acquire(stateless=True)` marked as left clean, just once."""

    async def reset(conn: Connection) -> None:
        pid = conn.get_server_pid()
        if pid in stateless:
            stateless.discard(pid)
            return
        query = conn.get_reset_query()
        if query:
            await conn.execute(query)

    return reset


def _closed(conn: Connection) -> bool:
    """Whether the connection is gone; asyncpg detaches a pooled one as soon as it closes."""
    try:
        return conn.is_closed()
    except asyncpg.exceptions.InterfaceError:
        return True


async def _release(share: anyio.Semaphore) -> None:
    share.release()


def _unavailable(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the database is unavailable: no connection within the acquire timeout"
    return f"the database is unavailable: {exc}"
