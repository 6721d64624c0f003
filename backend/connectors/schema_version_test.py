from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from backend.connectors import schema_version
from backend.connectors.migrations import alembic_config
from backend.connectors.scratch import create_database, drop_database
from backend.testing import postgres


def test_head_is_alembics_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused/db"))
    assert schema_version.head_revision() == script.get_current_head()


def test_head_of_a_folder_without_migrations_is_none(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("no migrations here")
    assert schema_version.head_revision(tmp_path) is None


@pytest.mark.integrated
@pytest.mark.anyio
async def test_a_migrated_database_is_current_and_an_empty_one_is_not(database_url: str) -> None:
    assert await schema_version.is_current(database_url)
    server = postgres.shared_server_url()
    name = f"pgcast_empty_{secrets.token_hex(4)}"
    empty = await create_database(server, name)
    try:
        assert await schema_version.current_revision(empty) is None
        assert not await schema_version.is_current(empty)
    finally:
        await drop_database(server, name)
