from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import anyio
import pytest
from alembic.script import ScriptDirectory

from backend.connectors import schema_version
from backend.connectors.database import connect
from backend.connectors.migrations import alembic_config
from backend.connectors.scratch import create_database, drop_database
from backend.testing import postgres


@pytest.fixture
def admin_url() -> str:
    """The shared server's admin URL; it starts the server if need be, which must happen
    outside a test's event loop."""
    return postgres.shared_server_url()


def test_head_is_alembics_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused/db"))
    assert schema_version.head_revision() == script.get_current_head()


def test_head_of_a_folder_without_migrations_is_none(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("no migrations here")
    assert schema_version.head_revision(tmp_path) is None


@pytest.mark.integrated
@pytest.mark.anyio
async def test_a_migrated_database_is_current_and_an_empty_one_is_not(
    database_url: str, admin_url: str
) -> None:
    assert await schema_version.is_current(database_url)
    server = admin_url
    name = f"pgcast_empty_{secrets.token_hex(4)}"
    empty = await create_database(server, name)
    try:
        assert await schema_version.current_revision(empty) is None
        assert not await schema_version.is_current(empty)
    finally:
        await drop_database(server, name)


@pytest.mark.integrated
@pytest.mark.anyio
async def test_migrations_wait_for_each_other(admin_url: str) -> None:
    """Replicas that start together migrate one at a time (an advisory lock in alembic/env.py).

    Holding that lock here, a `pgcast migrate` process must queue for it, then finish once
    it is released.
    """
    server = admin_url
    name = f"pgcast_race_{secrets.token_hex(4)}"
    empty = await create_database(server, name)
    holder = await connect(empty)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext('pgcast.migrations'))")
        replica = await anyio.open_process(
            [sys.executable, "-m", "backend", "migrate"], env={**os.environ, "DATABASE_URL": empty}
        )
        async with replica:
            with anyio.fail_after(30):
                while not await holder.fetchval(WAITING_FOR_THE_LOCK):
                    assert replica.returncode is None, "migrate finished without waiting"
                    await anyio.sleep(0.1)
            await holder.execute("SELECT pg_advisory_unlock(hashtext('pgcast.migrations'))")
            with anyio.fail_after(30):
                assert await replica.wait() == 0
        assert await schema_version.is_current(empty)
    finally:
        await holder.close()
        await drop_database(server, name)


WAITING_FOR_THE_LOCK = """
    SELECT count(*) > 0 FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted AND database = (
        SELECT oid FROM pg_database WHERE datname = current_database())
"""
