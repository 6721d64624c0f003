"""Whether a database already has the newest migration, answered without importing Alembic.

Importing Alembic and SQLAlchemy costs about a second, on every start of every process.
Migrations are linear and each file is named after its revision (`0005_queues.py`), so the
head is the highest file prefix; one query reads the database's version. Only a database
that is behind (or empty) pays for Alembic.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

import backend
from backend.connectors.database import connect

VERSIONS = Path(backend.__file__).resolve().parent.parent / "alembic" / "versions"


def head_revision(versions: Path = VERSIONS) -> str | None:
    """The newest revision among the migration files, or None when none are found."""
    revisions = [path.name.split("_", 1)[0] for path in versions.glob("[0-9]*_*.py")]
    return max(revisions, default=None)


async def current_revision(url: str) -> str | None:
    """The database's migration revision; None for a database pgcast never migrated."""
    conn = await connect(url)
    try:
        revision: str | None = await conn.fetchval("SELECT version_num FROM pgcast.alembic_version")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return None
    finally:
        await conn.close()
    return revision


async def is_current(url: str) -> bool:
    head = head_revision()
    return head is not None and await current_revision(url) == head
