"""Alembic environment: async engine, pgcast's own schema only, forward-only migrations."""

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import Connection

from alembic import context
from backend.connectors.database import migration_engine
from backend.entities.models import SCHEMA, metadata

config = context.config


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Compare only pgcast's schema: the application's own tables are not ours."""
    if type_ == "schema":
        return name == SCHEMA
    return True


def run_with(connection: Connection) -> None:
    # Replicas that start together migrate one at a time: the lock lasts until this
    # transaction commits, and the next one then finds the schema already current.
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('pgcast.migrations'))"))
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async() -> None:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: run migrations through `pgcast migrate`")
    engine = migration_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline SQL generation is not supported; migrate a live database")
asyncio.run(run_async())
