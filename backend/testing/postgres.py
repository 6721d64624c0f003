"""One embedded PostgreSQL per test run, shared by the xdist workers.

The controlling pytest process starts the server and migrates a template database before
any worker exists; workers find it through an environment variable and clone the template
into databases of their own (CREATE DATABASE ... TEMPLATE is a file copy, milliseconds).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import anyio

from backend.connectors.embedded import EmbeddedPostgres
from backend.connectors.migrations import upgrade
from backend.connectors.scratch import create_database, drop_database, with_database

SERVER_ENV = "PGCAST_TEST_SERVER_URL"
TEMPLATE = "pgcast_template"


def start_shared_server() -> tuple[EmbeddedPostgres, str]:
    """Start a throw-away server with a migrated template; returns it and its admin URL."""
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="pgcast-test-")) / "pg", durable=False)
    admin_url = server.start()
    template_url = anyio.run(create_database, admin_url, TEMPLATE)
    upgrade(template_url)
    return server, admin_url


def shared_server_url() -> str:
    url = os.environ.get(SERVER_ENV)
    if not url:
        raise RuntimeError(f"{SERVER_ENV} is not set: the test session did not start Postgres")
    return url


async def clone_template(prefix: str = "t") -> str:
    """A new migrated database; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    return await create_database(shared_server_url(), name, template=TEMPLATE)


async def drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    await drop_database(with_database(url, "postgres"), name)
